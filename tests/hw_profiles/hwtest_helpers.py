"""Helpers for the hw_profiles tests: a tiny search space (so the tests do not depend on the real spaces,
which other modules provide) and a fast timing rule. A uniquely named module, not ``conftest``, so that
``import`` finds it whatever other conftest files are loaded."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fitplan.search_spaces.base import Dimension, SearchSpace, UnitCost
from fitplan.search_spaces.supernet import Supernet

TINY_NAME = "hwtest_tiny"
MAXW = 8


class TinyNet(nn.Module):
    """Static subnet: stem conv -> b1 conv -> optional b2 conv -> mean -> head."""

    def __init__(self, w0: int, w1: int, deep: bool, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, w0, 3, padding=1)
        self.b1 = nn.Conv2d(w0, w1, 3, padding=1)
        self.b2 = nn.Conv2d(w1, w1, 3, padding=1) if deep else None
        self.head = nn.Linear(w1, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.b1(x))
        if self.b2 is not None:
            x = F.relu(self.b2(x))
        return self.head(x.mean((2, 3)))


class TinySupernet(Supernet):
    def __init__(self, space: "TinySpace"):
        super().__init__(space)
        self.full = TinyNet(MAXW, MAXW, True)

    def _set_active(self, config):
        pass

    def forward(self, x):  # pragma: no cover - not needed by these tests
        return self._extract(self.active_config)(x)

    def _extract(self, config):
        w0, w1 = config["w"]
        deep = config["d"] == 2
        net = TinyNet(w0, w1, deep)
        with torch.no_grad():
            net.stem.weight.copy_(self.full.stem.weight[:w0]); net.stem.bias.copy_(self.full.stem.bias[:w0])
            net.b1.weight.copy_(self.full.b1.weight[:w1, :w0]); net.b1.bias.copy_(self.full.b1.bias[:w1])
            if deep:
                net.b2.weight.copy_(self.full.b2.weight[:w1, :w1]); net.b2.bias.copy_(self.full.b2.bias[:w1])
            net.head.weight.copy_(self.full.head.weight[:, :w1]); net.head.bias.copy_(self.full.head.bias)
        net.fitplan_units = [["stem"], ["b1"], ["b2"] if deep else [], ["head"]]
        return net


class TinySpace(SearchSpace):
    """A 4-unit toy space for tests: widths {4, 8} x 2, depth {1, 2}, resolution {16, 24}."""

    name = TINY_NAME

    def arch_dimensions(self):
        return [Dimension("w", (4, 8), 2, "arch"), Dimension("d", (1, 2), None, "arch"),
                Dimension("r", (16, 24), None, "resolution")]

    def units(self):
        return ["stem", "b1", "b2", "head"]

    def unit_costs(self, config):
        w0, w1 = config["w"]
        hw = config["r"] ** 2
        deep = config["d"] == 2
        conv = lambda i, o: (o * i * 9 * hw, o * i * 9 + o)  # noqa: E731
        out = []
        for name, (ci, co), act in (("stem", (3, w0), True), ("b1", (w0, w1), True), ("b2", (w1, w1), deep)):
            m, p = conv(ci, co) if act else (0, 0)
            out.append(UnitCost(name, m, p, co * hw if act else 0, act))
        out.append(UnitCost("head", w1 * 5, w1 * 5 + 5, 5, True))
        return out

    def input_shape(self, config):
        return (3, config["r"], config["r"])

    def build_supernet(self):
        torch.manual_seed(0)
        return TinySupernet(self)



#: A fast stopping rule for tests (structure, not timing quality, is under test).
FAST = {"warmup_s": 0.0, "min_warmup": 2, "min_repeats": 5, "max_repeats": 30, "max_seconds": 0.5}
