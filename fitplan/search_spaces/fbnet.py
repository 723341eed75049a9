"""The FBNet layer-wise search space of HW-NAS-Bench and HELP, with a single-path one-shot supernet.

The macro-architecture is FBNet-v1 as HW-NAS-Bench (Li et al., ICLR 2021) defines it in
``hw_nas_bench_api/fbnet_models/model_infer.py`` (the networks behind its FBNet latency tables, which HELP
re-uses):

* stem: 3x3 conv (16 channels) + BN + ReLU, stride 1 for CIFAR input, 2 for ImageNet input;
* 22 searchable layers in 7 stages of ``(1, 4, 4, 4, 4, 4, 1)`` layers with ``(16, 24, 32, 64, 112, 184,
  352)`` output channels and stage strides ``(1, 1, 2, 2, 1, 2, 1)`` (CIFAR) / ``(1, 2, 2, 2, 1, 2, 1)``
  (ImageNet); the first layer of a stage carries the stride and the channel change;
* head: 1x1 conv to 1504 (CIFAR) / 1984 (ImageNet) channels + BN + ReLU, global average pool, linear.

Each layer picks one of 9 ops (:data:`~fitplan.hw_profiles.latency_data.FBNET_OPS`, index order as in
``archs.json``): ``k{3,5}_e{1,3,6}`` inverted-residual blocks (1x1 conv to ``C_in * e`` channels, BN,
ReLU, depthwise ``k x k`` conv with the layer's stride, BN, ReLU, 1x1 conv to ``C_out``, BN, residual add
when shape is kept), ``_g2`` variants whose two 1x1 convs use 2 groups with a channel shuffle after the
first one, and ``skip``: the identity where the shape is kept, otherwise (stride 2 or ``C_in != C_out``) a
1x1 conv + BN + ReLU, exactly as HW-NAS-Bench does. Note that the expansion is relative to the *input*
channels, again as in HW-NAS-Bench.

A config is ``{"op_idx_list": [22 ints 0..8]}``; the ``archs.json`` dicts, which also carry the derived
``arch_str`` (op names), validate unchanged, and the normalised config always carries a recomputed
``arch_str``. Only ``op_idx_list`` is a searched dimension.

The supernet is single-path one-shot (Guo et al., SPOS): every layer owns its 9 candidate blocks with
separate weights and ``set_active`` selects one path; ``extract`` copies only the chosen blocks into a
plain ``torch.nn`` network.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from fitplan.errors import ConfigError
from fitplan.hw_profiles.latency_data import FBNET_OPS
from fitplan.search_spaces.base import Config, Dimension, SearchSpace, UnitCost, register_space, unaligned_dw
from fitplan.search_spaces.ops import make_divisible
from fitplan.search_spaces.supernet import Supernet

#: Layers per stage (FBNet-v1, 22 in all).
FBNET_STAGE_LAYERS: tuple[int, ...] = (1, 4, 4, 4, 4, 4, 1)
#: Output channels per stage at width multiplier 1.
FBNET_STAGE_CHANNELS: tuple[int, ...] = (16, 24, 32, 64, 112, 184, 352)
#: Stem output channels at width multiplier 1.
FBNET_STEM_CHANNELS = 16
#: Per-variant settings of HW-NAS-Bench: stem stride, stage strides, head channels, default classes/input.
FBNET_VARIANTS: dict[str, dict[str, Any]] = {
    "cifar100": {"stem_stride": 1, "strides": (1, 1, 2, 2, 1, 2, 1), "head": 1504, "num_classes": 100,
                 "input_size": 32},
    "imagenet": {"stem_stride": 2, "strides": (1, 2, 2, 2, 1, 2, 1), "head": 1984, "num_classes": 1000,
                 "input_size": 224},
}
#: op name -> (kernel size, expansion, groups); ``skip`` has no entry.
FBNET_OP_SPECS: dict[str, tuple[int, int, int]] = {
    "k3_e1": (3, 1, 1), "k3_e1_g2": (3, 1, 2), "k3_e3": (3, 3, 1), "k3_e6": (3, 6, 1),
    "k5_e1": (5, 1, 1), "k5_e1_g2": (5, 1, 2), "k5_e3": (5, 3, 1), "k5_e6": (5, 6, 1),
}
NUM_LAYERS = sum(FBNET_STAGE_LAYERS)
SKIP_IDX = FBNET_OPS.index("skip")
#: Op index with the most MACs and parameters everywhere (``largest()``).
LARGEST_OP_IDX = FBNET_OPS.index("k5_e6")


def _down(size: int, stride: int) -> int:
    """Spatial size after a conv with padding ``k // 2`` (every conv here): ``ceil(size / stride)``."""
    return -(-size // stride)


# --------------------------------------------------------------------------------------------- blocks
class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: ``[N, g*c, H, W] -> [N, c*g, H, W]`` interleaving the groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class FBNetBlock(nn.Module):
    """Inverted-residual block of HW-NAS-Bench's FBNet space (``ConvBlock`` there).

    1x1 conv (``groups``) -> BN -> ReLU -> [channel shuffle if grouped] -> depthwise ``k x k`` conv
    (``stride``) -> BN -> ReLU -> 1x1 conv (``groups``) -> BN, plus the input when shapes match.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, groups: int, stride: int):
        super().__init__()
        mid = c_in * expansion
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.conv1 = nn.Conv2d(c_in, mid, 1, 1, 0, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, 1, 0, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.act(self.bn1(self.conv1(x))))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.residual else out


class FBNetSkipConv(nn.Module):
    """``skip`` where the shape changes: 1x1 conv (stride) + BN + ReLU, as in HW-NAS-Bench."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def make_fbnet_op(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The block of op ``op`` (a name of :data:`FBNET_OPS`) for one layer's shape."""
    if op == "skip":
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return FBNetSkipConv(c_in, c_out, stride)
    k, e, g = FBNET_OP_SPECS[op]
    return FBNetBlock(c_in, c_out, k, e, g, stride)


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """conv (no bias, padding ``k // 2``) + BN + ReLU (HW-NAS-Bench's ``ConvNorm``)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def init_fbnet_weights(module: nn.Module) -> None:
    """HW-NAS-Bench's initialisation: Kaiming-normal (fan-out) convs, unit BN, N(0, 0.001) linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- space
@register_space("fbnet")
class FBNetSpace(SearchSpace):
    """FBNet layer-wise space of HW-NAS-Bench / HELP: 22 layers x 9 ops (CIFAR-100 input by default).

    Spec (constructor keywords, all JSON-able):
        variant: ``"cifar100"`` (HW-NAS-Bench's CIFAR setting: stem stride 1, head 1504) or ``"imagenet"``
            (stem stride 2, stage-2 stride 2, head 1984).
        num_classes: classifier outputs (default 100 / 1000 by variant).
        in_chans: input channels (3; 1 for MNIST-like data).
        input_size: input height = width (default 32 / 224 by variant).
        width_mult: multiplies every channel count (rounded to multiples of 8, keeping group convs
            valid), so that a small variant trains on CPU; 1.0 is the benchmark network.
    """

    def __init__(self, variant: str = "cifar100", num_classes: int | None = None, in_chans: int = 3,
                 input_size: int | None = None, width_mult: float = 1.0):
        if variant not in FBNET_VARIANTS:
            raise ConfigError("variant", f"unknown FBNet variant {variant!r}", list(FBNET_VARIANTS))
        v = FBNET_VARIANTS[variant]
        num_classes = v["num_classes"] if num_classes is None else num_classes
        input_size = v["input_size"] if input_size is None else input_size
        for name, val in (("num_classes", num_classes), ("in_chans", in_chans), ("input_size", input_size)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ConfigError(name, f"expected a positive integer, got {val!r}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult <= 4:
            raise ConfigError("width_mult", f"expected a number in (0, 4], got {width_mult!r}")
        super().__init__(variant=variant, num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                         width_mult=float(width_mult))
        self.variant, self.num_classes, self.in_chans = variant, num_classes, in_chans
        self.input_size, self.width_mult = input_size, float(width_mult)

        def ch(c: int) -> int:
            return c if self.width_mult == 1.0 else make_divisible(c * self.width_mult, 8)

        self.stem_channels = ch(FBNET_STEM_CHANNELS)
        self.stage_channels = tuple(ch(c) for c in FBNET_STAGE_CHANNELS)
        self.head_channels = ch(v["head"])
        self.stem_stride = v["stem_stride"]
        # per-layer (c_in, c_out, stride, input size, output size)
        shapes: list[tuple[int, int, int, int, int]] = []
        c_prev, hw = self.stem_channels, _down(input_size, self.stem_stride)
        self.stem_out_size = hw
        for n, c, s in zip(FBNET_STAGE_LAYERS, self.stage_channels, v["strides"]):
            for i in range(n):
                stride = s if i == 0 else 1
                out_hw = _down(hw, stride)
                shapes.append((c_prev, c, stride, hw, out_hw))
                c_prev, hw = c, out_hw
        self.layer_shapes = tuple(shapes)
        self.final_size = hw

    # ----------------------------------------------------------------- definition
    def arch_dimensions(self) -> list[Dimension]:
        return [Dimension("op_idx_list", tuple(range(len(FBNET_OPS))), NUM_LAYERS, "arch",
                          "op per layer: " + ", ".join(f"{i}={n}" for i, n in enumerate(FBNET_OPS)))]

    def units(self) -> list[str]:
        return ["stem"] + [f"layers.{i}" for i in range(NUM_LAYERS)] + ["head", "classifier"]

    def input_shape(self, config: Config | None = None) -> tuple[int, ...]:
        return (self.in_chans, self.input_size, self.input_size)

    # ----------------------------------------------------------------- validation
    def validate(self, config: Mapping[str, Any]) -> Config:
        """Normalise a config; accepts the ``archs.json`` dicts (``op_idx_list`` + ``arch_str``).

        ``arch_str`` is derived data: when given it must name the same ops as ``op_idx_list`` (when only
        ``arch_str`` is given, ``op_idx_list`` is derived from it). The result always carries a recomputed
        ``arch_str`` right after ``op_idx_list``.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("config", f"expected a dict, got {type(config).__name__}")
        allowed = ["op_idx_list", "arch_str"] + [d.name for d in self.compression_dimensions()]
        unknown = [k for k in config if k not in allowed]
        if unknown:
            raise ConfigError(unknown[0], f"unknown key for space {self.name!r}", allowed)
        cfg = dict(config)
        arch_str = cfg.pop("arch_str", None)
        from_str = None if arch_str is None else arch_str_to_op_idx(arch_str)
        if from_str is not None and "op_idx_list" not in cfg:
            cfg["op_idx_list"] = from_str
        out = super().validate(cfg)
        ops = out["op_idx_list"]
        if from_str is not None and from_str != ops:
            i = next(j for j, (a, b) in enumerate(zip(from_str, ops)) if a != b)
            raise ConfigError(f"arch_str.{i}", f"{arch_str[i]!r} does not match op_idx_list.{i} = {ops[i]} "
                              f"({FBNET_OPS[ops[i]]!r}); arch_str must name the ops of op_idx_list",
                              [FBNET_OPS[ops[i]]])
        result: Config = {"op_idx_list": ops, "arch_str": op_idx_to_arch_str(ops)}
        result.update((k, v) for k, v in out.items() if k != "op_idx_list")
        return result

    def smallest(self) -> Config:
        """``skip`` everywhere (identity, or the cheapest 1x1 conv where the shape changes)."""
        return self.validate({"op_idx_list": [SKIP_IDX] * NUM_LAYERS})

    def largest(self) -> Config:
        """``k5_e6`` everywhere: the most MACs and parameters in every layer."""
        return self.validate({"op_idx_list": [LARGEST_OP_IDX] * NUM_LAYERS})

    # ----------------------------------------------------------------- costs
    def layer_cost(self, i: int, op: str) -> UnitCost:
        """Analytic cost of op ``op`` in layer ``i`` (identity skip: inactive, zero cost); ``dw_macs`` is the
        depthwise ``k x k`` conv's share (the ``_g2`` 2-group 1x1 convs count as dense), ``strided_dw_macs`` the
        same in stride-2 layers."""
        c_in, c_out, stride, hw_in, hw_out = self.layer_shapes[i]
        name = f"layers.{i}"
        if op == "skip":
            if stride == 1 and c_in == c_out:
                return UnitCost(name, 0, 0, 0, active=False)
            return UnitCost(name, macs=hw_out * hw_out * c_in * c_out, params=c_in * c_out + 2 * c_out,
                            act_elems=c_out * hw_out * hw_out)
        k, e, g = FBNET_OP_SPECS[op]
        mid = c_in * e
        macs = (hw_in * hw_in * mid * c_in // g + hw_out * hw_out * mid * k * k
                + hw_out * hw_out * c_out * mid // g)
        params = c_in * mid // g + 2 * mid + mid * k * k + 2 * mid + mid * c_out // g + 2 * c_out
        act = mid * hw_in * hw_in + mid * hw_out * hw_out + c_out * hw_out * hw_out
        dw = hw_out * hw_out * mid * k * k
        return UnitCost(name, macs=macs, params=params, act_elems=act, dw_macs=dw,
                        strided_dw_macs=dw if stride > 1 else 0, unaligned_dw_macs=unaligned_dw(dw, mid))

    def unit_costs(self, config: Config) -> list[UnitCost]:
        ops = config["op_idx_list"]
        s, hw0 = self.stem_channels, self.stem_out_size
        costs = [UnitCost("stem", macs=hw0 * hw0 * s * self.in_chans * 9, params=self.in_chans * s * 9 + 2 * s,
                          act_elems=s * hw0 * hw0)]
        costs += [self.layer_cost(i, FBNET_OPS[op]) for i, op in enumerate(ops)]
        c_last, h, hw = self.stage_channels[-1], self.head_channels, self.final_size
        costs.append(UnitCost("head", macs=hw * hw * h * c_last, params=c_last * h + 2 * h,
                              act_elems=h * hw * hw + h))
        nc = self.num_classes
        costs.append(UnitCost("classifier", macs=h * nc, params=h * nc + nc, act_elems=nc))
        return costs

    def build_supernet(self) -> "FBNetSupernet":
        return FBNetSupernet(self)


def op_idx_to_arch_str(op_idx_list: Sequence[int]) -> list[str]:
    """``[7, 8, ...] -> ["k5_e6", "skip", ...]`` (the ``arch_str`` of ``archs.json``)."""
    return [FBNET_OPS[int(i)] for i in op_idx_list]


def arch_str_to_op_idx(arch_str: Any) -> list[int]:
    """Inverse of :func:`op_idx_to_arch_str`; raises :class:`ConfigError` naming ``arch_str.<i>``."""
    if not isinstance(arch_str, Sequence) or isinstance(arch_str, str):
        raise ConfigError("arch_str", f"expected a list of {NUM_LAYERS} op names, got {type(arch_str).__name__}")
    if len(arch_str) != NUM_LAYERS:
        raise ConfigError("arch_str", f"expected {NUM_LAYERS} values, got {len(arch_str)}")
    out = []
    for i, name in enumerate(arch_str):
        if not isinstance(name, str) or name not in FBNET_OPS:
            raise ConfigError(f"arch_str.{i}", f"invalid op {name!r}", FBNET_OPS)
        out.append(FBNET_OPS.index(name))
    return out


# --------------------------------------------------------------------------------------------- supernet
class FBNetChoiceLayer(nn.Module):
    """One searchable layer: the 9 candidate blocks (separate weights); ``active`` picks the path."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.candidates = nn.ModuleList(make_fbnet_op(op, c_in, c_out, stride) for op in FBNET_OPS)
        self.active = LARGEST_OP_IDX

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.active](x)


class FBNetNet(nn.Module):
    """A standalone FBNet network (what :meth:`FBNetSupernet.extract` returns).

    Submodules ``stem``, ``layers.0`` .. ``layers.21``, ``head``, ``classifier`` are the compression units
    of :class:`FBNetSpace`.
    """

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.stem = stem
        self.layers = nn.Sequential(*layers)
        self.head = head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.layers(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


class FBNetSupernet(Supernet):
    """Single-path one-shot supernet of :class:`FBNetSpace` (every layer holds its 9 candidates)."""

    def __init__(self, space: FBNetSpace):
        super().__init__(space)
        self.stem = conv_bn_relu(space.in_chans, space.stem_channels, 3, space.stem_stride)
        self.layers = nn.ModuleList(FBNetChoiceLayer(c_in, c_out, s) for c_in, c_out, s, _, _ in space.layer_shapes)
        self.head = conv_bn_relu(space.stage_channels[-1], space.head_channels, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)
        init_fbnet_weights(self)
        self.set_largest()

    def _set_active(self, config: Config) -> None:
        for layer, op in zip(self.layers, config["op_idx_list"]):
            layer.active = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        x = self.head(x)
        return self.classifier(torch.flatten(self.pool(x), 1))

    def _extract(self, config: Config) -> nn.Module:
        ops = config["op_idx_list"]
        blocks = [copy.deepcopy(layer.candidates[op]) for layer, op in zip(self.layers, ops)]
        net = FBNetNet(copy.deepcopy(self.stem), blocks, copy.deepcopy(self.head), copy.deepcopy(self.classifier))
        units: list[list[str]] = [["stem"]]
        for i, b in enumerate(blocks):
            units.append([] if isinstance(b, nn.Identity) else [f"layers.{i}"])
        units += [["head"], ["classifier"]]
        net.fitplan_units = units
        return net


__all__ = ["FBNetSpace", "FBNetSupernet", "FBNetNet", "FBNetBlock", "FBNetSkipConv", "FBNetChoiceLayer",
           "ChannelShuffle", "make_fbnet_op", "op_idx_to_arch_str", "arch_str_to_op_idx", "FBNET_STAGE_LAYERS",
           "FBNET_STAGE_CHANNELS", "FBNET_VARIANTS", "FBNET_OP_SPECS"]
