import pytest

from _spaces import PLAN_FAST, TINY_NAME, analytic_latency, register_tiny

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


@pytest.fixture
def local_stage(tmp_path, monkeypatch, fake_latency):
    """``stage(artifact_ms, bias=..., **request_options) -> (ctx, study, calls)``: the stage API on the tiny
    space with a fake local runtime. Candidates measure at their analytic latency times ``bias(config)``,
    exported files at ``artifact_ms(call_index)`` (``calls`` lists the timed paths); 100 trials searched."""
    import optuna

    import fitplan.planner.api as api
    import fitplan.planner.gate as gate
    import fitplan.planner.predict as P
    from _spaces import make_fake_profile
    from fitplan.planner import PlanRequest, prepare, run_search

    def stage(artifact_ms, bias=lambda cfg: 1.0, **kw):
        def fake_measure(space, config, profile, **k):
            v = float(analytic_latency(space)([space.validate(config)])[0]) * bias(space.validate(config))
            return {"value": v, "status": "ok", "method": "measured: fake runtime (test)"}

        calls = []

        def fake_artifact(ctx, path, shape):
            calls.append(path)
            return {"value": artifact_ms(len(calls) - 1), "method": "measured: fake artifact timing (test)"}

        monkeypatch.setattr(P, "measure_latency", fake_measure)
        monkeypatch.setattr(api, "_measure_int8_factor", lambda *a, **k: (None, "skipped in test"))
        monkeypatch.setattr(gate, "measure_artifact", fake_artifact)
        req = PlanRequest("planner_tiny", make_fake_profile(local=True), {"latency_ms": 0.06}, out_dir=str(tmp_path),
                          engine="optuna", **{**PLAN_FAST, "top_k": 3, **kw})
        ctx = prepare(req)
        storage = optuna.storages.InMemoryStorage()
        run_search(ctx, storage, "s", 100)
        return ctx, optuna.load_study(study_name="s", storage=storage), calls

    return stage
