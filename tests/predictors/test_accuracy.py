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
    assert m["features"] in ("encode", "summary") and m["target"] in ("accuracy", "nll")
    assert len(m["cv_kendall_tau"]) == 8  # 2 targets x 2 feature sets x 2 regressors
    assert len(pred.meta["measured"]["nll"]) == 40 and min(pred.meta["measured"]["nll"]) > 0
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


def test_sensitivity_limited_to_searched_choices(trained):
    """A planner that searches only 8-bit units measures only their drops (not 4-bit or sparse ones), and a
    cached table is reused only when it covers what the search needs."""
    from fitplan.planner.predict import sensitivity_choices

    space, sn, data = trained
    choices = sensitivity_choices(space, {"bits": [8, 32], "sparsity": [0.0], "sparsity_pattern": ["unstructured"]})
    assert choices == {"bits": [8, 32], "sparsities": [0.0], "two_four": False}
    pred = AccuracyPredictor.build(sn, data.loader("val", 256), calibration_batches(data, 1, 128), n_subnets=12,
                                   seed=0, sensitivity_choices=choices)
    sens = pred.sensitivity
    assert set(sens["bits"]) == {"8"} and sens["sparsity"] == {"unstructured": {}}
    assert pred.covers(choices) and not pred.covers({}) and not pred.covers({"bits": [4, 8, 32]})
    light = {**space.largest(), "bits": [8] * 6}
    assert pred.predict([light])[0] <= pred.predict([space.largest()])[0]
    with pytest.raises(ConfigError) as e:  # a setting that was not measured is named, never invented
        pred.compression_drop({**space.largest(), "bits": [4] * 6})
    assert e.value.field.startswith("bits.")


def test_bad_input(trained):
    space, _, _ = trained
    p = AccuracyPredictor(space)
    with pytest.raises(ConfigError, match="configs"):
        p.fit([space.largest()] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match="accuracies"):
        p.fit([space.largest()] * 12, [0.5] * 11)
    with pytest.raises(ConfigError, match="models"):
        p.fit([space.sample(i) for i in range(12)], np.linspace(0, 1, 12), models=["svm"])
    with pytest.raises(ConfigError, match="nll"):
        p.fit([space.sample(i) for i in range(12)], np.linspace(0, 1, 12), nll=[1.0] * 11)
    with pytest.raises(ConfigError, match="nll"):
        p.fit([space.sample(i) for i in range(12)], np.linspace(0, 1, 12), targets=["nll"])
    with pytest.raises(ConfigError, match="feature_sets"):
        p.fit([space.sample(i) for i in range(12)], np.linspace(0, 1, 12), feature_sets=["pixels"])
    with pytest.raises(RuntimeError):
        p.predict([space.largest()])


def test_nll_target_ranks_through_accuracy_noise(tmp_path):
    """Accuracy on a small split is quantised and noisy; cross-entropy carries the same ordering with less
    noise. With a synthetic truth (quality = capacity), the nll target must rank unseen subnets better
    than the accuracy target, be chosen by CV, and survive save/load."""
    from scipy.stats import kendalltau

    space = ToySpace()
    rng = np.random.default_rng(0)
    cfgs = [space.sample(i, compression=False) for i in range(120)]
    macs = np.asarray([np.log(space.costs(c)["macs"]) for c in cfgs])
    truth = (macs - macs.min()) / np.ptp(macs)
    acc = np.round((0.90 + 0.04 * truth + rng.normal(0, 0.03, len(cfgs))) * 100) / 100  # 100 images
    nll = 0.40 - 0.15 * truth + rng.normal(0, 0.01, len(cfgs))
    train, test = np.arange(80), np.arange(80, 120)
    tr = [cfgs[i] for i in train]
    p_acc, p_nll = AccuracyPredictor(space), AccuracyPredictor(space)
    p_acc.fit(tr, acc[train], targets=["accuracy"], seed=0)
    m = p_nll.fit(tr, acc[train], nll=nll[train], seed=0)
    assert m["target"] == "nll" and m["nll_to_accuracy"]["slope"] < 0
    te = [cfgs[i] for i in test]
    tau_acc = kendalltau(p_acc.predict_arch(te), truth[test]).statistic
    tau_nll = kendalltau(p_nll.predict_arch(te), truth[test]).statistic
    assert tau_nll > tau_acc and tau_nll > 0.8
    # predictions stay on the accuracy scale
    assert 0.85 < float(np.mean(p_nll.predict_arch(te))) < 0.99
    back = AccuracyPredictor.load(p_nll.save(tmp_path / "p.json"), space=space)
    assert back.feature_set == p_nll.feature_set and back.target == "nll"
    assert np.allclose(back.predict_arch(te), p_nll.predict_arch(te))
