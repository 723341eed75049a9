"""Few-shot evaluation protocol for latency predictors: hold a device out, adapt with N samples, score.

Why a module (not only a benchmark script): the benchmark, the hyper-parameter tuning and the tests use the
same protocol, metrics and baselines, so the numbers they print mean the same thing.

Protocols (which source devices the meta-prior may use when device ``D`` is held out):

``lodo``  leave-one-device-out: every other device (siblings with another batch size stay in).
``lofo``  leave-one-family-out: also drop devices of the same hardware (``titanx_1/32/64`` are one family).
``loco``  leave-one-class-out: also drop the whole class (GPU / CPU / mobile); the closest proxy for a device
          unlike every source device (HELP's raspi4, Eyeriss, FPGA). Only meaningful where classes differ.

Targets: ``measured`` scores against the recorded latencies (includes the device's measurement noise, e.g.
phones logged in whole milliseconds); ``clean`` scores against the device's own full-data additive fit, a
noise-free proxy for devices whose latencies are per-layer sums (HW-NAS-Bench's FBNet edge devices are).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

from fitplan.predictors.features import dataset_features, space_features
from fitplan.predictors.meta import HyperParams, MetaPrior, build_prior, fit_device_table

_GPU = ("1080ti", "titanx", "2080ti", "titan_rtx", "titan_xp", "v100")
_CPU = ("gold", "silver")


def device_family(name: str) -> str:
    """Hardware family: the device name without its batch-size suffix (``titanx_32`` -> ``titanx``)."""
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() and head and any(name.startswith(g) for g in _GPU) else name


def device_class(name: str) -> str:
    """Coarse class: ``gpu``, ``cpu`` or ``mobile``."""
    if any(name.startswith(g) for g in _GPU):
        return "gpu"
    if any(name.startswith(c) for c in _CPU):
        return "cpu"
    return "mobile"


def source_devices(devices: Sequence[str], held_out: str, protocol: str) -> list[str]:
    """Source devices allowed for ``held_out`` under ``protocol`` (``lodo``/``lofo``/``loco``)."""
    if protocol == "lodo":
        return [d for d in devices if d != held_out]
    if protocol == "lofo":
        return [d for d in devices if device_family(d) != device_family(held_out)]
    if protocol == "loco":
        return [d for d in devices if device_class(d) != device_class(held_out)]
    raise ValueError(f"unknown protocol {protocol!r}")


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman, Kendall tau, median absolute percentage error (%), share (%) within ±10%."""
    ape = np.abs(pred - y) / y
    return {"spearman": float(spearmanr(pred, y)[0]), "kendall": float(kendalltau(pred, y)[0]),
            "mape": float(np.median(ape) * 100), "within10": float(np.mean(ape <= 0.10) * 100)}


# ------------------------------------------------------------------------------------------ methods
@dataclass
class Context:
    """What a method may use when a device is held out: features of all archs, the sample indices and their
    latencies, the prior built from the allowed source devices, and those devices' measured columns."""

    x: np.ndarray
    idx: np.ndarray
    y_s: np.ndarray
    prior: MetaPrior
    source_latency: np.ndarray  # [n_archs, K] measured ms of the allowed source devices
    macs: np.ndarray  # [n_archs] analytic MACs


def method_ours(ctx: Context) -> np.ndarray:
    """Additive model only (the v1 shipped model): meta-learned Gaussian prior over cost tables +
    closed-form few-shot posterior."""
    return ctx.x @ ctx.prior.posterior_table(ctx.x[ctx.idx], ctx.y_s)


_COLS: dict = {}


def method_ours_basis(ctx: Context, hyper=None) -> np.ndarray:
    """Additive posterior blended in log space with the Bayesian model average of rescaled source devices
    (:mod:`fitplan.predictors.basis`; the shipped adapt path: pool archs use the sources' measured latencies).
    ``hyper`` (a :class:`~fitplan.predictors.basis.BasisHyper`) defaults to the shipped per-space constants."""
    from fitplan.predictors.basis import blend_log, blend_share, bma_log_predict, fit_bma, source_columns
    from fitplan.predictors.latency import DEFAULT_BASIS

    space, devices = ctx.prior.space, tuple(ctx.prior.devices)
    h = hyper or DEFAULT_BASIS[space]
    post = ctx.prior.posterior(ctx.x[ctx.idx], ctx.y_s)
    base = ctx.x @ post.table
    if h.rho <= 0:
        return base
    key = (space, devices, ctx.x.shape)
    if key not in _COLS:
        _COLS.clear()
        _COLS[key] = source_columns(space, devices, ctx.x)[0]
    s = _COLS[key]
    w, a, b = fit_bma(s[ctx.idx], np.log(ctx.y_s), h, post.weights, post.loo_log_resid)
    w, rho = blend_share(w, h.rho)
    return blend_log(base, bma_log_predict(s, w, a, b), rho)


def method_flops(ctx: Context) -> np.ndarray:
    """Baseline: latency = a + b·MACs, least squares on the N samples."""
    a = np.c_[np.ones(len(ctx.idx)), ctx.macs[ctx.idx]]
    w, *_ = np.linalg.lstsq(a, ctx.y_s, rcond=None)
    return w[0] + w[1] * ctx.macs


