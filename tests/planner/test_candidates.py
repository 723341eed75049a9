"""Verification, uniformly scaled candidates and validation ranking, on the tiny space with a fake local runtime."""
import json

import numpy as np

from fitplan.planner import finish


def test_verify_skips_budget_breakers_and_retightens(local_stage):
    """Measured latency 2x the prediction: every first candidate breaks the budget on the 'real runtime';
    the planner re-searches with latency corrected by its measurements and returns a measured-feasible plan."""
    ctx, study, _ = local_stage(lambda i: 0.0, bias=lambda cfg: 2.0, top_k=1)
    p = finish(ctx, study)
    assert p.measured["latency_ms"]["value"] <= 0.06
    assert any("optimistic" in n and "re-predicted" in n for n in p.notes)
    assert p.predicted["latency_ms"] <= 0.03 + 1e-9


def test_verify_keeps_latency_margin(tmp_path, local_stage, monkeypatch):
    ctx, study, _ = local_stage(lambda i: 0.0, latency_margin=0.2)
    p = finish(ctx, study)
    assert p.measured["latency_ms"]["value"] <= 0.06 * 0.8 + 1e-12


def test_verify_refines_when_more_accurate_candidates_broke_the_budget(tmp_path, local_stage, monkeypatch):
    """The runtime is 1.8x slower than predicted at the larger resolution only: the most accurate candidates
    break the budget, smaller ones pass. The planner fits a latency correction on what it measured, searches
    again, verifies the new candidates and still returns a measured-feasible plan."""
    ctx, study, _ = local_stage(lambda i: 0.01, bias=lambda c: 1.8 if c["r"] == 12 else 1.0)
    p = finish(ctx, study)
    refine = [n for n in p.notes if "re-predicted" in n]
    assert refine and "searched again" in refine[0]
    assert p.measured["latency_ms"]["value"] <= 0.06 * (1 - ctx.request.latency_margin)
    measured = [e for e in p.pareto if e["measured"].get("latency_ms")]
    best_failed = max(e["predicted"]["accuracy"] for e in measured if e["measured"]["latency_ms"]["value"] > 0.057)
    assert best_failed > p.predicted["accuracy"]  # the trigger: a more accurate candidate broke the budget


def test_uniform_candidates_adapt_the_latency_correction_after_misses(tmp_path, local_stage, monkeypatch):
    """Uniformly scaled configs run 1.6x slower than predicted while the searched ones run as predicted: the
    first uniform picks miss the budget, the correction refitted on them moves to smaller ones, and only
    measured-feasible uniform configs join the verified candidates."""
    def uniform(c):  # the tiny space's per-layer dimensions are w and d
        return len(set(c["w"])) == 1 and len(set(c["d"])) == 1

    ctx, study, _ = local_stage(lambda i: 0.01, bias=lambda c: 1.6 if uniform(c) else 1.0,
                                 uniform_candidates=1)
    p = finish(ctx, study)
    uni = [e for e in p.pareto if e.get("source") == "uniform"]
    note = next(n for n in p.notes if "uniformly scaled" in n)
    assert uni and len(uni) <= 1 + 3 and f"{len(uni)} uniformly scaled" in note
    accept = 0.06 * (1 - ctx.request.latency_margin)
    within = [e for e in uni if e["measured"]["latency_ms"]["value"] <= accept]
    assert note.endswith(f"{len(within)} within the budget") and len(within) <= 1
    # this seed: a uniform pick misses, a later one (after the refit) fits
    assert any(e["measured"]["latency_ms"]["value"] > accept for e in uni) and len(within) == 1
    assert p.measured["latency_ms"]["value"] <= accept


