"""Band candidates: searched networks of the largest capacity that use most of the budget."""


from fitplan.planner import finish


def test_band_candidates_use_most_of_the_budget_and_race(tmp_path, local_stage, monkeypatch):
    """With data, searched networks of the largest capacity predicted to use 80-100 % of the accepted latency
    are validated, measured best first, recorded (``source`` "band") and raced."""
    from fitplan.planner.band import BAND_TIER

    ctx, study, _ = local_stage(lambda i: 0.01, data="digits", max_train_steps=4,
                                 race_candidates=4, race_fraction=0.5, band_candidates=1)
    p = finish(ctx, study)
    band = [e for e in p.pareto if e.get("source") == "band"]
    accept = 0.06 * (1 - ctx.request.latency_margin)
    assert band and all("val_accuracy" in e["measured"] for e in band), p.notes
    assert any(BAND_TIER * accept * 0.9 <= e["measured"]["latency_ms"]["value"] <= accept for e in band)
    assert any("race_val_nll" in e["measured"] for e in band)
    assert any(n.startswith("band: ") and "1 within the budget" in n for n in p.notes)
