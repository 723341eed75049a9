import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _tiny  # noqa: E402,F401  (registers "planner_tiny")


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


@pytest.fixture
def fake_latency(monkeypatch):
    """Route the planner's latency predictor to :func:`analytic_latency` for any device."""
    import fitplan.planner.predict as P

    def resolve(space, profile, **kw):
        return analytic_latency(space), "predicted: test analytic MACs model", False, {}

    monkeypatch.setattr(P, "resolve_latency", resolve)
    return resolve


@pytest.fixture
def tiny_problem():
    from fitplan.planner.budget import Budget
    from fitplan.planner.metrics import Evaluator
    from fitplan.planner.predict import CapacityProxy
    from fitplan.planner.search import SearchProblem
    from fitplan.search_spaces import create_space

    def make(budget=None, restrict=None, speedups=None):
        space = create_space("planner_tiny")
        ev = Evaluator(space, analytic_latency(space), CapacityProxy(space).predict,
                       speedups=speedups or {})
        return SearchProblem(space, ev, Budget(**(budget or {"latency_ms": 0.1})), restrict or {})

    return make
