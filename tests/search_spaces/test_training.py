"""Supernet training (sandwich + in-place KD), checkpoint/resume, BN recalibration, evaluation, finetune."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from _spaces import ToySpace  # tests/_spaces.py (tests/conftest.py puts tests/ on sys.path)

from fitplan.data import calibration_batches, load_dataset
from fitplan.errors import ConfigError
from fitplan.search_spaces import create_space
from fitplan.search_spaces.compression import apply_compression
from fitplan.search_spaces.training import (
    TrainSettings,
    evaluate,
    evaluate_metrics,
    finetune,
    latest_checkpoint,
    load_weights,
    recalibrate_bn,
    sandwich_configs,
    save_weights,
    train_supernet,
)



@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _fresh(seed=0):
    torch.manual_seed(seed)
    space = ToySpace()
    return space, space.build_supernet()


def _ce(sn, space, cfg, x, y):
    sn.set_active(cfg)
    sn.train()  # batch statistics: independent of the (mixed) running stats
    with torch.no_grad():
        from fitplan.data import resize_for_shape

        return float(F.cross_entropy(sn(resize_for_shape(x, space.input_shape(cfg))), y))


def test_sandwich_training_reduces_loss(digits):
    space, sn = _fresh()
    x, y = digits.x("train")[:256], digits.y("train")[:256]
    before = {k: _ce(sn, space, c, x, y) for k, c in (("l", space.largest()), ("s", space.smallest()))}
    res = train_supernet(sn, digits.loader("train", 64), epochs=2, lr=3e-2, optimizer="adamw", kd_alpha=0.5,
                         device="cpu")
    after = {k: _ce(sn, space, c, x, y) for k, c in (("l", space.largest()), ("s", space.smallest()))}
    assert res.steps == 2 * 20
    assert after["l"] < before["l"] - 0.3 and after["s"] < before["s"] - 0.1, (before, after)
    cal = calibration_batches(digits, 2, 128)
    acc = evaluate(sn, space.largest(), digits.loader("val", 256), cal)
    assert acc > 0.3  # 10 classes; chance is 0.1


def test_sandwich_configs_deterministic():
    space = ToySpace()
    a, b = sandwich_configs(space, 5, 0, 2), sandwich_configs(space, 5, 0, 2)
    assert a == b and a[0] == space.largest() and a[1] == space.smallest() and len(a) == 4
    assert sandwich_configs(space, 6, 0, 2) != a or sandwich_configs(space, 7, 0, 2) != a


def test_sandwich_configs_share_one_resolution_per_step():
    space = create_space("ofa_mbv3", width_mult=0.25, num_classes=10, in_chans=1, resolutions=[16, 20, 24])
    steps = [sandwich_configs(space, k, 0, 2, step_resolution=True) for k in range(30)]
    for cfgs in steps:
        assert len({c["r"] for c in cfgs}) == 1
        assert {k: v for k, v in cfgs[0].items() if k != "r"} == {k: v for k, v in space.largest().items() if k != "r"}
        assert {k: v for k, v in cfgs[1].items() if k != "r"} == {k: v for k, v in space.smallest().items() if k != "r"}
    assert {cfgs[0]["r"] for cfgs in steps} == {16, 20, 24}  # the largest subnet sees every resolution
    fixed = sandwich_configs(space, 3, 0, 2)
    assert fixed[0] == space.largest() and fixed[1] == space.smallest()
    with pytest.raises(ConfigError, match="step_resolution"):
        TrainSettings(step_resolution="yes").validate()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_bit_exact(digits, tmp_path, optimizer):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(digits.x("train")[:320], digits.y("train")[:320]), batch_size=32)
    kw = dict(epochs=2, lr=0.05 if optimizer == "sgd" else 2e-3, optimizer=optimizer, device="cpu", n_random=1)
    _, ref = _fresh()
    train_supernet(ref, loader, **kw)

    _, sn = _fresh()
    part = train_supernet(sn, loader, checkpoint_dir=tmp_path, max_steps=7, checkpoint_every=7, **kw)
    assert part.steps == 7 and latest_checkpoint(tmp_path).name == "step_00000007"
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["format_version"] == 1 and state["epoch"] == 0 and state["batch_in_epoch"] == 7

    _, sn2 = _fresh(seed=123)  # different init: everything must come from the checkpoint
    torch.manual_seed(999)
    res = train_supernet(sn2, loader, checkpoint_dir=tmp_path, **kw)
    assert res.resumed_from == 7 and res.steps == 20
    sa, sb = ref.state_dict(), sn2.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_recalibrate_bn_changes_running_stats(digits):
    space, sn = _fresh()
    train_supernet(sn, digits.loader("train", 128), epochs=1, lr=1e-3, optimizer="adamw", device="cpu",
                   max_steps=3)
    bn = sn.bns[0]
    cfg = space.smallest()
    before = bn.running_mean.clone()
    cal = calibration_batches(digits, 3, 64)
    assert recalibrate_bn(sn, cfg, cal) == 3
    w = cfg["w"][0]
    assert not torch.allclose(bn.running_mean[:w], before[:w])
    assert int(bn.num_batches_tracked) == 3 and not sn.training
    # cumulative average: equals the mean of the per-batch means of the active channels
    from fitplan.data import resize_for_shape

    feats = []
    sn.eval()
    with torch.no_grad():
        for x in cal:
            h = sn.stem_bn(sn.stem(resize_for_shape(x, space.input_shape(cfg))))
            h = sn.convs[0](torch.relu(h))
            feats.append(h.mean(dim=(0, 2, 3)))
    assert torch.allclose(bn.running_mean[:w], torch.stack(feats).mean(0), atol=1e-3)
    # the extracted subnet inherits the recalibrated statistics and computes the same outputs
    sub = sn.extract(cfg).eval()
    x = resize_for_shape(cal[0][:4], space.input_shape(cfg))
    with torch.no_grad():
        assert torch.allclose(sub(x), sn(x), atol=1e-4)
    with pytest.raises(ConfigError):
        recalibrate_bn(sn, cfg, [])


def test_finetune_compressed_subnet_with_kd(digits, tmp_path):
    space, sn = _fresh()
    train_supernet(sn, digits.loader("train", 64), epochs=1, lr=3e-3, optimizer="adamw", device="cpu")
    cal = calibration_batches(digits, 2, 128)
    cfg = space.validate({**space.smallest(), "bits": [8] * 6, "sparsity": [0.5] * 6})
    recalibrate_bn(sn, cfg, cal)
    from fitplan.data import resize_for_shape

    shape = space.input_shape(cfg)
    student = apply_compression(sn.extract(cfg), cfg, [resize_for_shape(c, shape) for c in cal])
    recalibrate_bn(sn, space.largest(), cal)
    val = digits.loader("val", 256)
    acc0 = evaluate(student, None, val, input_shape=shape)
    res = finetune(student, sn, digits.loader("train", 64), epochs=1, checkpoint_dir=tmp_path, lr=2e-3,
                   device="cpu", input_shape=shape)
    acc1 = evaluate(student, None, val, input_shape=shape)
    assert res.steps == 20 and acc1 >= acc0 - 0.02
    assert latest_checkpoint(tmp_path) is not None
    mask = student.s0b0[0].parametrizations.weight[0].mask
    assert torch.all(student.s0b0[0].weight[mask == 0] == 0)  # masks stayed fixed
    # weights round-trip through safetensors + JSON
    save_weights(student, tmp_path / "w.safetensors", {"config": cfg})
    other = apply_compression(sn.extract(cfg), cfg)
    meta = load_weights(other, tmp_path / "w.safetensors")
    assert meta["config"] == cfg
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(other.eval()(x), student.eval()(x))


def test_bad_settings():
    space, sn = _fresh()
    with pytest.raises(ConfigError, match="optimizer"):
        train_supernet(sn, None, optimizer="lion")
    with pytest.raises(ConfigError, match="epoch"):
        train_supernet(sn, None, epoch=3)


def test_finetune_resume_is_bit_exact(digits, tmp_path):
    """QAT fine-tuning (masks, EMA activation ranges, AdamW state) resumes to the same weights."""
    from torch.utils.data import DataLoader, TensorDataset

    space, sn = _fresh()
    sn.eval()
    cfg = space.validate({**space.smallest(), "r": 16, "bits": [8, 4, 8, 8, 8, 8], "sparsity": [0.5] * 6})
    loader = DataLoader(TensorDataset(digits.x("train")[:192], digits.y("train")[:192]), batch_size=32)
    shape = space.input_shape(cfg)

    def student():
        torch.manual_seed(0)
        return apply_compression(sn.extract(cfg), cfg)  # ranges from the first training batch (EMA)

    kw = dict(device="cpu", input_shape=shape, teacher_input_shape=shape, lr=1e-3)
    a = student()
    finetune(a, sn, loader, epochs=2, **kw)
    b = student()
    finetune(b, sn, loader, epochs=2, checkpoint_dir=tmp_path, max_steps=8, checkpoint_every=4, **kw)
    c = student()
    res = finetune(c, sn, loader, epochs=2, checkpoint_dir=tmp_path, **kw)
    assert res.resumed_from == 8 and res.steps == 12
    sa, sc = a.state_dict(), c.state_dict()
    assert any("act_fq" in k for k in sa) and sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k


def test_evaluate_metrics_per_sample_cross_entropy_matches_the_mean(digits):
    """``per_sample``: the cross-entropy of every image in loader order (paired comparisons of two models)."""
    space, sn = _fresh()
    cfg = space.largest()
    loader = digits.loader("val", 64)
    r = evaluate_metrics(sn, cfg, loader, per_sample=True)
    per = r["nll_per_sample"]
    assert per.shape == (r["n"],) and (per >= 0).all()
    assert per.mean() == pytest.approx(r["nll"], rel=1e-9)
    sn.set_active(cfg)
    x, y = next(iter(loader))
    with torch.no_grad():
        from fitplan.data import resize_for_shape

        first = F.cross_entropy(sn(resize_for_shape(x, space.input_shape(cfg))), y, reduction="none")
    assert per[:len(y)] == pytest.approx(first.double().numpy(), rel=1e-5, abs=1e-6)
    ok = r["correct_per_sample"]
    assert ok.shape == per.shape and ok.mean() == pytest.approx(r["accuracy"])
    assert "nll_per_sample" not in evaluate_metrics(sn, cfg, loader)
