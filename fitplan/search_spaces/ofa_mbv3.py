"""``ofa_mbv3``: the Once-for-All MobileNetV3 space (Cai et al., ICLR 2020) and its weight-sharing supernet.

Network (OFA MobileNetV3-Large, widths scaled by ``width_mult`` and rounded with ``make_divisible(., 8)``)::

    first_conv    3x3 s2 conv (16) + BN + hswish
    first_block   3x3 depthwise + BN + relu, 1x1 (16) + BN, identity residual
    blocks        5 stages x up to 4 MBConv blocks; widths 24/40/80/112/160, first-block strides
                  2/2/2/1/2, activations relu/relu/hswish/hswish/hswish, SE in stages 2, 4, 5
    final_expand  1x1 conv (960) + BN + hswish
    (global average pool)
    feature_mix   1x1 conv (1280), no BN, + hswish
    classifier    dropout + linear

Config keys (exactly HELP's arch dicts, ``../shared/data/latency/ofa_mbv3/archs.json``):

``ks``  20 depthwise kernel sizes in {3, 5, 7} (one per block slot, 4 slots per stage)
``e``   20 expand ratios in {3, 4, 6}: middle width ``make_divisible(round(in_ch * e), 8)``
``d``   5 stage depths in {2, 3, 4}: stage ``s`` runs its first ``d[s]`` slots
``r``   input resolution (128..224 step 4)

Entries of ``ks``/``e`` beyond a stage's depth are present but ignored (HELP's data has values there).

A **timm-derived variant** (built by :func:`ofa_mbv3_from_timm` for ``mobilenetv3_large_100``) fixes the
largest subnet to the timm model: per-slot maximum kernels (``block_kernels``), per-slot maximum middle
widths (``block_mid_channels``), per-stage maximum depths (``stage_depths``), explicit ``widths`` and a
biased feature-mix conv (``head_bias``). Its configs use the same keys; then ``ks`` of an active block must
not exceed the block's kernel, ``d`` not the stage's depth, and ``e`` is *relative* to the block's maximum:
``mid = make_divisible(round(max_mid * e / max(expand_choices)), 8)`` (so ``e = 6`` is timm's block).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from fitplan.errors import ConfigError
from fitplan.search_spaces.base import Config, Dimension, SearchSpace, UnitCost, register_space, unaligned_dw
from fitplan.search_spaces.mbconv import (
    DynamicMBConv,
    ElasticDepthwiseConv2d,
    make_act,
    mbconv_costs,
    mbconv_dw_macs,
    se_channels,
)
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, make_divisible
from fitplan.search_spaces.supernet import Supernet
from fitplan.search_spaces.timm_import import register_timm_converter

#: OFA MobileNetV3-Large base widths: stem, first block, 5 stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "hswish", "hswish", "hswish")
STAGE_SE = (False, True, False, True, True)
N_STAGES = 5
DEFAULT_RESOLUTIONS = tuple(range(128, 225, 4))


def _int_list(name: str, value: Any, length: int, minimum: int = 0) -> list[int]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                       for v in value)):
        raise ConfigError(name, f"expected a list of {length} integers >= {minimum}, got {value!r}")
    return [int(v) for v in value]


def _choices(name: str, value: Any) -> list[int]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or not value
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(name, f"expected a non-empty list of positive integers, got {value!r}")
    return sorted({int(v) for v in value})


@register_space("ofa_mbv3")
class OFAMobileNetV3Space(SearchSpace):
    """The OFA MobileNetV3 search space (kernel / expand / depth per block, input resolution).

    Args:
        width_mult: channel multiplier of every layer (OFA uses 1.0 and 1.2); 0.35 trains on CPU.
        num_classes: classifier outputs.
        in_chans: input image channels (1 for MNIST).
        resolutions: allowed input resolutions ``r`` (default 128..224 step 4, HELP's values).
        kernel_choices, expand_choices, depth_choices: per-element choices of ``ks``, ``e``, ``d``
            (defaults 3/5/7, 3/4/6, 2/3/4 as in OFA). The number of block slots is
            ``5 * max(depth_choices)``.
        dropout: classifier dropout rate (OFA: 0.1).
        widths: explicit ``[stem, first_block, s1..s5, final_expand, feature_mix]`` widths (overrides
            ``width_mult``).
        stage_depths: per-stage maximum depth (default ``max(depth_choices)`` for every stage).
        block_kernels: per-slot maximum kernel (default ``max(kernel_choices)``).
        block_mid_channels: per-slot maximum middle width; when given, ``e`` is relative to it (see module
            doc). Slots beyond a stage's depth hold 0.
        head_bias: whether the feature-mix 1x1 conv has a bias (timm's ``conv_head`` does, OFA's does not).
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
                 resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
                 kernel_choices: Sequence[int] = (3, 5, 7), expand_choices: Sequence[int] = (3, 4, 6),
                 depth_choices: Sequence[int] = (2, 3, 4), dropout: float = 0.1,
                 widths: Sequence[int] | None = None, stage_depths: Sequence[int] | None = None,
                 block_kernels: Sequence[int] | None = None, block_mid_channels: Sequence[int] | None = None,
                 head_bias: bool = False):
        if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or not width_mult > 0:
            raise ConfigError("width_mult", f"expected a positive number, got {width_mult!r}")
        for name, v in (("num_classes", num_classes), ("in_chans", in_chans)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(name, f"expected a positive integer, got {v!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError("dropout", f"expected a rate in [0, 1), got {dropout!r}")
        if not isinstance(head_bias, bool):
            raise ConfigError("head_bias", f"expected a bool, got {head_bias!r}", [True, False])
        res = _choices("resolutions", resolutions)
        kc = _choices("kernel_choices", kernel_choices)
        if any(k % 2 == 0 for k in kc):
            raise ConfigError("kernel_choices", f"kernel sizes must be odd, got {kc}", [1, 3, 5, 7, 9])
        ec = _choices("expand_choices", expand_choices)
        dc = _choices("depth_choices", depth_choices)
        spec: dict[str, Any] = dict(width_mult=float(width_mult), num_classes=int(num_classes),
                                    in_chans=int(in_chans), resolutions=res, kernel_choices=kc,
                                    expand_choices=ec, depth_choices=dc, dropout=float(dropout))
        self.max_depth = max(dc)
        self.n_slots = N_STAGES * self.max_depth
        if widths is not None:
            widths = _int_list("widths", widths, len(BASE_WIDTHS), 1)
            spec["widths"] = widths
            self.widths = widths
        else:
            self.widths = [make_divisible(w * width_mult, 8) for w in BASE_WIDTHS]
        if stage_depths is not None:
            stage_depths = _int_list("stage_depths", stage_depths, N_STAGES, 1)
            for s, sd in enumerate(stage_depths):
                if sd > self.max_depth or sd < min(dc):
                    raise ConfigError(f"stage_depths.{s}", f"{sd} outside the depth choices", dc)
            spec["stage_depths"] = stage_depths
        self.stage_depths = list(stage_depths) if stage_depths is not None else [self.max_depth] * N_STAGES
        if block_kernels is not None:
            block_kernels = _int_list("block_kernels", block_kernels, self.n_slots, 0)
            for i, k in enumerate(block_kernels):
                if self._slot_exists(i) and k not in kc:
                    raise ConfigError(f"block_kernels.{i}", f"{k} is not a kernel choice", kc)
            spec["block_kernels"] = block_kernels
        self.block_kernels = ([k if self._slot_exists(i) else 0 for i, k in enumerate(block_kernels)]
                              if block_kernels is not None
                              else [max(kc) if self._slot_exists(i) else 0 for i in range(self.n_slots)])
        # per-slot input / output channels and strides (fixed: widths are not elastic)
        self.slot_in: list[int] = []
        self.slot_out: list[int] = []
        self.slot_stride: list[int] = []
        prev = self.widths[1]
        for s in range(N_STAGES):
            out = self.widths[2 + s]
            for j in range(self.max_depth):
                self.slot_in.append(prev if j == 0 else out)
                self.slot_out.append(out)
                self.slot_stride.append(STAGE_STRIDES[s] if j == 0 else 1)
            prev = out
        self.relative_expand = block_mid_channels is not None
        if block_mid_channels is not None:
            mids = _int_list("block_mid_channels", block_mid_channels, self.n_slots, 0)
            for i, m in enumerate(mids):
                if self._slot_exists(i) and m < 1:
                    raise ConfigError(f"block_mid_channels.{i}", "an existing block needs a width >= 1")
            spec["block_mid_channels"] = mids
            self.max_mids = [m if self._slot_exists(i) else 0 for i, m in enumerate(mids)]
        else:
            self.max_mids = [make_divisible(round(self.slot_in[i] * max(ec)), 8) if self._slot_exists(i) else 0
                             for i in range(self.n_slots)]
        if head_bias:
            spec["head_bias"] = True
        self.head_bias = head_bias
        super().__init__(**spec)

    # ----------------------------------------------------------------- spec helpers
    @property
    def spec_values(self) -> dict[str, Any]:
        """The normalised constructor arguments (read-only view; :meth:`spec` returns a copy)."""
        return self._spec

    @property
    def kernel_choices(self) -> list[int]:
        return self._spec["kernel_choices"]

    @property
    def expand_choices(self) -> list[int]:
        return self._spec["expand_choices"]

    @property
    def depth_choices(self) -> list[int]:
        return self._spec["depth_choices"]

    @property
    def is_uniform(self) -> bool:
        """True for the plain OFA space: every slot allows every kernel and every stage every depth."""
        return (all(sd == self.max_depth for sd in self.stage_depths)
                and all(k == max(self.kernel_choices) for k in self.block_kernels))

    def _slot_exists(self, slot: int) -> bool:
        return slot % self.max_depth < self.stage_depths[slot // self.max_depth]

    def stage_slots(self, stage: int) -> list[int]:
        """Slot indices (into ``ks``/``e``/``blocks.i``) of ``stage`` (0-based, up to its maximum depth)."""
        start = stage * self.max_depth
        return list(range(start, start + self.stage_depths[stage]))

    def active_slots(self, config: Config) -> list[int]:
        """Slots the config runs, in execution order."""
        return [s * self.max_depth + j for s in range(N_STAGES) for j in range(config["d"][s])]

    def mid_channels(self, slot: int, e: int) -> int:
        """Middle (expanded) width of block ``slot`` for expand choice ``e``."""
        if self.relative_expand:
            mx = self.max_mids[slot]
            return min(mx, make_divisible(round(mx * e / max(self.expand_choices)), 8))
        return make_divisible(round(self.slot_in[slot] * e), 8)

    # ----------------------------------------------------------------- SearchSpace API
    def arch_dimensions(self) -> list[Dimension]:
        n = self.n_slots
        return [
            Dimension("ks", tuple(self.kernel_choices), n, "arch", "depthwise kernel size per block slot"),
            Dimension("e", tuple(self.expand_choices), n, "arch", "expand ratio per block slot"),
            Dimension("d", tuple(self.depth_choices), N_STAGES, "arch", "number of blocks per stage"),
            Dimension("r", tuple(self._spec["resolutions"]), None, "resolution", "input resolution"),
        ]

    def units(self) -> list[str]:
        return (["first_conv", "first_block"] + [f"blocks.{i}" for i in range(self.n_slots)]
                + ["final_expand", "feature_mix", "classifier"])

    def input_shape(self, config: Config) -> tuple[int, ...]:
        r = int(config["r"])
        return (self._spec["in_chans"], r, r)

    def _check_arch(self, config: Config) -> None:
        for s, d in enumerate(config["d"]):
            if d > self.stage_depths[s]:
                allowed = [c for c in self.depth_choices if c <= self.stage_depths[s]]
                raise ConfigError(f"d.{s}", f"stage {s} has at most {self.stage_depths[s]} blocks", allowed)
        for slot in self.active_slots(config):
            if config["ks"][slot] > self.block_kernels[slot]:
                allowed = [k for k in self.kernel_choices if k <= self.block_kernels[slot]]
                raise ConfigError(f"ks.{slot}", f"block {slot} allows kernels up to {self.block_kernels[slot]}",
                                  allowed)

    def _repair(self, config: Config) -> Config:
        """Clamp depths to the stage maximum and kernels of active slots to the block maximum."""
        cfg = dict(config)
        if "d" in cfg:
            cfg["d"] = [min(d, sd) for d, sd in zip(cfg["d"], self.stage_depths)]
        if "ks" in cfg and "d" in cfg:
            ks = list(cfg["ks"])
            for slot in self.active_slots(cfg):
                if ks[slot] > self.block_kernels[slot]:
                    ks[slot] = max(k for k in self.kernel_choices if k <= self.block_kernels[slot])
            cfg["ks"] = ks
        return cfg

    def sample(self, rng: np.random.Generator | int | None = None, *, compression: bool = True) -> Config:
        """Uniform random config; in a variant with per-block limits, depths and kernels are drawn
        uniformly among the values each stage / block allows (not clamped)."""
        rng = np.random.default_rng(rng)
        cfg = super().sample(rng, compression=compression)
        if self.is_uniform:
            return cfg
        cfg["d"] = [int(rng.choice([c for c in self.depth_choices if c <= sd])) for sd in self.stage_depths]
        cfg["ks"] = [int(rng.choice([k for k in self.kernel_choices if k <= mk])) if mk else int(k0)
                     for mk, k0 in zip(self.block_kernels, cfg["ks"])]
        return self.validate(cfg)

    def unit_costs(self, config: Config) -> list[UnitCost]:
        """Analytic MACs (their depthwise part ``dw_macs``, of which strided ``strided_dw_macs``), params
        (conv/linear weights and biases, BN affine) and output activation elements per unit for resolution
        ``config["r"]``; inactive block slots cost 0."""
        w = self.widths
        cin = self._spec["in_chans"]
        ncls = self._spec["num_classes"]
        hw = (int(config["r"]) - 1) // 2 + 1
        out: list[UnitCost] = [UnitCost("first_conv", hw * hw * cin * w[0] * 9, cin * w[0] * 9 + 2 * w[0],
                                        w[0] * hw * hw)]
        dw = mbconv_dw_macs(w[0], 3, 1, hw)
        macs, params, act, hw = mbconv_costs(w[0], w[1], w[0], 3, 1, hw, False, expand=False)
        out.append(UnitCost("first_block", macs, params, act, dw_macs=dw, unaligned_dw_macs=unaligned_dw(dw, w[0])))
        active = set(self.active_slots(config))
        for slot in range(self.n_slots):
            name = f"blocks.{slot}"
            if slot not in active:
                out.append(UnitCost(name, active=False))
                continue
            mid = self.mid_channels(slot, config["e"][slot])
            dw = mbconv_dw_macs(mid, config["ks"][slot], self.slot_stride[slot], hw)
            macs, params, act, hw = mbconv_costs(self.slot_in[slot], self.slot_out[slot], mid, config["ks"][slot],
                                                 self.slot_stride[slot], hw,
                                                 STAGE_SE[slot // self.max_depth])
            out.append(UnitCost(name, macs, params, act, dw_macs=dw,
                                strided_dw_macs=dw if self.slot_stride[slot] > 1 else 0,
                                unaligned_dw_macs=unaligned_dw(dw, mid)))
        fe, fm = w[7], w[8]
        out.append(UnitCost("final_expand", hw * hw * w[6] * fe, w[6] * fe + 2 * fe, fe * hw * hw))
        out.append(UnitCost("feature_mix", fe * fm, fe * fm + (fm if self.head_bias else 0), fm))
        out.append(UnitCost("classifier", fm * ncls, fm * ncls + ncls, ncls))
        return out

    def build_supernet(self) -> "OFAMobileNetV3Supernet":
        return OFAMobileNetV3Supernet(self)


# ------------------------------------------------------------------------------------------------- networks
def _conv_bn_act(conv: nn.Module, bn: nn.Module | None, act: str) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("conv", conv)]
    if bn is not None:
        layers.append(("bn", bn))
    layers.append(("act", make_act(act)))
    return nn.Sequential(OrderedDict(layers))


class OFAMobileNetV3Subnet(nn.Module):
    """A static (extracted) OFA MobileNetV3 subnet built from plain ``torch.nn`` layers.

    ``blocks`` is a ``ModuleDict`` keyed by the supernet slot index of each active block, so a block's
    dotted names (``blocks.7.depth_conv.conv``) name the same slot as the unit ``blocks.7``.
    """

    def __init__(self, first_conv: nn.Module, first_block: nn.Module, blocks: "OrderedDict[str, nn.Module]",
                 final_expand: nn.Module, feature_mix: nn.Module, classifier: nn.Module):
        super().__init__()
        self.first_conv = first_conv
        self.first_block = first_block
        self.blocks = nn.ModuleDict(blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.first_conv(x))
        for block in self.blocks.values():
            x = block(x)
        x = self.final_expand(x)
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))


class OFAMobileNetV3Supernet(Supernet):
    """Weight-sharing OFA MobileNetV3 supernet of an :class:`OFAMobileNetV3Space`.

    Holds the largest network; ``set_active`` selects kernels (with OFA's kernel transform), expanded
    widths (leading channels) and depths (leading blocks of each stage).
    """

    space: OFAMobileNetV3Space

    def __init__(self, space: OFAMobileNetV3Space):
        super().__init__(space)
        sp = space.spec_values
        w = space.widths
        self.first_conv = _conv_bn_act(DynamicConv2d(sp["in_chans"], w[0], 3, stride=2),
                                       DynamicBatchNorm2d(w[0]), "hswish")
        self.first_block = DynamicMBConv(w[0], w[1], w[0], 3, (3,), 1, "relu", False, expand=False)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for slot in range(space.n_slots):
            if not space.block_kernels[slot]:
                continue
            s = slot // space.max_depth
            blocks[str(slot)] = DynamicMBConv(space.slot_in[slot], space.slot_out[slot], space.max_mids[slot],
                                              space.block_kernels[slot], space.kernel_choices,
                                              space.slot_stride[slot], STAGE_ACTS[s], STAGE_SE[s])
        self.blocks = nn.ModuleDict(blocks)
        self.final_expand = _conv_bn_act(DynamicConv2d(w[6], w[7], 1), DynamicBatchNorm2d(w[7]), "hswish")
        self.feature_mix = _conv_bn_act(DynamicConv2d(w[7], w[8], 1, bias=space.head_bias), None, "hswish")
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout", nn.Dropout(sp["dropout"])),
            ("linear", DynamicLinear(w[8], sp["num_classes"])),
        ]))
        self.active_slots: list[int] = []
        self.set_largest()

    def transform_parameters(self) -> list[nn.Parameter]:
        """The kernel-transform matrices (trainable, supernet-only)."""
        return [p for m in self.modules() if isinstance(m, ElasticDepthwiseConv2d)
                for p in m.transform_parameters()]

    def _set_active(self, config: Config) -> None:
        sp = self.space
        slots = sp.active_slots(config)
        for slot in slots:
            self.blocks[str(slot)].set_active(config["ks"][slot], sp.mid_channels(slot, config["e"][slot]))
        self.active_slots = slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.first_conv(x))
        for slot in self.active_slots:
            x = self.blocks[str(slot)](x)
        x = self.final_expand(x)
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))

    def _extract(self, config: Config) -> nn.Module:
        previous = self.active_config
        self._set_active(config)
        try:
            sp = self.space
            w = sp.widths
            in_chans = sp.spec_values["in_chans"]
            first_conv = _conv_bn_act(self.first_conv.conv.to_static(in_chans), self.first_conv.bn.to_static(w[0]),
                                      "hswish")
            first_block = self.first_block.to_static()
            blocks = OrderedDict((str(s), self.blocks[str(s)].to_static()) for s in self.active_slots)
            final_expand = _conv_bn_act(self.final_expand.conv.to_static(w[6]), self.final_expand.bn.to_static(w[7]),
                                        "hswish")
            feature_mix = _conv_bn_act(self.feature_mix.conv.to_static(w[7]), None, "hswish")
            classifier = nn.Sequential(OrderedDict([
                ("dropout", nn.Dropout(self.classifier.dropout.p)),
                ("linear", self.classifier.linear.to_static(w[8])),
            ]))
            net = OFAMobileNetV3Subnet(first_conv, first_block, blocks, final_expand, feature_mix, classifier)
        finally:
            self._set_active(previous if previous is not None else config)
        net.fitplan_units = _unit_modules(net, sp)
        return net


