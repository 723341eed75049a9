"""Datasets: real MNIST-5k / digits, deterministic stratified splits, ImageFolder, resizing, calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fitplan.data import calibration_batches, dataset_names, load_dataset, resize_to
from fitplan.errors import ConfigError, UnknownNameError


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def test_mnist5k_is_real_and_split(mnist):
    info = mnist.info
    assert info.in_chans == 1 and info.num_classes == 10 and info.image_size == (28, 28)
    assert sum(info.sizes.values()) == 5000
    assert info.sizes == {"train": 3500, "val": 500, "test": 1000}
    x, y = mnist.x("train"), mnist.y("train")
    assert x.shape == (3500, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3  # normalised on train
    # real digits: the classic MNIST mean / std of raw pixels, and balanced classes in every split
    assert info.mean[0] == pytest.approx(0.13, abs=0.01) and info.std[0] == pytest.approx(0.308, abs=0.01)
    for split in ("train", "val", "test"):
        counts = np.bincount(mnist.y(split).numpy(), minlength=10)
        assert counts.min() == counts.max()
    # no image appears in two splits
    flat = {s: {hash(r.numpy().tobytes()) for r in mnist.x(s)} for s in ("train", "val", "test")}
    assert not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"])


def test_splits_deterministic(mnist):
    again = load_dataset("mnist5k")
    for s in ("train", "val", "test"):
        assert torch.equal(again.x(s), mnist.x(s)) and torch.equal(again.y(s), mnist.y(s))
    other = load_dataset("mnist5k", seed=1)
    assert not torch.equal(other.y("test"), mnist.y("test")) or not torch.equal(other.x("test"), mnist.x("test"))
    b1 = next(iter(mnist.loader("train", 32, seed=3)))
    b2 = next(iter(mnist.loader("train", 32, seed=3)))
    assert torch.equal(b1[0], b2[0]) and b1[0].shape == (32, 1, 28, 28)
    v = next(iter(mnist.loader("val", 16)))  # no shuffling for evaluation splits
    assert torch.equal(v[0], mnist.x("val")[:16])


def test_mnist5k_rot_is_the_same_digits_rotated(mnist):
    """mnist5k-rot: the mnist5k images and labels, each rotated by its own angle, the same on every load."""
    import fitplan.data as data

    x0, y0 = data.DATASETS.get("mnist5k")()
    x, y = data.DATASETS.get("mnist5k-rot")()
    assert x.shape == x0.shape and x.dtype == np.float32 and np.array_equal(y, y0)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x, data.DATASETS.get("mnist5k-rot")()[0])  # fixed generation seed
    # rotation about the centre keeps the ink (up to bilinear blur and corners cut off) but moves it
    ink0, ink = x0.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3))
    assert np.median(ink / ink0) == pytest.approx(1.0, abs=0.1)
    moved = np.abs(x - x0).sum(axis=(1, 2, 3)) / ink0
    assert np.median(moved) > 0.5
    # angles cover the circle: the centre of mass of the ink turns around the image centre
    c = np.arange(28) - 13.5

    def com(im: np.ndarray) -> np.ndarray:  # angle of each image's ink centre of mass about the image centre
        return np.arctan2((im.sum(axis=(1, 3)) * c).sum(1), (im.sum(axis=(1, 2)) * c).sum(1))

    turn = np.angle(np.exp(1j * (com(x) - com(x0))))
    assert np.histogram(turn, bins=4, range=(-np.pi, np.pi))[0].min() > 0.15 * len(x)
    splits = data.load_dataset("mnist5k-rot")
    assert splits.info.sizes == mnist.info.sizes and torch.equal(splits.y("test"), mnist.y("test"))


def test_digits():
    d = load_dataset("digits", val_fraction=0.2, test_fraction=0.2)
    assert d.info.image_size == (8, 8) and d.info.num_classes == 10
    assert sum(d.info.sizes.values()) == 1797


def test_unknown_and_bad_args():
    with pytest.raises(UnknownNameError, match="mnist5k"):
        load_dataset("mnist")
    assert {"mnist5k", "mnist5k-rot", "digits"} <= set(dataset_names())
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ConfigError, match="split"):
        load_dataset("digits").x("holdout")


def test_resize_and_calibration(mnist):
    x = mnist.x("val")[:4]
    assert resize_to(x, 28) is x
    assert resize_to(x, 24).shape == (4, 1, 24, 24) and resize_to(x, (20, 32)).shape == (4, 1, 20, 32)
    cal = calibration_batches(mnist, n_batches=3, batch_size=50)
    assert len(cal) == 3 and all(c.shape == (50, 1, 28, 28) for c in cal)
    assert torch.equal(cal[0], calibration_batches(mnist, 3, 50)[0])
    cal2 = calibration_batches(mnist.loader("val", 10), n_batches=2)
    assert len(cal2) == 2 and cal2[0].shape == (10, 1, 28, 28)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    d = load_dataset(tmp_path, image_size=16, val_fraction=0.2, test_fraction=0.2)
    assert d.info.in_chans == 3 and d.info.num_classes == 2 and d.info.image_size == (16, 16)
    assert d.info.class_names == ("cat", "dog") and sum(d.info.sizes.values()) == 20
    assert d.x("train").shape[1:] == (3, 16, 16)