def method_nearest(ctx: Context) -> np.ndarray:
    """Baseline: the source device whose measured latencies on the N sample archs correlate best, scaled by
    the least-squares ratio (uses that device's *measured* values on every arch)."""
    src = ctx.source_latency[ctx.idx]
    corr = [np.corrcoef(src[:, k], ctx.y_s)[0, 1] if np.std(src[:, k]) > 0 else -1 for k in range(src.shape[1])]
    k = int(np.nanargmax(corr))
    scale = float(src[:, k] @ ctx.y_s / (src[:, k] @ src[:, k]))
    return scale * ctx.source_latency[:, k]


def method_ridge(ctx: Context, alpha: float = 1.0) -> np.ndarray:
    """Baseline: plain ridge (alpha=1, intercept unpenalised) on the layer-choice features, N samples only."""
    xs = ctx.x[ctx.idx][:, :-1]
    mu_x, mu_y = xs.mean(0), ctx.y_s.mean()
    xc = xs - mu_x
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xc.shape[1]), xc.T @ (ctx.y_s - mu_y))
    return (ctx.x[:, :-1] - mu_x) @ w + mu_y


@lru_cache(maxsize=1)
def _analytic_design(space: str) -> tuple[list[dict], np.ndarray]:
    """Configs and design rows of the analytic cost model for every arch of the space's shipped dataset
    (uncompressed: the ``fp32`` class), built once per space (the last one kept)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset
    from fitplan.predictors.analytic import BASE_CLASS, UnitFeaturizer
    from fitplan.search_spaces import create_space

    ds = load_latency_dataset(space)
    sp = create_space(space)
    conv = getattr(sp, "from_arch", None)
    cfgs = [sp.validate(conv(ds.arch(i)) if callable(conv) else ds.arch(i)) for i in range(len(ds.latency_ms))]
    return cfgs, UnitFeaturizer(sp).design(cfgs, [BASE_CLASS])[0]


def _analytic_fit_predict(space: str, idx: np.ndarray, y_s: np.ndarray, rows: np.ndarray,
                          prior: object = None) -> np.ndarray:
    from fitplan.predictors.analytic import BASE_CLASS, CostModelPredictor

    cfgs, x = _analytic_design(space)
    m = CostModelPredictor.fit(space, [{"config": cfgs[i], "latency_ms": float(v)} for i, v in zip(idx, y_s)],
                               prior=prior)
    w = np.concatenate([[m.intercept_ms], m.coef[BASE_CLASS], m.boundary_coef])
    return x[rows] @ w


def method_analytic(ctx: Context) -> np.ndarray:
    """The analytic per-unit cost model (:class:`~fitplan.predictors.analytic.CostModelPredictor`) on the N
    samples alone: no source device."""
    return _analytic_fit_predict(ctx.prior.space, ctx.idx, ctx.y_s, np.arange(len(ctx.x)))


def method_auto(ctx: Context) -> np.ndarray:
    """What :func:`~fitplan.predictors.latency.calibrate_predictor` does by default, on the same samples: the
    analytic model with the shipped local source prior (:func:`~fitplan.predictors.analytic.source_prior`,
    where the space has one) unless the plain analytic fit cross-validates better by more than one standard
    error; then (the samples are uncompressed) the meta-learned model (``ours+basis``) unless that analytic
    model or the log-space average of the two has a leave-one-out (at most 10 folds) relative error lower by
    more than one standard error (:func:`~fitplan.predictors.latency.select_model`); with fewer than
    :data:`~fitplan.predictors.latency.MIN_SELECT_SAMPLES` samples the meta model."""
    from fitplan.predictors.analytic import loo_relative_errors, prefer_prior, source_prior
    from fitplan.predictors.ensemble import log_average
    from fitplan.predictors.latency import MIN_SELECT_SAMPLES, select_model

    if len(ctx.idx) < MIN_SELECT_SAMPLES:
        return method_ours_basis(ctx)
    space = ctx.prior.space
    src = source_prior(space)
    priors = {"analytic": None} | ({"analytic+prior": src} if src is not None else {})
    folds: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def fit_predict(tr: np.ndarray, te: np.ndarray, k: str) -> np.ndarray:
        key = (k, tuple(tr))
        if key not in folds:
            if k == "meta":
                sub = Context(ctx.x, ctx.idx[tr], ctx.y_s[tr], ctx.prior, ctx.source_latency, ctx.macs)
                folds[key] = method_ours_basis(sub)[ctx.idx[te]]
            elif k == "ensemble":
                folds[key] = log_average([fit_predict(tr, te, "meta"), fit_predict(tr, te, best)])
            else:
                folds[key] = _analytic_fit_predict(space, ctx.idx[tr], ctx.y_s[tr], ctx.idx[te], prior=priors[k])
        return folds[key]

    def errors(k: str) -> np.ndarray:
        return loo_relative_errors(lambda tr, te: fit_predict(tr, te, k), ctx.idx, ctx.y_s, folds=10)

    err = {k: errors(k) for k in ("meta", *priors)}
    best = "analytic+prior" if src is not None and prefer_prior(err["analytic"], err["analytic+prior"]) else "analytic"
    err = {"meta": err["meta"], best: err[best], "ensemble": errors("ensemble")}
    pick = select_model(err, default="meta")
    if pick == "meta":
        return method_ours_basis(ctx)
    analytic = _analytic_fit_predict(space, ctx.idx, ctx.y_s, np.arange(len(ctx.x)), prior=priors[best])
    return analytic if pick == best else log_average([method_ours_basis(ctx), analytic])


METHODS: dict[str, Callable[[Context], np.ndarray]] = {
    "ours+basis": method_ours_basis, "ours": method_ours, "flops": method_flops, "nearest": method_nearest,
    "ridge": method_ridge, "analytic": method_analytic, "auto": method_auto}


# ------------------------------------------------------------------------------------------ protocol
def sample_sets(n_archs: int, n: int, draws: int, seed: int = 0) -> list[np.ndarray]:
    """``draws`` random sample-index sets of size ``n`` (seeded, reproducible)."""
    return [np.random.default_rng(seed + r).choice(n_archs, n, replace=False) for r in range(draws)]


def evaluate(space: str, *, n_samples: Sequence[int] = (10,), draws: int = 5, protocol: str = "lodo",
             target: str = "measured", methods: Sequence[str] = ("ours",), hyper: HyperParams | None = None,
             devices: Sequence[str] | None = None, pool: Sequence[str] | None = None,
             reference: bool = False, seed: int = 0, basis=None, corrupt: float = 1.0) -> list[dict]:
    """Run the few-shot protocol; one row per (device, N, method, sample set kind) with mean metrics.

    Args:
        devices: held-out devices to score (default: all of the space).
        pool: devices that may serve as sources (default: all); tuning passes the meta-train devices only.
        reference: also score HELP's 10 fixed reference archs as the sample set (``N=10``).
        basis: :class:`~fitplan.predictors.basis.BasisHyper` for ``ours+basis`` (default: shipped constants).
        corrupt: the first sample of every set is passed to the methods multiplied by this factor (a run
            disturbed by another process); scoring uses the measured values as they are.
    """
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    from fitplan.predictors.latency import DEFAULT_HYPER

    hyper = hyper or DEFAULT_HYPER[space]
    ds = load_latency_dataset(space)
    x = dataset_features(space)
    sf = space_features(space)
    names = list(ds.devices)
    lat = ds.latency_ms
    if target == "clean":
        lat = np.stack([x @ fit_device_table(x, lat[:, j]) for j in range(lat.shape[1])], axis=1)
    elif target != "measured":
        raise ValueError(f"unknown target {target!r}")
    macs = x @ sf.analytic[0]
    pool = list(pool or names)
    rows = []
    for dev in devices or names:
        j = names.index(dev)
        src = [d for d in source_devices(pool, dev, protocol)]
        cols = [names.index(d) for d in src]
        prior = build_prior(space, x, lat[:, cols], src, sf.analytic, sf.groups, hyper, tiled=sf.tiled)
        y = lat[:, j]
        sets: list[tuple[str, int, list[np.ndarray]]] = [("random", n, sample_sets(len(y), n, draws, seed))
                                                        for n in n_samples]
        if reference:
            sets.append(("reference", len(ds.reference), [np.array(ds.reference)]))
        for kind, n, idx_sets in sets:
            for m in methods:
                acc: dict[str, list[float]] = {}
                for idx in idx_sets:
                    mask = np.ones(len(y), dtype=bool)
                    mask[idx] = False
                    y_s = y[idx].copy()
                    y_s[0] *= corrupt
                    ctx = Context(x, idx, y_s, prior, lat[:, cols], macs)
                    pred = method_ours_basis(ctx, basis) if m == "ours+basis" else METHODS[m](ctx)
                    for k, v in metrics(pred[mask], y[mask]).items():
                        acc.setdefault(k, []).append(v)
                rows.append({"space": space, "device": dev, "n": n, "samples": kind, "method": m,
                             "protocol": protocol, "target": target, "sources": len(src), "corrupt": corrupt,
                             **{k: float(np.mean(v)) for k, v in acc.items()},
                             "spearman_min_draw": float(np.min(acc["spearman"]))})
    return rows


def noise_ceiling(space: str, train_frac: float = 0.8) -> dict[str, float]:
    """Spearman of each device's own additive table fitted on ``train_frac`` of its archs, scored on the rest:
    a reference for the device's measurement noise (not a strict ceiling: a prior can denoise)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    ds = load_latency_dataset(space)
    x = dataset_features(space)
    n_tr = int(len(x) * train_frac)
    out = {}
    for j, dev in enumerate(ds.devices):
        y = ds.latency_ms[:, j]
        c = fit_device_table(x[:n_tr], y[:n_tr])
        out[dev] = float(spearmanr(x[n_tr:] @ c, y[n_tr:])[0])
    return out


__all__ = ["METHODS", "Context", "device_class", "device_family", "evaluate", "method_ours_basis", "metrics",
           "noise_ceiling", "sample_sets", "source_devices"]