def test_uniform_picks_step_below_each_miss(tmp_path, local_stage, monkeypatch):
    """Uniform configs run 1.35x slower than predicted, next to many searched candidates measured exactly as
    predicted: the correction (a median over all of them) barely moves after a miss, so without a cap the
    next pick (the tiny space's next uniform config, predicted 17 % smaller) would miss too. Each pick after
    a miss is predicted smaller by at least the factor it missed by."""
    import fitplan.planner.candidates as candidates

    order = []

    def bias(c):
        u = len(set(c["w"])) == 1 and len(set(c["d"])) == 1
        if u:
            order.append(c)
        return 1.35 if u else 1.0

    ctx, study, _ = local_stage(lambda i: 0.01, bias=bias, uniform_candidates=2)
    order.clear()
    rng = np.random.default_rng(0)
    pred = ctx.evaluator.latency_predict
    searched = [ctx.space.sample(rng, compression=False) for _ in range(40)]
    searched = [c for c in searched if not (len(set(c["w"])) == 1 and len(set(c["d"])) == 1)][:15]
    entries = [{"config": c, "predicted": {"accuracy": 0.5, "latency_ms": float(v)},
                "measured": {"latency_ms": {"value": float(v)}}} for c, v in zip(searched, pred(searched))]
    accept = 0.048  # between the two largest uniform configs' predictions (0.0464 and 0.0723 ms)
    monkeypatch.setattr(candidates, "accept_ms", lambda ctx: accept)
    candidates.add_uniform(ctx, entries, [], [])
    p = [float(v) for v in pred(order)]
    m = [1.35 * v for v in p]
    assert len(order) >= 2 and any(v > accept for v in m)
    for i, (pi, mi) in enumerate(zip(p, m)):
        if mi > accept:  # every later pick is predicted below this miss's pred x accept / measured
            assert all(pj <= pi * accept / mi + 1e-12 for pj in p[i + 1:])
    assert sum(v > accept for v in m) == 1 and sum(v <= accept for v in m) >= 1


def test_uniform_candidates_are_picked_and_recorded_by_validation(tmp_path, local_stage, monkeypatch):
    """With data, uniform candidates are picked by validation (:func:`pick_uniform`), and the validation
    they were picked on is the one recorded: each network is evaluated once, the candidate ranking reuses it."""
    import fitplan.planner.candidates as candidates

    evaluated: list[str] = []
    scorer_metrics = candidates.ValidationScorer.metrics

    def spy(self, e):
        if not self.done(e):
            evaluated.append(json.dumps(e["config"], sort_keys=True))
        return scorer_metrics(self, e)

    monkeypatch.setattr(candidates.ValidationScorer, "metrics", spy)
    ctx, study, _ = local_stage(lambda i: 0.01, data="digits", max_train_steps=4,
                                 race_candidates=0, uniform_candidates=2)
    p = finish(ctx, study)
    uni = [e for e in p.pareto if e.get("source") == "uniform"]
    assert uni and all("val_accuracy" in e["measured"] for e in uni)
    assert len(evaluated) == len(set(evaluated))  # nothing validated twice
    assert any("best on validation among those using most of the budget first" in n for n in p.notes)


def test_pick_uniform_takes_the_best_validated_config_that_uses_the_budget():
    """With a validation scorer the next uniform config is the best on validation among those predicted at
    UNIFORM_TIER x accept or more (only those are scored); without one, or when none is that large, the
    largest predicted."""
    from fitplan.planner.candidates import UNIFORM_TIER, pick_uniform

    def e(name, ms):
        return {"name": name, "predicted": {"latency_ms": ms}}

    val = {"big": 0.70, "mid": 0.78, "small": 0.95}
    scored = []

    def score(entries):
        scored.extend(x["name"] for x in entries)
        return [(val[x["name"]], 0.0) for x in entries]

    accept = 1.0
    left = [(e("big", 0.98), 0.98), (e("mid", 0.9), 0.9), (e("small", UNIFORM_TIER - 0.1), UNIFORM_TIER - 0.1)]
    assert pick_uniform(left, accept, score)["name"] == "mid"
    assert sorted(scored) == ["big", "mid"]  # the small one is not validated at all
    assert pick_uniform(left, accept, None)["name"] == "big"
    assert pick_uniform(left[2:], accept, score)["name"] == "small"  # nothing in the tier: the largest
