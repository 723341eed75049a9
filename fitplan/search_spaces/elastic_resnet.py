"""Elastic ResNet space, OFA-ResNet style (Cai et al., "Once-for-All", ICLR 2020, ``ofa_resnets.py``).

The supernet is a ResNet (BasicBlock for resnet18/34, Bottleneck for resnet50, torchvision/timm v1.5
layout: stride on the 3x3 conv, 1x1-conv + BN downsample shortcut) whose convs, BNs and classifier are
:mod:`~fitplan.search_spaces.ops` dynamic layers. Elastic dimensions, as in OFA-ResNet:

``d`` (one per stage)
    depth: stage ``i`` runs its first ``layers[i] - max_depth_drop + d[i]`` blocks (``d = max`` is full
    depth, as OFA's ``depth_list`` ``{0, 1, 2}`` over a base depth).
``e`` (one per block, ``sum(layers)`` entries; entries of skipped blocks are ignored)
    expand ratio: the block's middle width is ``make_divisible(out_width * e)`` where ``out_width`` is the
    block's active output width (bottleneck: ``e = 0.25`` is the standard ResNet-50 block).
``w`` (stem + one per stage)
    width multiplier of the stem output and of each stage's output channels. A stage whose first block
    has no downsample conv in the full network (resnet18/34 stage 1: 64 -> 64, stride 1) shares the
    previous width, because its identity shortcut needs equal widths; ``validate`` enforces it.
``r``
    input resolution (informs ``input_shape`` and analytic costs; callers resize, the net does not).

Elastic channels are the first channels of each weight (OFA's channel slicing; no re-ordering here).
``from_timm`` converters for ``resnet18``, ``resnet34`` and ``resnet50`` copy every weight and BN statistic,
so the largest subnet reproduces the timm model; the supernet's parameter names equal timm's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fitplan.errors import ConfigError
from fitplan.search_spaces.base import Config, Dimension, SearchSpace, UnitCost, register_space
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, make_divisible
from fitplan.search_spaces.supernet import Supernet
from fitplan.search_spaces.timm_import import register_timm_converter

BLOCKS = ("basic", "bottleneck")
#: Output channels of a block relative to its stage's base ("planes") width.
BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}
DEFAULT_LAYERS = {"basic": (2, 2, 2, 2), "bottleneck": (3, 4, 6, 3)}
#: Expand ratio choices (middle width / output width); the largest gives the standard ResNet block.
DEFAULT_EXPAND_RATIOS = {"basic": (0.5, 0.75, 1.0), "bottleneck": (0.15, 0.2, 0.25)}
DEFAULT_WIDTH_MULTS = (0.65, 0.8, 1.0)
STEMS = ("imagenet", "small")
DEFAULT_RESOLUTIONS = {"imagenet": (128, 160, 192, 224), "small": (32,)}


def _down(size: int, stride: int) -> int:
    """Spatial size after a conv / max-pool with padding ``k // 2``: ``ceil(size / stride)``."""
    return -(-size // stride)


@dataclass(frozen=True)
class ResNetArch:
    """Concrete widths of one config (what the dynamic layers are set to).

    ``stem``: stem output channels; ``depths``: active blocks per stage; ``outs``: output channels per
    stage; ``mids``: middle channels of every block slot (``sum(layers)`` entries, also for skipped ones).
    """

    stem: int
    depths: tuple[int, ...]
    outs: tuple[int, ...]
    mids: tuple[int, ...]


# --------------------------------------------------------------------------------------------- space
@register_space("elastic_resnet")
class ElasticResNetSpace(SearchSpace):
    """OFA-style elastic ResNet: depth per stage, expand ratio per block, width per stage, resolution.

    Spec (constructor keywords, all JSON-able):
        block: ``"basic"`` (resnet18/34) or ``"bottleneck"`` (resnet50).
        layers: blocks per stage of the full network (default ``(2, 2, 2, 2)`` / ``(3, 4, 6, 3)``).
        base_width: stem and first-stage "planes" width (64 for the standard ResNets; small for CPU runs).
        num_classes, in_chans: classifier outputs and input channels.
        stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool, as timm) or ``"small"``
            (3x3 stride-1 conv, no pool; for 28-32 px inputs).
        resolutions: choices of ``r`` (default 128..224 for the ImageNet stem, 32 for the small one).
        expand_ratios, width_mults: choices of ``e`` and ``w`` (their maxima define the supernet).
        max_depth_drop: most blocks a stage may drop (default ``min(2, min(layers) - 1)``).
        channel_divisor: every width is rounded to a multiple of it (8, as OFA).
    """

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] | None = None, base_width: int = 64,
                 num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet",
                 resolutions: Sequence[int] | None = None, expand_ratios: Sequence[float] | None = None,
                 width_mults: Sequence[float] | None = None, max_depth_drop: int | None = None,
                 channel_divisor: int = 8):
        if block not in BLOCKS:
            raise ConfigError("block", f"unknown block type {block!r}", BLOCKS)
        if stem not in STEMS:
            raise ConfigError("stem", f"unknown stem {stem!r}", STEMS)
        layers = tuple(DEFAULT_LAYERS[block] if layers is None else layers)
        if not layers or any(not _pos_int(n) for n in layers):
            raise ConfigError("layers", f"expected a non-empty list of positive block counts, got {list(layers)}")
        for name, val in (("base_width", base_width), ("num_classes", num_classes), ("in_chans", in_chans),
                          ("channel_divisor", channel_divisor)):
            if not _pos_int(val):
                raise ConfigError(name, f"expected a positive integer, got {val!r}")
        resolutions = tuple(DEFAULT_RESOLUTIONS[stem] if resolutions is None else resolutions)
        if not resolutions or any(not _pos_int(r) for r in resolutions):
            raise ConfigError("resolutions", f"expected a non-empty list of positive integers, got {resolutions}")
        expand_ratios = tuple(float(x) for x in _numbers("expand_ratios", expand_ratios, DEFAULT_EXPAND_RATIOS[block]))
        width_mults = tuple(float(x) for x in _numbers("width_mults", width_mults, DEFAULT_WIDTH_MULTS))
        limit = min(layers) - 1
        if max_depth_drop is None:
            max_depth_drop = min(2, limit)
        if isinstance(max_depth_drop, bool) or not isinstance(max_depth_drop, int) or not 0 <= max_depth_drop <= limit:
            raise ConfigError("max_depth_drop", f"must keep at least one block per stage, got {max_depth_drop!r}",
                              list(range(limit + 1)))
        super().__init__(block=block, layers=list(layers), base_width=base_width, num_classes=num_classes,
                         in_chans=in_chans, stem=stem, resolutions=sorted(set(resolutions)),
                         expand_ratios=sorted(set(expand_ratios)), width_mults=sorted(set(width_mults)),
                         max_depth_drop=max_depth_drop, channel_divisor=channel_divisor)
        self.block, self.layers, self.base_width = block, layers, base_width
        self.num_classes, self.in_chans, self.stem = num_classes, in_chans, stem
        self.resolutions = tuple(sorted(set(resolutions)))
        self.expand_ratios = tuple(sorted(set(expand_ratios)))
        self.width_mults = tuple(sorted(set(width_mults)))
        self.max_depth_drop, self.channel_divisor = max_depth_drop, channel_divisor

        exp = BLOCK_EXPANSION[block]
        self.n_stages = len(layers)
        self.strides = tuple(1 if s == 0 else 2 for s in range(self.n_stages))
        self.full_outs = tuple(base_width * 2 ** s * exp for s in range(self.n_stages))
        # stage s has a downsample shortcut on its first block iff the full network needs one there
        full_in = [base_width] + list(self.full_outs[:-1])
        self.has_downsample = tuple(self.strides[s] != 1 or full_in[s] != self.full_outs[s]
                                    for s in range(self.n_stages))
        # largest widths over all choices: the supernet's weight shapes
        self.max_stem = max(self._ch(base_width * w) for w in self.width_mults)
        self.max_outs = tuple(max(self._ch(o * w) for w in self.width_mults) for o in self.full_outs)
        self.max_mids = tuple(max(self._ch(self._ch(o * w) * e) for w in self.width_mults for e in self.expand_ratios)
                              for o in self.full_outs)
        self.block_slots = tuple((s, b) for s in range(self.n_stages) for b in range(layers[s]))

    def _ch(self, v: float) -> int:
        return make_divisible(v, self.channel_divisor)

    # ----------------------------------------------------------------- definition
    def arch_dimensions(self) -> list[Dimension]:
        return [
            Dimension("d", tuple(range(self.max_depth_drop + 1)), self.n_stages, "arch",
                      f"blocks per stage = layers - {self.max_depth_drop} + d (layers = {list(self.layers)})"),
            Dimension("e", self.expand_ratios, len(self.block_slots), "arch",
                      "middle width / output width per block"),
            Dimension("w", self.width_mults, self.n_stages + 1, "arch", "width multiplier of the stem, then per stage"),
            Dimension("r", self.resolutions, None, "resolution", "input resolution"),
        ]

    def units(self) -> list[str]:
        return ["stem"] + [f"layer{s + 1}.{b}" for s, b in self.block_slots] + ["fc"]

    def input_shape(self, config: Config) -> tuple[int, ...]:
        r = config["r"] if config and "r" in config else max(self.resolutions)
        return (self.in_chans, r, r)

    def tied_stages(self) -> list[int]:
        """Stages whose first block has an identity shortcut, so ``w[s + 1]`` must equal ``w[s]``."""
        return [s for s in range(self.n_stages) if not self.has_downsample[s]]

    def _check_arch(self, config: Config) -> None:
        w = config["w"]
        for s in self.tied_stages():
            if w[s + 1] != w[s]:
                raise ConfigError(f"w.{s + 1}", f"stage {s + 1} starts with an identity shortcut, so its width "
                                  f"must equal the previous width w.{s}", [w[s]])

    def _repair(self, config: Config) -> Config:
        if "w" in config:
            w = list(config["w"])
            for s in self.tied_stages():
                w[s + 1] = w[s]
            config = {**config, "w": w}
        return config

    def arch(self, config: Config) -> ResNetArch:
        """Concrete widths and depths of a (validated) config."""
        w, e = config["w"], config["e"]
        outs = tuple(self._ch(self.full_outs[s] * w[s + 1]) for s in range(self.n_stages))
        depths = tuple(self.layers[s] - self.max_depth_drop + config["d"][s] for s in range(self.n_stages))
        mids = tuple(self._ch(outs[s] * e[i]) for i, (s, _) in enumerate(self.block_slots))
        return ResNetArch(self._ch(self.base_width * w[0]), depths, outs, mids)

    # ----------------------------------------------------------------- costs
    def unit_costs(self, config: Config) -> list[UnitCost]:
        a = self.arch(config)
        r, cin, stem = config["r"], self.in_chans, a.stem
        if self.stem == "imagenet":
            h1 = _down(r, 2)
            hw = _down(h1, 2)
            costs = [UnitCost("stem", macs=h1 * h1 * stem * cin * 49, params=cin * stem * 49 + 2 * stem,
                              act_elems=stem * (h1 * h1 + hw * hw))]
        else:
            hw = r
            costs = [UnitCost("stem", macs=hw * hw * stem * cin * 9, params=cin * stem * 9 + 2 * stem,
                              act_elems=stem * hw * hw)]
        c = stem
        for i, (s, b) in enumerate(self.block_slots):
            name = f"layer{s + 1}.{b}"
            if b >= a.depths[s]:
                costs.append(UnitCost(name, active=False))
                continue
            stride = self.strides[s] if b == 0 else 1
            ds = b == 0 and self.has_downsample[s]
            mid, out = a.mids[i], a.outs[s]
            ho = _down(hw, stride)
            if self.block == "basic":
                macs = ho * ho * (mid * c * 9 + out * mid * 9)
                params = 9 * c * mid + 2 * mid + 9 * mid * out + 2 * out
                act = ho * ho * (mid + out)
            else:
                macs = hw * hw * mid * c + ho * ho * (mid * mid * 9 + out * mid)
                params = c * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out + 2 * out
                act = hw * hw * mid + ho * ho * (mid + out)
            if ds:
                macs += ho * ho * out * c
                params += c * out + 2 * out
                act += ho * ho * out
            costs.append(UnitCost(name, macs=macs, params=params, act_elems=act))
            c, hw = out, ho
        nc = self.num_classes
        costs.append(UnitCost("fc", macs=c * nc, params=c * nc + nc, act_elems=nc))
        return costs

    def build_supernet(self) -> "ElasticResNetSupernet":
        return ElasticResNetSupernet(self)


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _numbers(field: str, values: Sequence[float] | None, default: Sequence[float]) -> Sequence[float]:
    values = default if values is None else values
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values)):
        raise ConfigError(field, f"expected a non-empty list of positive numbers, got {values!r}")
    return values


