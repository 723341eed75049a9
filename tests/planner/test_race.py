"""The fine-tune race: order, winner rule, checkpoints."""

import numpy as np

from fitplan.planner import finish


def test_finetune_checkpoints_are_per_config(tmp_path):
    from fitplan.planner.race import finetune_dir

    a, b = {"r": 8, "w": [4, 4]}, {"r": 12, "w": [4, 4]}
    assert finetune_dir(tmp_path, a) != finetune_dir(tmp_path, b)
    assert finetune_dir(tmp_path, a) == finetune_dir(tmp_path, dict(a))
    assert finetune_dir(tmp_path, a).parent == tmp_path / "finetune_ckpt"


def test_fine_tune_race_keeps_the_lowest_val_cross_entropy_and_resumes_its_checkpoint(tmp_path, local_stage,
                                                                                       monkeypatch):
    """With data, the best gated candidates are each fine-tuned for a share of the full run and compared on
    validation cross-entropy; the winner's fine-tune continues from its race checkpoint, the others' are gone."""
    from fitplan.planner.race import finetune_dir

    ctx, study, calls = local_stage(lambda i: 0.01, data="digits", max_train_steps=4,
                                     race_candidates=3, race_fraction=0.5)
    p = finish(ctx, study)
    raced = [e for e in p.pareto if "race_val_nll" in e["measured"]]
    assert 2 <= len(raced) <= 3
    assert all("latency_ms_exported_gate" in e["measured"] for e in raced)  # only deliverable ones race
    chosen = next(e for e in p.pareto if e.get("chosen"))
    assert chosen in raced
    nlls = [e["measured"]["race_val_nll"]["value"] for e in raced]
    assert chosen["measured"]["race_val_nll"]["value"] == min(nlls) or any(
        "standard error(s) of the lowest validation cross-entropy won" in n for n in p.notes)
    assert "after 2 of 4 fine-tuning steps" in chosen["measured"]["race_val_nll"]["method"]
    assert any(n.startswith(f"race: {len(raced)} candidates") for n in p.notes)
    assert p.finetune["result"]["resumed_from"] == 2 and p.finetune["result"]["steps"] == 4
    left = sorted(d.name for d in (tmp_path / "finetune_ckpt").iterdir())
    assert left == [finetune_dir(tmp_path, p.config).name]


def test_race_lowest_cross_entropy_wins_without_tolerance(tmp_path, local_stage, monkeypatch):
    ctx, study, calls = local_stage(lambda i: 0.01, data="digits", max_train_steps=4,
                                     race_candidates=3, race_fraction=0.5, race_tolerance=0.0)
    p = finish(ctx, study)
    raced = [e for e in p.pareto if "race_val_nll" in e["measured"]]
    chosen = next(e for e in raced if e.get("chosen"))
    assert chosen["measured"]["race_val_nll"]["value"] == min(e["measured"]["race_val_nll"]["value"] for e in raced)


def _raced(ms: float, nll: np.ndarray, acc: float = 0.9) -> dict:
    return {"measured": {"latency_ms": {"value": ms}, "race_val_nll": {"value": float(nll.mean())},
                         "race_val_accuracy": {"value": acc}}}


def test_race_winner_prefers_capacity_only_within_noise():
    """The slowest candidate wins when its validation cross-entropy is within ``tolerance`` paired standard
    errors of the lowest; a clearly worse slow one does not."""
    from fitplan.planner.race import race_winner

    rng = np.random.default_rng(0)
    base = rng.exponential(0.2, 400)
    small = base
    close = base + rng.normal(0.005, 0.05, 400)   # worse by ~0.005, SE ~0.0025: 2 SE
    far = base + rng.normal(0.05, 0.05, 400)      # worse by ~0.05: 20 SE
    entries = [_raced(0.1, small), _raced(0.3, close), _raced(0.4, far)]
    nll = [small, close, far]
    assert race_winner(entries, nll, 0.0)[0] == 0
    assert race_winner(entries, nll, 3.0)[0] == 1
    i, why = race_winner(entries, nll, 3.0)
    assert "slowest of the 2" in why
    assert race_winner(entries, nll, 1000.0)[0] == 2
    # the leader is the slowest: it wins whatever the tolerance
    assert race_winner([_raced(0.5, small), _raced(0.3, close)], [small, close], 3.0)[0] == 0


def test_race_order_mixes_best_uniform_and_slowest():
    from fitplan.planner.race import race_order

    def e(name, ms, source="search"):
        return {"name": name, "source": source, "measured": {"latency_ms": {"value": ms}}}

    ranked = [e("a", 0.10), e("b", 0.11), e("u1", 0.15, "uniform"), e("c", 0.30), e("u2", 0.2, "uniform")]
    order = [x["name"] for x in race_order(ranked, 3)]
    assert order == ["a", "u1", "c", "b", "u2"]
    assert [x["name"] for x in race_order(ranked, 1)] == ["a", "b", "u1", "c", "u2"]
    assert [x["name"] for x in race_order(ranked[:2], 3)] == ["a", "b"]
    assert [x["name"] for x in race_order(ranked, 4)] == ["a", "u1", "c", "u2", "b"]
    assert [x["name"] for x in race_order(ranked[:3], 5)] == ["a", "u1", "b"]  # one uniform, b the slowest left
    # a band candidate (a searched network using most of the budget) races third, before the slowest
    banded = ranked + [e("n1", 0.25, "band"), e("n2", 0.26, "band")]
    assert [x["name"] for x in race_order(banded, 5)][:5] == ["a", "u1", "n1", "c", "u2"]
