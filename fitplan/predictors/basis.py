"""Measured-basis few-shot model: the new device as a Bayesian model average of rescaled source devices.

Why: the shipped source devices measured the *same* 5000 archs (the pool of ``archs.json``). Similar
devices share non-additive structure (kernel selection, cache effects, batch-1 launch overheads) that an
additive layer-wise table cannot express; the measured latencies of a similar device carry it. So, for each
source device ``k`` and arch ``a``, the basis column is ``s_k(a) = log ms_k(a)`` -- the *measured* value when
``a`` is in the pool (exact match on its feature vector), else ``log φ(a)·T_k`` with ``T_k`` the source
device's additive table fitted on its 5000 archs (the fallback; less accurate than measured).

Few-shot fit from ``N`` samples ``(a_i, y_i)``: each source is a one-device model ``log y = α_k + β_k s_k``
(``β_k ~ N(1, σ_β²)``, ``α_k`` free); models are weighted by their leave-one-out predictive likelihood on the
samples (``w_k ∝ exp(-Σ r_loo² / 2σ²)``: Bayesian model averaging with a Gaussian log-noise ``σ``). The
additive posterior itself competes as model ``0`` with its own leave-one-out residuals. The final prediction
blends this average with the additive posterior in log space::

    log ŷ = ρ · (Σ_k w_k (α_k + β_k s_k) + w_0 · log(φ·c_posterior)) + (1 - ρ) · log(φ·c_posterior)

i.e. the sources get ``ρ·(1 - w_0)`` (:func:`blend_share`). Why model 0: when no source device behaves like the
new one (a device class none of them belongs to), the best rescaled source still took a fixed share ``ρ`` and
pulled the prediction toward the wrong class (fbnet leave-one-class-out, noise-free targets, N=10: 0.950 for
the additive posterior alone, 0.937 blended); now the samples say so and its share drops (0.950), while for
devices with a similar source nothing changes (leave-one-device-out within 0.001).

``σ, σ_β, ρ`` are per-space constants chosen by leave-one-device-out on HELP's meta-train devices only
(``benchmarks/predictor_fewshot.py --tune-basis``). Few effective parameters: with 10 samples it mostly
answers "which source device behaves like this one", which the samples can identify.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class BasisHyper:
    """``sigma``: log-noise of the BMA likelihood; ``sigma_b``: prior sd of the per-source exponent around 1
    (0 = pure rescaling); ``rho``: weight of the source average in the log-space blend (0 = additive only)."""

    sigma: float = 0.02
    sigma_b: float = 0.3
    rho: float = 0.15

    def to_dict(self) -> dict[str, float]:
        return {"sigma": self.sigma, "sigma_b": self.sigma_b, "rho": self.rho}


def _affine(s: np.ndarray, t: np.ndarray, sigma_b: float, w: np.ndarray) -> tuple[float, float]:
    """``t ≈ a + b s`` with ``b ~ N(1, sigma_b²)`` (ridge toward 1 in units of the sample spread), samples
    weighted by ``w``."""
    sm, tm = float(w @ s / w.sum()), float(w @ t / w.sum())
    sc, tc = s - sm, t - tm
    b = 1.0 if sigma_b <= 0 else float((sc @ (w * tc) + 1.0 / sigma_b ** 2) / (sc @ (w * sc) + 1.0 / sigma_b ** 2))
    return tm - b * sm, b


def fit_bma(s: np.ndarray, t: np.ndarray, hyper: BasisHyper, weights: np.ndarray | None = None,
            base_resid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, intercepts and exponents of the per-source models from sample columns ``s [N, K]`` (log ms of
    the sources on the sample archs) and targets ``t [N]`` (log ms of the new device). ``weights`` (``[N]``,
    default 1) scale each sample's part in the fits and the likelihood: the additive posterior's outlier
    weights (:meth:`~fitplan.predictors.meta.MetaPrior.posterior`), so that one disturbed run does not
    pick the source devices. ``base_resid``: the additive posterior's leave-one-out log residuals on the same
    samples; it then competes as model 0 and the returned source weights sum to ``1 - w_0``."""
    n, k = s.shape
    w_s = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    ll = np.zeros(k)
    a = np.zeros(k)
    b = np.zeros(k)
    for j in range(k):
        res = np.empty(n)
        for i in range(n):
            m = np.arange(n) != i
            ai, bi = _affine(s[m, j], t[m], hyper.sigma_b, w_s[m])
            res[i] = t[i] - ai - bi * s[i, j]
        ll[j] = -0.5 * float(w_s @ res ** 2) / hyper.sigma ** 2
        a[j], b[j] = _affine(s[:, j], t, hyper.sigma_b, w_s)
    if base_resid is not None:
        ll = np.append(ll, -0.5 * float(w_s @ np.asarray(base_resid) ** 2) / hyper.sigma ** 2)
    w = np.exp(ll - ll.max())
    return (w / w.sum())[:k], a, b


