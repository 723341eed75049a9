"""Shared test helpers: a tiny elastic conv search space (+ supernet) in two sizes, and planner stand-ins.

Importable from every test directory as ``_spaces`` (tests/conftest.py puts ``tests/`` on ``sys.path``).

:class:`ElasticConvSpace`: stem conv (8) -> 2 stages x up to 2 conv blocks (width per stage from
``widths``, depth {1, 2}, first block of a stage stride 2) -> global pool -> [dropout] -> linear.
Input ``in_chans x r x r``, r in ``resolutions``. Units: stem, 4 blocks, head. It exercises the
SearchSpace / Supernet interface (elastic width and depth, a resolution dimension, units covering every
weight) with a network that trains in seconds on 2 CPU cores. Sizes, as class attributes:

* :class:`ToySpace` -- widths {8, 16}, r {12, 16}, dropout 0.1; not registered (compression / training /
  accuracy-predictor tests build it directly).
* :class:`TinySpace` -- widths {4, 8}, r {8, 12}, no dropout; trains and exports in well under a second.
  The planner tests register it as ``"planner_tiny"`` with :func:`register_tiny` (tests/planner/conftest.py).

Planner stand-ins: :func:`make_fake_profile` (a non-local device profile) and :func:`analytic_latency`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from fitplan.search_spaces.base import SPACES, Dimension, SearchSpace, UnitCost, register_space
from fitplan.search_spaces.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from fitplan.search_spaces.supernet import Supernet

STAGES, MAX_DEPTH, STEM = 2, 2, 8
TINY_NAME = "planner_tiny"
#: plan options for fast planner tests on the tiny space (quick timings, a few training steps)
PLAN_FAST = dict(quick=True, top_k=1, supernet_epochs=1, finetune_epochs=1, max_train_steps=3, accuracy_subnets=6)


class ElasticConvSpace(SearchSpace):
    """Tiny conv net: width / depth per stage, resolution. Subclasses set the sizes below."""

    name = "elastic_conv_test"
    widths: tuple[int, ...] = (8, 16)
    default_resolutions: tuple[int, ...] = (12, 16)
    dropout: float = 0.0

    def __init__(self, in_chans: int = 1, num_classes: int = 10, resolutions: tuple[int, ...] | None = None):
        resolutions = tuple(self.default_resolutions if resolutions is None else resolutions)
        # a list in the spec: it must compare equal to itself after a JSON round trip (planner caches)
        super().__init__(in_chans=in_chans, num_classes=num_classes, resolutions=list(resolutions))
        self.in_chans, self.num_classes, self.resolutions = in_chans, num_classes, resolutions

    @property
    def max_width(self) -> int:
        return max(self.widths)

    def arch_dimensions(self) -> list[Dimension]:
        return [Dimension("w", tuple(self.widths), STAGES, "arch"), Dimension("d", (1, 2), STAGES, "arch"),
                Dimension("r", self.resolutions, None, "resolution")]

    def units(self) -> list[str]:
        return ["stem"] + [f"s{s}.b{b}" for s in range(STAGES) for b in range(MAX_DEPTH)] + ["head"]

    def input_shape(self, config):
        return (self.in_chans, config["r"], config["r"])

    def unit_costs(self, config):
        side = config["r"]
        out = [UnitCost("stem", macs=side * side * self.in_chans * STEM * 9,
                        params=self.in_chans * STEM * 9 + 2 * STEM, act_elems=side * side * STEM)]
        c_in = STEM
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

    def build_supernet(self) -> "ElasticConvSupernet":
        return ElasticConvSupernet(self)


class ToySpace(ElasticConvSpace):
    """Widths {8, 16}, r {12, 16}, dropout 0.1 before the head (compression / training / accuracy tests)."""

    name = "toy"
    widths = (8, 16)
    default_resolutions = (12, 16)
    dropout = 0.1


class TinySpace(ElasticConvSpace):
    """Widths {4, 8}, r {8, 12}, no dropout (planner tests, registered as ``"planner_tiny"``)."""

    widths = (4, 8)
    default_resolutions = (8, 12)


def register_tiny(name: str = TINY_NAME) -> str:
    """Register :class:`TinySpace` under ``name`` (once; later calls are no-ops) and return the name."""
    if name not in SPACES:
        register_space(name)(TinySpace)
    return name


class ElasticConvSupernet(Supernet):
    def __init__(self, space: ElasticConvSpace):
        super().__init__(space)
        mw = space.max_width
        self.stem = DynamicConv2d(space.in_chans, STEM, 3)
        self.stem_bn = DynamicBatchNorm2d(STEM)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for s in range(STAGES):
            for b in range(MAX_DEPTH):
                self.convs.append(DynamicConv2d(mw, mw, 3, stride=2 if b == 0 else 1))
                self.bns.append(DynamicBatchNorm2d(mw))
        self.dropout = nn.Dropout(space.dropout) if space.dropout else nn.Identity()
        self.head = DynamicLinear(mw, space.num_classes)
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
        m = _ElasticConvStatic()
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


class _ElasticConvStatic(nn.Module):
    """Extracted subnet: stem -> active blocks -> global mean -> head (no dropout)."""

    def __init__(self):
        super().__init__()
        self.blocks: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = getattr(self, b)(x)
        return self.head(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------ planner stand-ins
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