def _unit_modules(net: OFAMobileNetV3Subnet, space: OFAMobileNetV3Space) -> list[list[str]]:
    """Dotted names of the parameter-holding leaf modules (convs, BNs, linear) of each unit."""

    def leaves(prefix: str) -> list[str]:
        mod = net.get_submodule(prefix)
        return [f"{prefix}.{n}" if n else prefix for n, m in mod.named_modules()
                if any(True for _ in m.parameters(recurse=False))]

    units: list[list[str]] = []
    for unit in space.units():
        if unit.startswith("blocks."):
            key = unit.split(".", 1)[1]
            units.append(leaves(f"blocks.{key}") if key in net.blocks else [])
        else:
            units.append(leaves(unit))
    return units


# ------------------------------------------------------------------------------------------------- timm import
def _bn_copy(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, where: str) -> None:
    if dst.num_features != src.num_features or abs(dst.eps - src.eps) > 1e-12:
        raise ConfigError(where, f"BatchNorm mismatch: {src.num_features} (eps {src.eps}) vs "
                                 f"{dst.num_features} (eps {dst.eps})")
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
        dst.running_mean.copy_(src.running_mean)
        dst.running_var.copy_(src.running_var)
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
    dst.momentum = src.momentum


def _param_copy(dst: torch.Tensor, src: torch.Tensor | None, where: str) -> None:
    if src is None or dst.shape != src.shape:
        raise ConfigError(where, f"shape mismatch: timm {None if src is None else tuple(src.shape)} vs "
                                 f"supernet {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def _act_name(mod: nn.Module) -> str:
    act = getattr(mod, "act", mod)
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.Hardswish):
        return "hswish"
    return type(act).__name__


