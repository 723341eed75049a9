"""The planner's latency for local devices: CostModelPredictor fitted to configs measured here, and a
profile's calibrated analytic state for a non-default space spec. Measurement is replaced by a known
analytic latency (no ONNX Runtime runs, no timing asserts)."""
from __future__ import annotations

import numpy as np
import pytest
from _spaces import TinySpace, make_fake_profile, register_tiny

import fitplan.planner.predict as P
from fitplan.errors import ConfigError
from fitplan.predictors import CostModelPredictor


def _truth(space, cfg, unit_factor=1.0, int8_factor=1.0):
    """Known latency: per active unit MACs + a launch; an 8-bit unit costs ``int8_factor`` x its float cost."""
    units = space.unit_costs(cfg)
    return 0.05 + unit_factor * sum((int8_factor if b == 8 else 1.0) * (0.002 * u.macs / 1e3 + 0.01)
                                    for u, b in zip(units, cfg["bits"]) if u.active and u.macs)


@pytest.fixture
def fake_measure(monkeypatch):
    calls = []

    def measure(space, cfg, profile, **kw):
        calls.append(cfg)
        return {"value": _truth(space, cfg), "status": "ok", "method": "fake measurement"}

    monkeypatch.setattr(P, "measure_latency", measure)
    return calls


def test_local_profile_fits_cost_model_on_measured_configs(tmp_path, fake_measure):
    """A device whose profile says int8 gives no speed-up: fp32 configs only, compression left to the planner."""
    register_tiny()
    space = TinySpace(resolutions=(8, 12))
    profile = make_fake_profile("this-cpu", local=True, caps={"int8_speedup": "no"})
    predict, desc, models_compression, speedups = P.resolve_latency(space, profile, out_dir=tmp_path, quick=True)
    assert "CostModelPredictor" in desc and "measured here" in desc
    assert models_compression is False and speedups == {}  # fp32 samples only: compression left to the planner
    assert (tmp_path / "latency_calibration.json").is_file() and fake_measure
    rng = np.random.default_rng(1)
    configs = [space.validate(space.sample(rng, compression=False)) for _ in range(20)]
    truth = np.array([_truth(space, c) for c in configs])
    np.testing.assert_allclose(predict(configs), truth, rtol=0.05)
    q = dict(configs[0], bits=[8] * len(space.units()))
    assert predict([q])[0] == pytest.approx(predict([configs[0]])[0])  # unknown int8: priced as fp32
    n = len(fake_measure)
    P.resolve_latency(space, profile, out_dir=tmp_path, quick=True)  # resumed from the cache
    assert len(fake_measure) == n


def test_local_calibration_measures_int8_and_mixed_configs_and_prices_units_by_bits(tmp_path, monkeypatch):
    register_tiny()
    space = TinySpace(resolutions=(8, 12))
    profile = make_fake_profile("this-cpu", local=True)  # int8 speed-up unknown: measure it
    seen = []

    def measure(space, cfg, profile, **kw):
        seen.append(cfg)
        return {"value": _truth(space, cfg, int8_factor=0.6), "status": "ok", "method": "fake measurement"}

    monkeypatch.setattr(P, "measure_latency", measure)
    predict, desc, models_compression, speedups = P.resolve_latency(space, profile, out_dir=tmp_path, quick=True)
    kinds = {"fp32" if set(c["bits"]) == {32} else "int8" if set(c["bits"]) == {8} else "mixed" for c in seen}
    assert kinds == {"fp32", "int8", "mixed"} and "mixed 8/32-bit" in desc
    assert models_compression is True and speedups["int8"] > 1.3  # the planner keeps bits=8 searchable
    rng = np.random.default_rng(3)
    units = len(space.units())
    configs = [space.validate({**space.sample(rng, compression=False), "bits": [int(b) for b in rng.choice([8, 32], units)]})
               for _ in range(20)]
    truth = np.array([_truth(space, c, int8_factor=0.6) for c in configs])
    np.testing.assert_allclose(predict(configs), truth, rtol=0.1)


def test_profile_analytic_state_applies_to_its_own_spec_only(fake_measure):
    register_tiny()
    space = TinySpace(resolutions=(8, 12))
    rng = np.random.default_rng(2)
    configs = [space.validate(space.sample(rng, compression=False)) for _ in range(12)]
    units = len(space.units())
    configs += [dict(c, bits=[8] * units) for c in configs[:4]]
    samples = [{"config": c, "latency_ms": _truth(space, c, 2.0 if c["bits"][0] == 8 else 1.0)} for c in configs]
    state = CostModelPredictor.fit(space, samples, device="kit-phone").state_dict()
    profile = make_fake_profile("kit-phone")
    profile.predictors = {space.name: state}
    _, desc, models_compression, speedups = P.resolve_latency(space, profile)
    assert "calibrated for kit-phone" in desc and models_compression is True
    assert speedups["int8"] == pytest.approx(0.5, rel=0.05)  # int8 units measured 2x slower
    assert not fake_measure
    other = TinySpace(resolutions=(8,))
    with pytest.raises(ConfigError) as e:
        P.resolve_latency(other, profile)
    assert e.value.field == "device" and "space spec" in str(e.value)


def test_collect_samples_measures_unstable_configs_once_more(tmp_path):
    """Unstable observations are repeated after all others; the latency is the geometric mean of both
    attempts, the other fields the tighter one's, and the cache records the second attempt so a resumed run
    does not repeat it again."""
    register_tiny()
    space = TinySpace(resolutions=(8, 12))
    first = [space.smallest(), space.largest()]
    seen = []
    script = {0: [(5.0, False, 0.2), (4.0, True, 0.004)], 1: [(3.0, True, 0.003)]}

    def observe(cfg):
        i = 0 if cfg == first[0] else 1
        seen.append(i)
        ms, stable, ci = script[i][sum(1 for s in seen if s == i) - 1]
        return {"latency_ms": ms, "stable": stable, "rel_ci": ci}

    cache = tmp_path / "cal.json"
    samples = P.collect_samples(space, first, 2, 0, observe, cache=cache, retry_unstable=True)
    assert seen == [0, 1, 0] and [s["latency_ms"] for s in samples] == pytest.approx([20 ** 0.5, 3.0])
    assert samples[0]["attempts"] == 2 and samples[0]["stable"] is True and samples[0]["rel_ci"] == 0.004
    again = P.collect_samples(space, first, 2, 0, observe, cache=cache, retry_unstable=True)
    assert seen == [0, 1, 0] and [s["latency_ms"] for s in again] == pytest.approx([20 ** 0.5, 3.0])  # cached
