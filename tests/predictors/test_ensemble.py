"""Ensemble latency predictor (log-space average of calibrated predictors) and the calibration's choice rule:
combination, state round trip, bad states, select_model, and the choice on a device unlike every source."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from fitplan.cli import main
from fitplan.errors import ConfigError
from fitplan.hw_profiles.latency_data import load_latency_dataset
from fitplan.predictors import (AdaptedPredictor, CostModelPredictor, LatencyPredictor, calibrate_predictor,
                                load_profile_predictor)
from fitplan.predictors.ensemble import ENSEMBLE_FORMAT, EnsemblePredictor
from fitplan.predictors.fewshot import source_devices
from fitplan.predictors.latency import select_model


def _samples(device: str, seed: int, n: int = 10):
    ds = load_latency_dataset("fbnet")
    y = ds.device(device)
    idx = np.random.default_rng(seed).choice(len(y), n, replace=False)
    return [{"arch": ds.arch(int(i)), "latency_ms": float(y[i])} for i in idx], idx


@pytest.fixture(scope="module")
def members():
    samples, _ = _samples("gold_6240", seed=0)
    return (LatencyPredictor.for_space("fbnet").adapt(samples, device="cpu"),
            CostModelPredictor.fit("fbnet", samples, device="cpu"))


def test_geometric_mean_of_members_and_state_round_trip(members):
    meta, analytic = members
    archs = load_latency_dataset("fbnet").archs()[:200]
    ens = EnsemblePredictor(list(members), [1.0, 3.0], device="cpu")
    assert ens.weights == [0.25, 0.75] and ens.n_samples == 10 and ens.effects == {}
    expected = np.exp(0.25 * np.log(meta.predict(archs)) + 0.75 * np.log(analytic.predict(archs)))
    np.testing.assert_allclose(ens.predict(archs), expected, rtol=1e-12)
    state = json.loads(json.dumps(ens.state_dict()))
    assert state["format"] == ENSEMBLE_FORMAT and state["format_version"] == 1 and state["space"] == "fbnet"
    back = load_profile_predictor(state)
    assert isinstance(back, EnsemblePredictor)
    assert [type(m) for m in back.members] == [AdaptedPredictor, CostModelPredictor]
    np.testing.assert_allclose(back.predict(archs), expected, rtol=1e-9)
    ms, flags = back.predict_with_flags(archs[:5])
    np.testing.assert_allclose(ms, expected[:5], rtol=1e-9)
    assert flags == [[]] * 5


def test_bad_states_name_the_field(members):
    state = EnsemblePredictor(list(members)).state_dict()
    cases = [({"format_version": 9}, "format_version"), ({"members": state["members"][:1]}, "members"),
             ({"weights": [1.0]}, "weights"), ({"weights": [1.0, -1.0]}, "weights"),
             ({"members": [state, state["members"][1]]}, "members.0.format"),
             ({"members": [{**state["members"][0], "table": [1.0]}, state["members"][1]]}, "members.0.table")]
    for patch, field in cases:
        with pytest.raises(ConfigError) as e:
            EnsemblePredictor.from_state({**state, **patch})
        assert e.value.field == field, (patch.keys(), e.value.field)
    with pytest.raises(ConfigError) as e:
        EnsemblePredictor([members[0]])
    assert e.value.field == "members"


def test_select_model_keeps_the_default_unless_clearly_beaten():
    rng = np.random.default_rng(0)
    meta = rng.uniform(0.02, 0.06, 10)
    noisy = meta + np.tile([0.009, -0.011], 5)  # lower by 0.001 on average, +-0.01 per sample: within noise
    assert select_model({"meta": meta, "analytic": noisy}, default="meta") == "meta"
    errs = {"meta": meta, "analytic": meta - 0.01, "ensemble": meta - 0.02}
    assert select_model(errs, default="meta") == "ensemble"  # both clearly better: the lower mean
    assert select_model({"meta": np.full(10, np.inf), "analytic": meta}, default="meta") == "analytic"
    assert select_model({"meta": meta, "ensemble": np.full(10, np.inf)}, default="meta") == "meta"


def test_calibration_with_few_samples_keeps_the_meta_model():
    """Below MIN_SELECT_SAMPLES uncompressed samples the cross-validated choice is not made (it lost on
    average there): essential_ph_1, whose ten samples choose the analytic model, keeps the meta model with
    five; the errors are still reported."""
    from fitplan.predictors.latency import MIN_SELECT_SAMPLES

    samples, _ = _samples("essential_ph_1", seed=0)
    assert calibrate_predictor("fbnet", samples).provenance["selected_by"]["chosen"] == "analytic"
    few = samples[:5]
    assert len(few) < MIN_SELECT_SAMPLES
    pred = calibrate_predictor("fbnet", few)
    sel = pred.provenance["selected_by"]
    assert sel["chosen"] == "meta" and isinstance(pred, AdaptedPredictor)
    assert set(sel["cv_mean_ape_pct"]) == {"meta", "analytic", "ensemble"}


def test_calibration_averages_on_a_device_unlike_every_source():
    """essential_ph_1 with a prior built from GPUs and CPUs only (no phone source; its latency follows MACs
    more than those sources say): the samples choose the average of the meta and analytic models, and it
    ranks the held-out archs better than the meta model alone."""
    ds = load_latency_dataset("fbnet")
    dev = "essential_ph_1"
    base = LatencyPredictor.meta_train("fbnet", devices=source_devices(list(ds.devices), dev, "loco"))
    samples, idx = _samples(dev, seed=1)
    pred = calibrate_predictor("fbnet", samples, device=dev, base=base)
    sel = pred.provenance["selected_by"]
    assert sel["chosen"] == "ensemble" and isinstance(pred, EnsemblePredictor)
    assert set(sel["cv_mean_ape_pct"]) == {"meta", "analytic", "ensemble"}
    rest = np.setdiff1d(np.arange(len(ds)), idx)[:1500]
    archs, y = [ds.arch(int(i)) for i in rest], ds.device(dev)[rest]
    meta = calibrate_predictor("fbnet", samples, device=dev, method="meta", base=base)
    assert spearmanr(pred.predict(archs), y)[0] > spearmanr(meta.predict(archs), y)[0] + 0.05
    # the phone logs whole milliseconds and switches frequency states: ~10 % is its noise level
    assert np.median(np.abs(pred.predict(archs) / y - 1)) < np.median(np.abs(meta.predict(archs) / y - 1))


def test_cli_method_option(tmp_path, capsys):
    samples, _ = _samples("pixel3", seed=0)
    (tmp_path / "cal.json").write_text(json.dumps({"samples": samples}))
    (tmp_path / "archs.json").write_text(json.dumps(load_latency_dataset("fbnet").archs()[:20]))
    args = ["predictor", "predict", "--space", "fbnet", "--calibration", str(tmp_path / "cal.json"),
            "--archs", str(tmp_path / "archs.json"), "--out", str(tmp_path / "p.json")]
    assert main(args + ["--method", "meta"]) == 0
    assert "(meta model)" in capsys.readouterr().err
    assert main(args + ["--method", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "--method" in err and "'auto', 'meta', 'analytic'" in err


def test_planner_uses_an_ensemble_stored_in_a_profile(members):
    from fitplan.hw_profiles import get_profile
    from fitplan.planner.predict import resolve_latency
    from fitplan.search_spaces import create_space

    prof = get_profile("gold_6240").copy()
    ens = EnsemblePredictor(list(members), device=prof.name, provenance={"method": "average"})
    prof.predictors["fbnet"] = json.loads(json.dumps(ens.state_dict()))
    space = create_space("fbnet")
    predict, desc, models_compression, speedups = resolve_latency(space, prof)
    cfgs = [space.smallest(), space.largest()]
    ms = predict(cfgs)
    assert "calibrated for gold_6240" in desc and "average" in desc
    assert ms[0] < ms[1] and not models_compression and speedups == {}
    np.testing.assert_allclose(ms, ens.predict(cfgs, unknown="fp32"))