# --------------------------------------------------------------------------------------------- modules
class _ResidualForward(nn.Module):
    """The residual computation shared by the elastic block and its extracted static copy (same attribute
    names: ``conv1..3``, ``bn1..3``, ``downsample``, ``kind``), so both compute exactly the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.kind == "bottleneck":
            out = self.bn3(self.conv3(F.relu(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class DynamicResNetBlock(_ResidualForward):
    """A basic or bottleneck block with elastic middle and output widths (timm parameter names)."""

    def __init__(self, kind: str, max_in: int, max_mid: int, max_out: int, stride: int, downsample: bool):
        super().__init__()
        self.kind, self.stride = kind, stride
        if kind == "basic":
            self.conv1 = DynamicConv2d(max_in, max_mid, 3, stride)
            self.bn1 = DynamicBatchNorm2d(max_mid)
            self.conv2 = DynamicConv2d(max_mid, max_out, 3)
            self.bn2 = DynamicBatchNorm2d(max_out)
        else:
            self.conv1 = DynamicConv2d(max_in, max_mid, 1)
            self.bn1 = DynamicBatchNorm2d(max_mid)
            self.conv2 = DynamicConv2d(max_mid, max_mid, 3, stride)
            self.bn2 = DynamicBatchNorm2d(max_mid)
            self.conv3 = DynamicConv2d(max_mid, max_out, 1)
            self.bn3 = DynamicBatchNorm2d(max_out)
        self.downsample = (nn.Sequential(DynamicConv2d(max_in, max_out, 1, stride), DynamicBatchNorm2d(max_out))
                           if downsample else None)

    def set_active(self, mid: int, out: int) -> None:
        self.conv1.active_out = mid
        if self.kind == "basic":
            self.conv2.active_out = out
        else:
            self.conv2.active_out = mid
            self.conv3.active_out = out
        if self.downsample is not None:
            self.downsample[0].active_out = out


    def to_static(self, in_ch: int) -> "ResNetBlock":
        mid = self.conv1.active_out
        convs, bns, c = [], [], in_ch
        for conv, bn in self._pairs():
            convs.append(conv.to_static(c))
            c = conv.out_channels(c)
            bns.append(bn.to_static(c))
        ds = None
        if self.downsample is not None:
            conv = self.downsample[0].to_static(in_ch)
            ds = nn.Sequential(conv, self.downsample[1].to_static(conv.out_channels))
        assert convs[0].out_channels == mid
        return ResNetBlock(self.kind, convs, bns, ds)

    @torch.no_grad()
    def sort_middle_channels(self) -> None:
        """Re-order the middle channels by importance (OFA's ``re_organize_middle_weights``).

        A middle channel's importance is the L1 norm of the weights that read it in the next conv; the
        producing conv's output filters, its BN and the reading conv's input slices are permuted together,
        so the full block computes the same function while elastic (first-``k``) slices keep the most
        important channels. Bottlenecks sort both middle layers, last first.
        """
        pairs = self._pairs()
        for i in range(len(pairs) - 1, 0, -1):
            reader = pairs[i][0]
            producer, bn = pairs[i - 1]
            importance = reader.weight.abs().sum(dim=(0, 2, 3))
            order = torch.argsort(importance, descending=True)
            reader.weight.copy_(reader.weight[:, order])
            producer.weight.copy_(producer.weight[order])
            if producer.bias is not None:
                producer.bias.copy_(producer.bias[order])
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if t is not None:
                    t.copy_(t[order])

    def _pairs(self) -> list[tuple[DynamicConv2d, DynamicBatchNorm2d]]:
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        if self.kind == "bottleneck":
            pairs.append((self.conv3, self.bn3))
        return pairs


class ResNetBlock(_ResidualForward):
    """Static basic / bottleneck block (extracted); parameter names as timm's ``BasicBlock``/``Bottleneck``."""

    def __init__(self, kind: str, convs: Sequence[nn.Conv2d], bns: Sequence[nn.BatchNorm2d],
                 downsample: nn.Sequential | None):
        super().__init__()
        self.kind = kind
        for i, (conv, bn) in enumerate(zip(convs, bns), start=1):
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", bn)
        self.downsample = downsample



class ResNetNet(nn.Module):
    """A standalone ResNet subnet (what :meth:`ElasticResNetSupernet.extract` returns).

    Parameter names follow timm's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``), so the
    largest subnet's state dict loads into the timm model it came from.
    """

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, maxpool: nn.Module,
                 stages: Sequence[Sequence[nn.Module]], fc: nn.Linear):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = conv1, bn1, nn.ReLU(), maxpool
        self.num_stages = len(stages)
        for s, blocks in enumerate(stages):
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.global_pool(x), 1))


