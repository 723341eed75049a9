"""Latency correction from measurements: the fit, its span rule, and the per-precision-class fit."""

import numpy as np


def test_latency_correction_fits_measured_over_predicted():
    from fitplan.planner.correction import apply_correction, latency_correction

    pred = np.array([0.1, 0.2, 0.4, 0.8])
    entries = [{"predicted": {"latency_ms": float(p)}, "measured": {"latency_ms": {"value": float(1.25 * p)}}}
               for p in pred]
    a, b = latency_correction(entries)
    assert abs(b) < 1e-9 and abs(a - np.log(1.25)) < 1e-9
    assert np.allclose(apply_correction(pred, a, b), 1.25 * pred)
    entries[0]["measured"]["latency_ms"]["value"] = 10.0  # one wild measurement: the median offset barely moves
    a2, _ = latency_correction(entries)
    assert abs(a2 - np.log(1.25)) < 0.5


def test_latency_correction_fits_no_slope_on_a_narrow_span():
    """Candidates of nearly equal predicted latency say nothing about larger configs: no slope, only the
    median offset (a slope of -0.5 from this noise would halve a 3.5x larger config's corrected latency)."""
    from fitplan.planner.correction import apply_correction, latency_correction

    pred = [0.168, 0.170, 0.171]
    meas = [0.186, 0.181, 0.176]
    entries = [{"predicted": {"latency_ms": p}, "measured": {"latency_ms": {"value": m}}} for p, m in zip(pred, meas)]
    a, b = latency_correction(entries)
    assert b == 0.0 and abs(a - np.median(np.log(np.divide(meas, pred)))) < 1e-12
    assert apply_correction(np.array([0.594]), a, b)[0] > 0.594


def test_class_corrected_fits_each_precision_class(tiny_problem):
    """fp32 graphs measured 1.25x their prediction and int8 ones 0.7x: each class is corrected by its own
    fit (a pooled median would misprice one of them); a class with fewer than two measurements uses the
    pooled fit."""
    from types import SimpleNamespace

    from fitplan.planner.correction import apply_correction, class_corrected, int8_class, latency_correction

    problem = tiny_problem()
    space, ev = problem.space, problem.evaluator
    rng = np.random.default_rng(0)
    cfgs = problem.decode_genotypes(problem.random_genotypes(40, rng))
    fp32 = [space.validate({**c, "bits": [32] * len(c["bits"])}) for c in cfgs[:20]]
    int8 = [space.validate({**c, "bits": [8] * len(c["bits"])}) for c in cfgs[20:]]
    assert not int8_class(space, fp32).any() and int8_class(space, int8).all()
    pred = ev.evaluate(fp32 + int8)["latency_ms"]
    factor = np.r_[np.full(20, 1.25), np.full(20, 0.7)]
    measured = [{"config": c, "predicted": {"latency_ms": float(p)},
                 "measured": {"latency_ms": {"value": float(p * f)}}} for c, p, f in zip(fp32 + int8, pred, factor)]
    ctx = SimpleNamespace(space=space, evaluator=ev)
    assert np.allclose(class_corrected(ctx, measured)(fp32 + int8), pred * factor)
    only_one_int8 = measured[:20] + measured[20:21]
    pooled = class_corrected(ctx, only_one_int8)(int8[1:2])
    assert np.allclose(pooled, apply_correction(pred[21:22], *latency_correction(only_one_int8)))
    assert pooled[0] > pred[21]  # mostly fp32 measurements: priced slow, not at the int8 class's 0.7x
