"""Accuracy predictor: fit on measured subnets, sensitivity tables, compressed predictions, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _spaces import ToySpace  # tests/_spaces.py (tests/conftest.py puts tests/ on sys.path)

from fitplan.data import calibration_batches, load_dataset
from fitplan.errors import ConfigError
from fitplan.predictors.accuracy import AccuracyPredictor, _fit_model, _predict_arrays
from fitplan.search_spaces.training import train_supernet


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits")
    space = ToySpace()
    sn = space.build_supernet()
    train_supernet(sn, data.loader("train", 64), epochs=2, lr=3e-2, optimizer="adamw", kd_alpha=0.5,
                   device="cpu")
    return space, sn, data


def test_regressor_arrays_match_sklearn():
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 7))
    y = X[:, 0] ** 2 + np.sin(X[:, 1]) + 0.1 * rng.normal(size=120)
    p = _fit_model("gbr", X, y, 0)
    ref = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8,
                                    random_state=0).fit(X, y)
    assert np.allclose(_predict_arrays("gbr", p, X), ref.predict(X), atol=1e-9)
    r = _fit_model("ridge", X, y, 0)
    assert np.corrcoef(_predict_arrays("ridge", r, X), y)[0, 1] > 0.3


def test_build_predict_roundtrip(trained, tmp_path):
    space, sn, data = trained
    cal = calibration_batches(data, 2, 128)
    val = data.loader("val", 256)
    pred = AccuracyPredictor.build(sn, val, cal, n_subnets=40, seed=0)
    m = pred.metrics
    assert m["n_measured"] == 40 and m["n_holdout"] == 8 and m["model"] in ("ridge", "gbr")
    assert -1.0 <= m["kendall_tau_holdout"] <= 1.0
    # more capacity should be predicted at least as accurate on average (trained supernet)
    assert pred.predict_arch([space.largest()])[0] > pred.predict_arch([space.smallest()])[0] - 0.05
    sens = pred.sensitivity
    assert set(sens["bits"]) == {"4", "8"} and set(sens["sparsity"]) == {"unstructured", "2:4"}
    assert all(v is not None for v in sens["bits"]["4"])  # the largest subnet has every unit active
    # heavier compression is never predicted more accurate (drops are clipped at 0 and added)
    base = space.largest()
    light = {**base, "bits": [8] * 6}
    heavy = {**base, "bits": [4] * 6, "sparsity": [0.75] * 6}
    a0, a1, a2 = pred.predict([base, light, heavy])
    assert a0 >= a1 >= a2
    assert pred.compression_drop(heavy) == pytest.approx(a0 - a2) or a2 == 0.0
    # 4 bits everywhere hurts more than 8 bits everywhere, as measured
    assert sum(max(0, v) for v in sens["bits"]["4"]) >= sum(max(0, v) for v in sens["bits"]["8"]) - 0.02

    # a drop scale fitted on real compressed measurements; it survives save/load
    from fitplan.predictors.accuracy import measure_compressed

    ccfgs = [space.sample(100 + i) for i in range(6)]
    real = [measure_compressed(sn, c, val, cal) for c in ccfgs]
    a = pred.fit_drop_scale(ccfgs, real)
    assert 0.0 <= a <= 10.0 and pred.metrics["drop_scale"]["n_configs"] == 6
    if pred.compression_drop(heavy) > 0:
        assert pred.compression_drop(heavy) == pytest.approx(a * sum(
            max(0.0, v) for v in sens["bits"]["4"]) + a * sum(max(0.0, v) for v in sens["sparsity"]["unstructured"]["0.75"]))

    path = pred.save(tmp_path / "acc.json")
    assert path.with_suffix(".npz").exists()
    back = AccuracyPredictor.load(path, space=space)
    cfgs = [space.sample(i) for i in range(10)]
    assert np.allclose(back.predict(cfgs), pred.predict(cfgs))
    assert back.metrics == pred.metrics and back.drop_scale == pred.drop_scale


def test_bad_input(trained):
    space, _, _ = trained
    p = AccuracyPredictor(space)
    with pytest.raises(ConfigError, match="configs"):
        p.fit([space.largest()] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match="accuracies"):
        p.fit([space.largest()] * 12, [0.5] * 11)
    with pytest.raises(ConfigError, match="models"):
        p.fit([space.sample(i) for i in range(12)], np.linspace(0, 1, 12), models=["svm"])
    with pytest.raises(RuntimeError):
        p.predict([space.largest()])