def blend_share(w: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """Source weights of :func:`fit_bma` renormalised to sum 1, and the log-space blend weight ``ρ·Σw`` they
    get: the additive model's own average weight ``w_0`` moves to its side of the blend (module docstring)."""
    total = float(np.sum(w))
    return (w / total if total > 0 else w), rho * total


def blend_log(base_ms: np.ndarray, bma_log: np.ndarray, rho: float) -> np.ndarray:
    """Milliseconds of the log-space blend ``rho · bma_log + (1 - rho) · log(base_ms)`` of the source average
    (:func:`bma_log_predict`) and the additive prediction (module docstring)."""
    return np.exp(rho * bma_log + (1.0 - rho) * np.log(np.maximum(base_ms, 1e-6)))


def bma_log_predict(s: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_k w_k (a_k + b_k s_k)`` for basis columns ``s [n, K]``."""
    return (a[None, :] + b[None, :] * s) @ w


# ------------------------------------------------------------------------------------------ shipped columns
def _key(row: np.ndarray) -> bytes:
    return np.round(np.asarray(row, dtype=np.float64), 9).tobytes()


@lru_cache(maxsize=None)
def _pool(space: str) -> tuple[dict[bytes, int], np.ndarray]:
    """Pool lookup (feature-vector key -> row of unique pool archs) and the log-ms table ``[n_unique, n_dev]``
    (archs of identical features -- same active layers -- averaged in log space)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset
    from fitplan.predictors.features import dataset_features

    ds = load_latency_dataset(space)
    x = dataset_features(space)
    index: dict[bytes, int] = {}
    rows: list[list[int]] = []
    for i in range(len(x)):
        kk = _key(x[i])
        if kk not in index:
            index[kk] = len(rows)
            rows.append([])
        rows[index[kk]].append(i)
    logl = np.log(ds.latency_ms)
    table = np.stack([logl[r].mean(axis=0) for r in rows])
    return index, table


@lru_cache(maxsize=None)
def _fallback_tables(space: str, devices: tuple[str, ...]) -> np.ndarray:
    """Additive tables ``[F, K]`` (ms) of source devices, fitted on their measured pool archs."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset
    from fitplan.predictors.features import dataset_features
    from fitplan.predictors.meta import fit_device_table

    ds = load_latency_dataset(space)
    x = dataset_features(space)
    return np.stack([fit_device_table(x, ds.device(d)) for d in devices], axis=1)


def available_devices(space: str, devices: Sequence[str]) -> bool:
    """Whether every device has measured columns in the shipped dataset of ``space``."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    try:
        names = load_latency_dataset(space).devices
    except Exception:  # noqa: BLE001 - no shipped data: the basis model is unavailable
        return False
    return len(devices) > 0 and all(d in names for d in devices)


def source_columns(space: str, devices: Sequence[str], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Basis columns ``[n, K]`` (log ms) of feature rows ``x`` for source ``devices``, and a boolean mask of
    the rows found in the measured pool (the others use the source devices' additive tables)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    devices = tuple(devices)
    index, table = _pool(space)
    names = load_latency_dataset(space).devices
    cols = [names.index(d) for d in devices]
    rows = np.array([index.get(_key(r), -1) for r in x], dtype=np.int64)
    found = rows >= 0
    out = np.empty((len(x), len(devices)))
    if found.any():
        out[found] = table[rows[found]][:, cols]
    if (~found).any():
        pred = x[~found] @ _fallback_tables(space, devices)
        out[~found] = np.log(np.maximum(pred, 1e-6))
    return out, found


__all__ = ["BasisHyper", "available_devices", "blend_log", "blend_share", "bma_log_predict", "fit_bma", "source_columns"]