class ElasticResNetSupernet(Supernet):
    """Weight-sharing supernet of :class:`ElasticResNetSpace`; parameter names equal timm's ResNet."""

    def __init__(self, space: ElasticResNetSpace):
        super().__init__(space)
        sp = space
        k, stride = (7, 2) if sp.stem == "imagenet" else (3, 1)
        self.conv1 = DynamicConv2d(sp.in_chans, sp.max_stem, k, stride)
        self.bn1 = DynamicBatchNorm2d(sp.max_stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if sp.stem == "imagenet" else nn.Identity()
        c = sp.max_stem
        for s in range(sp.n_stages):
            blocks = []
            for b in range(sp.layers[s]):
                first = b == 0
                blocks.append(DynamicResNetBlock(sp.block, c, sp.max_mids[s], sp.max_outs[s],
                                                 sp.strides[s] if first else 1, first and sp.has_downsample[s]))
                c = sp.max_outs[s]
            setattr(self, f"layer{s + 1}", nn.ModuleList(blocks))
        self.fc = DynamicLinear(c, sp.num_classes)
        self.active_depths = tuple(sp.layers)
        self.set_largest()

    def stages(self) -> list[nn.ModuleList]:
        return [getattr(self, f"layer{s + 1}") for s in range(self.space.n_stages)]

    def sort_middle_channels(self) -> None:
        """Importance-sort every block's middle channels (function-preserving for the full widths; OFA
        does this before training elastic expand ratios). Useful after :func:`resnet_from_timm`, whose
        inherited channel order is arbitrary."""
        for blocks in self.stages():
            for blk in blocks:
                blk.sort_middle_channels()

    def _set_active(self, config: Config) -> None:
        a = self.space.arch(config)
        self.conv1.active_out = a.stem
        i = 0
        for s, blocks in enumerate(self.stages()):
            for blk in blocks:
                blk.set_active(a.mids[i], a.outs[s])
                i += 1
        self.active_depths = a.depths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for blocks, depth in zip(self.stages(), self.active_depths):
            for blk in blocks[:depth]:
                x = blk(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def _extract(self, config: Config) -> nn.Module:
        previous = self.active_config
        self._set_active(config)
        try:
            a = self.space.arch(config)
            conv1 = self.conv1.to_static(self.space.in_chans)
            bn1 = self.bn1.to_static(conv1.out_channels)
            c = conv1.out_channels
            stages, units = [], [["conv1", "bn1"]]
            for s, blocks in enumerate(self.stages()):
                static = []
                for b, blk in enumerate(blocks):
                    if b < a.depths[s]:
                        static.append(blk.to_static(c))
                        c = a.outs[s]
                        units.append([f"layer{s + 1}.{b}"])
                    else:
                        units.append([])
                stages.append(static)
            maxpool = nn.MaxPool2d(3, 2, 1) if self.space.stem == "imagenet" else nn.Identity()
            net = ResNetNet(conv1, bn1, maxpool, stages, self.fc.to_static(c))
            units.append(["fc"])
            net.fitplan_units = units
            return net
        finally:
            if previous is not None:
                self._set_active(previous)


# --------------------------------------------------------------------------------------------- timm
@register_timm_converter("resnet18", "resnet34", "resnet50")
def resnet_from_timm(model: nn.Module) -> ElasticResNetSupernet:
    """Elastic ResNet supernet whose largest subnet is the given timm ``resnet18/34/50`` (weights, BN
    statistics, downsample and classifier copied). Raises :class:`ConfigError` for variants it cannot
    represent (deep stems, SE, grouped or anti-aliased blocks, no classifier)."""
    from timm.models.resnet import BasicBlock, Bottleneck

    first = getattr(model, "layer1", [None])[0]
    if isinstance(first, Bottleneck):
        block = "bottleneck"
    elif isinstance(first, BasicBlock):
        block = "basic"
    else:
        raise ConfigError("model", f"not a timm ResNet with BasicBlock/Bottleneck blocks ({type(model).__name__})")
    conv1 = model.conv1
    if not isinstance(conv1, nn.Conv2d) or conv1.kernel_size != (7, 7) or conv1.stride != (2, 2):
        raise ConfigError("model", "only the plain 7x7 stride-2 ResNet stem is supported (no deep stem)")
    if not isinstance(model.maxpool, nn.MaxPool2d):
        raise ConfigError("model", "expected a 3x3 stride-2 max-pool after the stem")
    if not isinstance(model.fc, nn.Linear):
        raise ConfigError("model", "the timm model has no linear classifier (num_classes=0?)")
    bad_acts = [n for n, m in model.named_modules() if n.split(".")[-1].startswith("act")
                and not isinstance(m, nn.ReLU)]
    if bad_acts:
        raise ConfigError("model", f"only ReLU activations are supported ({bad_acts[0]})")
    n_stages = sum(1 for s in range(1, 9) if hasattr(model, f"layer{s}"))
    layers = [len(getattr(model, f"layer{s + 1}")) for s in range(n_stages)]
    space = ElasticResNetSpace(block=block, layers=layers, base_width=conv1.out_channels,
                               num_classes=model.fc.out_features, in_chans=conv1.in_channels, stem="imagenet")
    supernet = space.build_supernet()
    ours = supernet.state_dict()
    theirs = model.state_dict()
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        extra = sorted(set(theirs) - set(ours))[:3]
        missing = sorted(set(ours) - set(theirs))[:3]
        shapes = [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape][:3]
        raise ConfigError("model", f"timm model does not match an elastic ResNet (unexpected {extra}, missing "
                          f"{missing}, different shapes {shapes})")
    supernet.load_state_dict(theirs, strict=True)
    supernet.set_largest()
    return supernet.train(model.training)


__all__ = ["ElasticResNetSpace", "ElasticResNetSupernet", "DynamicResNetBlock", "ResNetBlock", "ResNetNet",
           "ResNetArch", "resnet_from_timm"]