def mbv3_space_from_timm(model: nn.Module, resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
                         kernel_choices: Sequence[int] | None = None,
                         expand_choices: Sequence[int] = (3, 4, 6)) -> OFAMobileNetV3Space:
    """The ``ofa_mbv3`` variant whose largest subnet has exactly the structure of a timm MobileNetV3-Large.

    Reads widths, per-stage depths, per-block kernels and middle widths from the model and checks what the
    space fixes (strides, activations, SE placement and width, head). Raises :class:`ConfigError` naming the
    timm submodule that does not fit.
    """
    blocks = model.blocks
    if len(blocks) != N_STAGES + 2:
        raise ConfigError("model.blocks", f"expected {N_STAGES + 2} block groups (MobileNetV3-Large), "
                                          f"got {len(blocks)}")
    first = blocks[0][0]
    if len(blocks[0]) != 1 or not hasattr(first, "conv_dw") or not isinstance(first.se, nn.Identity):
        raise ConfigError("model.blocks.0", "expected one depthwise-separable block without SE")
    if first.conv_dw.kernel_size[0] != 3 or first.conv_dw.stride[0] != 1 or _act_name(first.bn1) != "relu":
        raise ConfigError("model.blocks.0", "expected a 3x3 stride-1 ReLU depthwise block")
    depths = [len(blocks[1 + s]) for s in range(N_STAGES)]
    max_depth = max(max(depths), 4)  # keep HELP's 4 slots per stage (20 ks/e entries)
    kernels: list[int] = []
    mids: list[int] = []
    for s in range(N_STAGES):
        for j in range(max_depth):
            if j >= depths[s]:
                kernels.append(0)
                mids.append(0)
                continue
            b = blocks[1 + s][j]
            where = f"model.blocks.{1 + s}.{j}"
            if not all(hasattr(b, a) for a in ("conv_pw", "conv_dw", "conv_pwl")):
                raise ConfigError(where, "expected an inverted-residual block")
            if getattr(b, "conv_s2d", None) is not None or not isinstance(getattr(b, "aa", nn.Identity()),
                                                                           nn.Identity):
                raise ConfigError(where, "space-to-depth / anti-aliasing blocks are not supported")
            stride = b.conv_dw.stride[0]
            if stride != (STAGE_STRIDES[s] if j == 0 else 1):
                raise ConfigError(where, f"stride {stride} differs from the OFA layout", list(STAGE_STRIDES))
            if _act_name(b.bn1) != STAGE_ACTS[s] or _act_name(b.bn2) != STAGE_ACTS[s]:
                raise ConfigError(where, f"activation differs from the OFA layout ({STAGE_ACTS[s]})")
            has_se = not isinstance(b.se, nn.Identity)
            if has_se != STAGE_SE[s]:
                raise ConfigError(where, f"SE presence differs from the OFA layout ({STAGE_SE[s]})")
            mid = b.conv_dw.out_channels
            if has_se:
                if (not isinstance(getattr(b.se, "gate", None), nn.Hardsigmoid)
                        or b.se.conv_reduce.out_channels != se_channels(mid)):
                    raise ConfigError(f"{where}.se", f"expected a hard-sigmoid SE with {se_channels(mid)} "
                                                     f"reduced channels")
            kernels.append(b.conv_dw.kernel_size[0])
            mids.append(mid)
    head = blocks[N_STAGES + 1][0]
    if not hasattr(head, "conv") or _act_name(head.bn1) != "hswish":
        raise ConfigError(f"model.blocks.{N_STAGES + 1}", "expected a 1x1 conv + BN + hswish")
    if not isinstance(model.act2, nn.Hardswish) or not isinstance(getattr(model, "norm_head", nn.Identity()),
                                                                     nn.Identity):
        raise ConfigError("model.conv_head", "expected conv_head + hswish without norm")
    if getattr(model.global_pool, "pool_type", "avg") != "avg":
        raise ConfigError("model.global_pool", "expected average pooling", ["avg"])
    widths = [model.conv_stem.out_channels, first.conv_pw.out_channels]
    widths += [blocks[1 + s][0].conv_pwl.out_channels for s in range(N_STAGES)]
    widths += [head.conv.out_channels, model.conv_head.out_channels]
    kc = sorted(set(kernel_choices) if kernel_choices is not None
                else set(range(3, max(kernels) + 1, 2)))
    return OFAMobileNetV3Space(
        num_classes=model.classifier.out_features, in_chans=model.conv_stem.in_channels,
        resolutions=resolutions, kernel_choices=kc, expand_choices=expand_choices,
        depth_choices=list(range(min(2, min(depths)), max_depth + 1)), dropout=float(model.drop_rate),
        widths=widths, stage_depths=depths, block_kernels=kernels, block_mid_channels=mids,
        head_bias=model.conv_head.bias is not None)


