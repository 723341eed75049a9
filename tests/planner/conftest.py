import pytest

from _spaces import TINY_NAME, analytic_latency, register_tiny

register_tiny()  # TinySpace as "planner_tiny", used by name throughout the planner tests


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
        space = create_space(TINY_NAME)
        ev = Evaluator(space, analytic_latency(space), CapacityProxy(space).predict,
                       speedups=speedups or {})
        return SearchProblem(space, ev, Budget(**(budget or {"latency_ms": 0.1})), restrict or {})

    return make
