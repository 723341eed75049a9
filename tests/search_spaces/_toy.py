"""A tiny elastic space + supernet used by the compression / training / accuracy-predictor tests.

Not registered in the package: it only exercises the SearchSpace / Supernet interface (elastic width and
depth per stage, a resolution dimension, units covering every weight) with a network that trains in
seconds on 2 CPU cores.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fitplan.search_spaces.base import Dimension, SearchSpace, UnitCost
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from fitplan.search_spaces.supernet import Supernet

STAGES = 2
MAX_DEPTH = 2
MAX_W = 16


class ToySpace(SearchSpace):
    """stem conv -> 2 stages x up to 2 conv blocks (width {8, 16}, depth {1, 2}) -> pool -> linear."""

    name = "toy"

    def __init__(self, in_chans: int = 1, num_classes: int = 10, resolutions: tuple[int, ...] = (12, 16)):
        super().__init__(in_chans=in_chans, num_classes=num_classes, resolutions=tuple(resolutions))
        self.in_chans, self.num_classes, self.resolutions = in_chans, num_classes, tuple(resolutions)

    def arch_dimensions(self) -> list[Dimension]:
        return [Dimension("w", (8, 16), STAGES, "arch"), Dimension("d", (1, 2), STAGES, "arch"),
                Dimension("r", self.resolutions, None, "resolution")]

    def units(self) -> list[str]:
        return ["stem"] + [f"s{s}.b{b}" for s in range(STAGES) for b in range(MAX_DEPTH)] + ["head"]

    def input_shape(self, config):
        return (self.in_chans, config["r"], config["r"])

    def unit_costs(self, config):
        r = config["r"]
        out = []
        c_in, hw = self.in_chans, r * r
        out.append(UnitCost("stem", macs=hw * c_in * 8 * 9, params=c_in * 8 * 9 + 16, act_elems=hw * 8))
        c_in = 8
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                if b >= config["d"][s]:
                    out.append(UnitCost(f"s{s}.b{b}", active=False))
                    continue
                if b == 0:
                    hw = ((int(hw ** 0.5) + 1) // 2) ** 2
                w = config["w"][s]
                out.append(UnitCost(f"s{s}.b{b}", macs=hw * c_in * w * 9, params=c_in * w * 9 + 2 * w,
                                    act_elems=hw * w))
                c_in = w
        out.append(UnitCost("head", macs=c_in * self.num_classes, params=c_in * self.num_classes + self.num_classes,
                            act_elems=self.num_classes))
        return out

    def build_supernet(self) -> "ToySupernet":
        return ToySupernet(self)


class ToySupernet(Supernet):
    def __init__(self, space: ToySpace):
        super().__init__(space)
        self.stem = DynamicConv2d(space.in_chans, 8, 3)
        self.stem_bn = DynamicBatchNorm2d(8)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                self.convs.append(DynamicConv2d(MAX_W, MAX_W, 3, stride=2 if b == 0 else 1))
                self.bns.append(DynamicBatchNorm2d(MAX_W))
        self.dropout = nn.Dropout(0.1)
        self.head = DynamicLinear(MAX_W, space.num_classes)
        self.set_largest()

    def _set_active(self, config) -> None:
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                self.convs[s * MAX_DEPTH + b].active_out = config["w"][s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.active_config
        x = torch.relu(self.stem_bn(self.stem(x)))
        for s in range(STAGES):
            for b in range(cfg["d"][s]):
                i = s * MAX_DEPTH + b
                x = torch.relu(self.bns[i](self.convs[i](x)))
        return self.head(self.dropout(x.mean(dim=(2, 3))))

    def _extract(self, config) -> nn.Module:
        self._set_active(config)
        m = nn.Module()
        m.stem = nn.Sequential(self.stem.to_static(self.space.in_chans), self.stem_bn.to_static(8), nn.ReLU())
        c_in = 8
        units = [["stem"]]
        blocks = []
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                if b >= config["d"][s]:
                    units.append([])
                    continue
                i = s * MAX_DEPTH + b
                w = config["w"][s]
                blk = nn.Sequential(self.convs[i].to_static(c_in), self.bns[i].to_static(w), nn.ReLU())
                name = f"s{s}b{b}"
                m.add_module(name, blk)
                blocks.append(name)
                units.append([name])
                c_in = w
        m.head = self.head.to_static(c_in)
        units.append(["head"])
        self._set_active(self.active_config or config)
        return _ToyStatic(m, blocks, units)


class _ToyStatic(nn.Module):
    def __init__(self, m: nn.Module, blocks: list[str], units: list[list[str]]):
        super().__init__()
        for name, child in m.named_children():
            self.add_module(name, child)
        self.blocks = blocks
        self.fitplan_units = units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = getattr(self, b)(x)
        return self.head(x.mean(dim=(2, 3)))
