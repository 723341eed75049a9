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


def _truth(space, cfg, unit_factor=1.0):
    units = space.unit_costs(cfg)
    return 0.05 + unit_factor * sum(0.002 * u.macs / 1e3 + (0.01 if u.active and u.macs else 0.0) for u in units)


@pytest.fixture
def fake_measure(monkeypatch):
    calls = []

    def measure(space, cfg, profile, **kw):
        calls.append(cfg)
        return {"value": _truth(space, cfg), "status": "ok", "method": "fake measurement"}

    monkeypatch.setattr(P, "measure_latency", measure)
    return calls


def test_local_profile_fits_cost_model_on_measured_configs(tmp_path, fake_measure):
    register_tiny()
    space = TinySpace(resolutions=(8, 12))
    profile = make_fake_profile("this-cpu", local=True)
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