@register_timm_converter("mobilenetv3_large_100", "mobilenetv3_large_075")
def ofa_mbv3_from_timm(model: nn.Module, **space_kwargs: Any) -> OFAMobileNetV3Supernet:
    """Supernet of the :func:`mbv3_space_from_timm` variant with every weight (and BN statistic) copied
    from the timm model, so that its largest subnet computes the timm model's function (eval mode)."""
    space = mbv3_space_from_timm(model, **space_kwargs)
    net = space.build_supernet()
    blocks = model.blocks
    _param_copy(net.first_conv.conv.weight, model.conv_stem.weight, "model.conv_stem")
    _bn_copy(net.first_conv.bn, model.bn1, "model.bn1")
    fb = blocks[0][0]
    _param_copy(net.first_block.depth_conv.conv.weight, fb.conv_dw.weight, "model.blocks.0.0.conv_dw")
    _bn_copy(net.first_block.depth_conv.bn, fb.bn1, "model.blocks.0.0.bn1")
    _param_copy(net.first_block.point_linear.conv.weight, fb.conv_pw.weight, "model.blocks.0.0.conv_pw")
    _bn_copy(net.first_block.point_linear.bn, fb.bn2, "model.blocks.0.0.bn2")
    if bool(getattr(fb, "has_skip", False)) != net.first_block.residual:
        raise ConfigError("model.blocks.0.0", "residual connection differs from the OFA layout")
    for s in range(N_STAGES):
        for j, b in enumerate(blocks[1 + s]):
            dst: DynamicMBConv = net.blocks[str(s * space.max_depth + j)]
            where = f"model.blocks.{1 + s}.{j}"
            if bool(getattr(b, "has_skip", False)) != dst.residual:
                raise ConfigError(where, "residual connection differs from the OFA layout")
            _param_copy(dst.inverted_bottleneck.conv.weight, b.conv_pw.weight, f"{where}.conv_pw")
            _bn_copy(dst.inverted_bottleneck.bn, b.bn1, f"{where}.bn1")
            _param_copy(dst.depth_conv.conv.weight, b.conv_dw.weight, f"{where}.conv_dw")
            _bn_copy(dst.depth_conv.bn, b.bn2, f"{where}.bn2")
            if dst.use_se:
                se = dst.depth_conv.se
                _param_copy(se.reduce.weight, b.se.conv_reduce.weight, f"{where}.se.conv_reduce")
                _param_copy(se.reduce.bias, b.se.conv_reduce.bias, f"{where}.se.conv_reduce.bias")
                _param_copy(se.expand.weight, b.se.conv_expand.weight, f"{where}.se.conv_expand")
                _param_copy(se.expand.bias, b.se.conv_expand.bias, f"{where}.se.conv_expand.bias")
            _param_copy(dst.point_linear.conv.weight, b.conv_pwl.weight, f"{where}.conv_pwl")
            _bn_copy(dst.point_linear.bn, b.bn3, f"{where}.bn3")
    head = blocks[N_STAGES + 1][0]
    _param_copy(net.final_expand.conv.weight, head.conv.weight, f"model.blocks.{N_STAGES + 1}.0.conv")
    _bn_copy(net.final_expand.bn, head.bn1, f"model.blocks.{N_STAGES + 1}.0.bn1")
    _param_copy(net.feature_mix.conv.weight, model.conv_head.weight, "model.conv_head")
    if space.head_bias:
        _param_copy(net.feature_mix.conv.bias, model.conv_head.bias, "model.conv_head.bias")
    _param_copy(net.classifier.linear.weight, model.classifier.weight, "model.classifier")
    _param_copy(net.classifier.linear.bias, model.classifier.bias, "model.classifier.bias")
    net.set_largest()
    return net.train(model.training)


__all__ = ["OFAMobileNetV3Space", "OFAMobileNetV3Supernet", "OFAMobileNetV3Subnet", "mbv3_space_from_timm",
           "ofa_mbv3_from_timm"]
