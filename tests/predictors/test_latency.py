"""Latency predictor: held-out-device accuracy, batch adapt/predict, state round-trips, compression flags.

Speed (adapt seconds, predictions per second) is measured by benchmarks/predictor_speed.py, not asserted here:
wall-clock limits flake on a loaded CI machine."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from fitplan.errors import ConfigError
from fitplan.hw_profiles.latency_data import load_latency_dataset
from fitplan.predictors import (AdaptedPredictor, LatencyPredictor, calibrate_profile, load_profile_predictor,
                                predictor_for_device)
from fitplan.predictors.latency import DEFAULT_BASIS, shipped_prior_path


def _samples(space: str, device: str, n: int = 10, seed: int = 0):
    ds = load_latency_dataset(space)
    y = ds.device(device)
    idx = np.random.default_rng(seed).choice(len(y), n, replace=False)
    return [{"arch": ds.arch(int(i)), "latency_ms": float(y[i])} for i in idx], idx


@pytest.mark.parametrize("space,device", [("fbnet", "pixel3"), ("ofa_mbv3", "v100_64")])
def test_held_out_device_spearman(space, device):
    ds = load_latency_dataset(space)
    others = [d for d in ds.devices if d != device]
    pred = LatencyPredictor.meta_train(space, devices=others)  # the held-out device is not in the prior
    samples, idx = _samples(space, device)
    ad = pred.adapt(samples, device=device)
    rest = np.setdiff1d(np.arange(len(ds)), idx)[:1500]
    p = ad.predict([ds.arch(int(i)) for i in rest])
    y = ds.device(device)[rest]
    assert spearmanr(p, y)[0] > 0.9
    assert np.median(np.abs(p - y) / y) < 0.05


def _assert_batch_predict(ad, ds) -> None:
    """1000 configs in one call (the planner's inner loop): one finite latency per config."""
    archs = ds.archs()[:1000]
    out = ad.predict(archs)
    assert out.shape == (1000,) and np.isfinite(out).all()


def test_adapt_and_batch_predict():
    ds = load_latency_dataset("ofa_mbv3")
    pred = LatencyPredictor.for_space("ofa_mbv3")
    samples, _ = _samples("ofa_mbv3", "titan_rtx_32")
    ad = pred.adapt(samples)
    _assert_batch_predict(ad, ds)


def test_state_round_trip(tmp_path: Path):
    ds = load_latency_dataset("fbnet")
    samples, _ = _samples("fbnet", "gold_6240")
    ad = LatencyPredictor.for_space("fbnet").adapt(samples, device="gold")
    state = json.loads(json.dumps(ad.state_dict()))
    back = AdaptedPredictor.from_state(state)
    archs = ds.archs()[:50]
    assert np.array_equal(ad.predict(archs), back.predict(archs))
    # the meta-trained prior round-trips through safetensors
    p = LatencyPredictor.meta_train("fbnet", devices=["pixel3", "gold_6240", "titanx_1"])
    p.save(tmp_path / "prior.safetensors")
    q = LatencyPredictor.load(tmp_path / "prior.safetensors")
    assert np.array_equal(p.adapt(samples).table, q.adapt(samples).table)
    np.testing.assert_array_equal(p.prior.tiled, q.prior.tiled)
    # a prior written before the tiled tables existed still loads and adapts (without that candidate)
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(tmp_path / "prior.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    old = {k: v for k, v in load_file(str(tmp_path / "prior.safetensors")).items() if k != "tiled"}
    save_file(old, str(tmp_path / "old.safetensors"), meta)
    r = LatencyPredictor.load(tmp_path / "old.safetensors")
    assert r.prior.tiled is None and np.isfinite(r.adapt(samples).table).all()
    with pytest.raises(ConfigError, match="format"):
        AdaptedPredictor.from_state({"format": "other"})


def test_shipped_prior_matches_rebuild():
    shipped = LatencyPredictor.load(shipped_prior_path("fbnet"))
    rebuilt = LatencyPredictor.meta_train("fbnet")
    np.testing.assert_allclose(shipped.prior.mean, rebuilt.prior.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(shipped.prior.tiled, rebuilt.prior.tiled, rtol=1e-9, atol=1e-12)
    assert shipped.prior.hyper == rebuilt.prior.hyper  # the shipped file was re-saved with the current defaults


def test_no_pickle_in_package_state():
    root = Path(__file__).resolve().parents[2] / "fitplan" / "predictors"
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt")]
    for p in root.glob("*.py"):
        text = p.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text


def test_calibrate_profile_and_builtin_device():
    class Prof:
        name = "my-phone"

    samples, _ = _samples("fbnet", "samsung_a50")
    state = calibrate_profile(Prof(), {"samples": samples}, "fbnet")
    json.dumps(state)
    ad = load_profile_predictor(state)
    assert ad.device == "my-phone" and ad.n_samples == 10
    b = predictor_for_device("fbnet", "pixel3")
    ds = load_latency_dataset("fbnet")
    p = b.predict(ds.archs()[:500])
    assert spearmanr(p, ds.device("pixel3")[:500])[0] > 0.99


def test_compression_unknown_is_flagged_not_invented():
    ds = load_latency_dataset("fbnet")
    samples, _ = _samples("fbnet", "pixel3")
    ad = LatencyPredictor.for_space("fbnet").adapt(samples, device="pixel3")
    cfg = dict(ds.arch(0), bits=[8] * 25)
    with pytest.raises(ConfigError, match="no bits=8 latency data"):
        ad.predict([cfg])
    ms, flags = ad.predict_with_flags([cfg])
    assert flags == [["bits=8"]] and ms[0] == pytest.approx(ad.predict([ds.arch(0)])[0])
    # calibration samples with int8 measurements teach a speed-up factor
    q = [{"arch": dict(s["arch"], bits=[8] * 25), "latency_ms": s["latency_ms"] * 0.6} for s in samples[:5]]
    ad8 = LatencyPredictor.for_space("fbnet").adapt(samples + q, device="pixel3")
    assert 0.2 < ad8.effects["bits=8"] < 0.6
    assert ad8.predict([cfg])[0] < ad8.predict([ds.arch(0)])[0]


@pytest.mark.parametrize("bad,field", [
    ([{"arch": {"op_idx_list": [0] * 21}, "latency_ms": 1.0}], "samples.0.arch.op_idx_list"),
    ([{"arch": {"op_idx_list": [9] + [0] * 21}, "latency_ms": 1.0}], "samples.0.arch.op_idx_list.0"),
    ([{"arch": {"op_idx_list": [0] * 22}, "latency_ms": float("nan")}], "samples.0.latency_ms"),
    ([{"arch": {"op_idx_list": [0] * 22}, "latency_ms": -1.0}], "samples.0.latency_ms"),
    ([{"arch": {"op_idx_list": [0] * 22}, "latency_ms": 0}], "samples.0.latency_ms"),
    ([{"arch": {"op_idx_list": [0] * 22}, "latency_ms": 1.0}] * 4, "samples.1.arch"),
    ([{"arch": {"op_idx_list": [i] * 22}, "latency_ms": 1.0} for i in range(2)], "samples"),
])
def test_bad_samples_name_the_field(bad, field):
    with pytest.raises(ConfigError) as e:
        LatencyPredictor.for_space("fbnet").adapt(bad)
    assert e.value.field == field


def test_ofa_arch_validation():
    from fitplan.predictors.features import validate_arch

    ok = {"ks": [3] * 20, "e": [4] * 20, "d": [2] * 5, "r": 160}
    assert validate_arch("ofa_mbv3", ok)["r"] == 160
    for key, val, field in [("ks", [4] * 20, "arch.ks.0"), ("d", [2] * 4, "arch.d"), ("r", 300, "arch.r"),
                            ("e", [3] * 19 + [5], "arch.e.19")]:
        with pytest.raises(ConfigError) as e:
            validate_arch("ofa_mbv3", dict(ok, **{key: val}))
        assert e.value.field == field


# ------------------------------------------------------------------------------------------ measured basis
def test_measured_basis_helps_held_out_device():
    """fbnet: the source-device average (measured latencies of pool archs) beats the additive table alone on
    a held-out GPU, and never uses the held-out device itself."""
    ds = load_latency_dataset("fbnet")
    dev = "1080ti_1"
    pred = LatencyPredictor.meta_train("fbnet", devices=[d for d in ds.devices if d != dev])
    y = ds.device(dev)
    gains = []
    for seed in range(3):
        samples, idx = _samples("fbnet", dev, seed=seed)
        ad = pred.adapt(samples, device=dev)
        assert ad.basis is not None and dev not in ad.basis["devices"]
        assert sum(ad.basis["weights"]) == pytest.approx(1.0)
        rest = np.setdiff1d(np.arange(len(ds)), idx)[:1500]
        archs = [ds.arch(int(i)) for i in rest]
        p = ad.predict(archs)
        p0 = AdaptedPredictor("fbnet", ad.table).predict(archs)  # additive part only
        assert np.median(np.abs(p - y[rest]) / y[rest]) < 0.05
        gains.append(spearmanr(p, y[rest])[0] - spearmanr(p0, y[rest])[0])
    assert np.mean(gains) > 0.008


def test_measured_basis_steps_aside_without_a_similar_source():
    """The additive posterior competes with the rescaled sources in the average: with no GPU among the sources
    a batch-1 GPU gets no basis part (the best CPU or phone, rescaled, explains its samples worse than the
    posterior does), while a CPU with its sibling CPU as a source keeps one."""
    from fitplan.predictors.fewshot import source_devices

    ds = load_latency_dataset("fbnet")
    for dev, protocol, seed, has_basis in [("titanx_1", "loco", 0, False), ("silver_4114", "lodo", 1, True)]:
        pred = LatencyPredictor.meta_train("fbnet", devices=source_devices(list(ds.devices), dev, protocol))
        samples, _ = _samples("fbnet", dev, seed=seed)
        ad = pred.adapt(samples, device=dev)
        assert (ad.basis is not None) == has_basis, dev
        if has_basis:
            assert 0 < ad.basis["rho"] <= DEFAULT_BASIS["fbnet"].rho
            assert "silver_4210r" in ad.basis["devices"]


def test_measured_basis_pool_lookup_and_fallback():
    from fitplan.predictors.basis import source_columns
    from fitplan.predictors.features import featurize

    ds = load_latency_dataset("fbnet")
    pool = {tuple(a) for a in ds.arrays["op_idx_list"].tolist()}
    rng = np.random.default_rng(0)
    new = next(a for a in (rng.integers(0, 9, 22).tolist() for _ in range(100)) if tuple(a) not in pool)
    archs = [ds.arch(3), {"op_idx_list": new}]
    s, found = source_columns("fbnet", ["pixel3", "gold_6240"], featurize("fbnet", archs))
    assert found.tolist() == [True, False]
    assert s[0, 0] == pytest.approx(np.log(ds.device("pixel3")[3]))  # measured value for a pool arch
    samples, _ = _samples("fbnet", "titanx_1")
    ad = LatencyPredictor.for_space("fbnet").adapt(samples)
    out = ad.predict(archs)
    assert np.isfinite(out).all() and (out > 0).all()
    add = AdaptedPredictor("fbnet", ad.table).predict(archs)
    assert np.all(np.abs(out / add - 1) < 0.3)  # fallback columns stay on the additive model's scale


def test_basis_state_round_trip_and_v1_states():
    ds = load_latency_dataset("fbnet")
    samples, _ = _samples("fbnet", "titanx_32")
    ad = LatencyPredictor.for_space("fbnet").adapt(samples, device="t")
    state = json.loads(json.dumps(ad.state_dict()))
    assert state["format_version"] == 2 and state["basis"]["devices"]
    back = AdaptedPredictor.from_state(state)
    archs = ds.archs()[:200]
    np.testing.assert_array_equal(ad.predict(archs), back.predict(archs))
    v1 = {k: v for k, v in state.items() if k != "basis"} | {"format_version": 1}
    np.testing.assert_array_equal(AdaptedPredictor.from_state(v1).predict(archs),
                                  AdaptedPredictor("fbnet", ad.table).predict(archs))
    bad = json.loads(json.dumps(state))
    bad["basis"]["weights"] = bad["basis"]["weights"][:-1] + [float("nan")]
    with pytest.raises(ConfigError, match="basis.weights"):
        AdaptedPredictor.from_state(bad)
    bad = json.loads(json.dumps(state))
    bad["basis"]["devices"][0] = "no-such-device"
    with pytest.raises(ConfigError, match="basis.devices"):
        AdaptedPredictor.from_state(bad)


def test_basis_batch_predict():
    ds = load_latency_dataset("fbnet")
    samples, _ = _samples("fbnet", "gold_6240")
    ad = LatencyPredictor.for_space("fbnet").adapt(samples)
    assert ad.basis is not None
    _assert_batch_predict(ad, ds)


def test_calibration_with_too_few_fp32_samples_for_the_meta_model():
    """Two fp32 and ten int8 samples: the meta model cannot be fitted, the analytic one is chosen (and the
    calibration does not fail while naming suspect samples)."""
    from fitplan.predictors.latency import calibrate_predictor

    ds = load_latency_dataset("fbnet")
    y = ds.device("pixel3")
    samples = [{"arch": ds.arch(i), "latency_ms": float(y[i])} for i in range(2)]
    samples += [{"arch": dict(ds.arch(i), bits=[8] * 25), "latency_ms": float(y[i]) * 0.6} for i in range(2, 12)]
    p = calibrate_predictor("fbnet", samples, device="x")
    assert p.provenance["selected_by"]["chosen"].startswith("analytic")
    assert p.provenance["suspect_samples"] == []
