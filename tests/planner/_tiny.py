"""A tiny registered space for planner tests: trains and exports in well under a second.

stem conv (8) -> 2 stages x up to 2 conv blocks (width {4, 8}, depth {1, 2}, first block stride 2)
-> global pool -> linear. Input 1 x r x r, r in {8, 12}. Units: stem, 4 blocks, head.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import torch
import torch.nn as nn

from fitplan.search_spaces.base import SPACES, Dimension, SearchSpace, UnitCost, register_space
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from fitplan.search_spaces.supernet import Supernet

STAGES, MAX_DEPTH, MAX_W, STEM = 2, 2, 8, 8


class TinySpace(SearchSpace):
    """Tiny conv net for planner tests (width / depth per stage, resolution)."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, resolutions: tuple[int, ...] = (8, 12)):
        super().__init__(in_chans=in_chans, num_classes=num_classes, resolutions=list(resolutions))
        self.in_chans, self.num_classes, self.resolutions = in_chans, num_classes, tuple(resolutions)

    def arch_dimensions(self):
        return [Dimension("w", (4, 8), STAGES, "arch"), Dimension("d", (1, 2), STAGES, "arch"),
                Dimension("r", self.resolutions, None, "resolution")]

    def units(self):
        return ["stem"] + [f"s{s}.b{b}" for s in range(STAGES) for b in range(MAX_DEPTH)] + ["head"]

    def input_shape(self, config):
        return (self.in_chans, config["r"], config["r"])

    def unit_costs(self, config):
        r = config["r"]
        hw = r * r
        out = [UnitCost("stem", macs=hw * self.in_chans * STEM * 9,
                        params=self.in_chans * STEM * 9 + 2 * STEM, act_elems=hw * STEM)]
        c_in = STEM
        side = r
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                if b >= config["d"][s]:
                    out.append(UnitCost(f"s{s}.b{b}", active=False))
                    continue
                if b == 0:
                    side = (side + 1) // 2
                w = config["w"][s]
                out.append(UnitCost(f"s{s}.b{b}", macs=side * side * c_in * w * 9, params=c_in * w * 9 + 2 * w,
                                    act_elems=side * side * w))
                c_in = w
        out.append(UnitCost("head", macs=c_in * self.num_classes, params=c_in * self.num_classes + self.num_classes,
                            act_elems=self.num_classes))
        return out

    def build_supernet(self):
        return TinySupernet(self)


class TinySupernet(Supernet):
    def __init__(self, space: TinySpace):
        super().__init__(space)
        self.stem = DynamicConv2d(space.in_chans, STEM, 3)
        self.stem_bn = DynamicBatchNorm2d(STEM)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                self.convs.append(DynamicConv2d(MAX_W, MAX_W, 3, stride=2 if b == 0 else 1))
                self.bns.append(DynamicBatchNorm2d(MAX_W))
        self.head = DynamicLinear(MAX_W, space.num_classes)
        self.set_largest()

    def _set_active(self, config):
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                self.convs[s * MAX_DEPTH + b].active_out = config["w"][s]

    def forward(self, x):
        cfg = self.active_config
        x = torch.relu(self.stem_bn(self.stem(x)))
        for s in range(STAGES):
            for b in range(cfg["d"][s]):
                i = s * MAX_DEPTH + b
                x = torch.relu(self.bns[i](self.convs[i](x)))
        return self.head(x.mean(dim=(2, 3)))

    def _extract(self, config):
        self._set_active(config)
        m = _TinyStatic()
        m.stem = nn.Sequential(self.stem.to_static(self.space.in_chans), self.stem_bn.to_static(STEM), nn.ReLU())
        c_in, units = STEM, [["stem"]]
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                if b >= config["d"][s]:
                    units.append([])
                    continue
                i, w = s * MAX_DEPTH + b, config["w"][s]
                name = f"s{s}b{b}"
                m.add_module(name, nn.Sequential(self.convs[i].to_static(c_in), self.bns[i].to_static(w), nn.ReLU()))
                m.blocks.append(name)
                units.append([name])
                c_in = w
        m.head = self.head.to_static(c_in)
        units.append(["head"])
        m.fitplan_units = units
        if self.active_config is not None:
            self._set_active(self.active_config)
        return m


class _TinyStatic(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks: list[str] = []

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = getattr(self, b)(x)
        return self.head(x.mean(dim=(2, 3)))


if "planner_tiny" not in SPACES:
    register_space("planner_tiny")(TinySpace)


class FakeProfile(SimpleNamespace):
    """A non-local device profile with an analytic latency model (tests only)."""


def make_fake_profile(name="fake-phone", local=False, batch=1, caps=None, energy=False):
    from fitplan.hw_profiles.profile import Capabilities, Runtime

    return FakeProfile(name=name, kind="phone", runtime=Runtime(engine="unknown", batch=batch, local=local),
                       capabilities=Capabilities(**(caps or {})), energy_available=energy)


def analytic_latency(space):
    """ms = 0.01 + MACs / 1e6 (a stand-in predictor)."""

    def predict(configs):
        return np.asarray([0.01 + sum(u.macs for u in space.unit_costs(c)) / 1e6 for c in configs])

    return predict
