"""Meta-learned latency predictors with few-shot calibration to new devices.

:class:`LatencyPredictor` holds the meta-trained state of one space (a Gaussian prior over per-device
layer-wise cost tables, see :mod:`fitplan.predictors.meta`). ``adapt(samples)`` turns ``N`` measured
``(arch, ms)`` pairs of a new device into an :class:`AdaptedPredictor` in milliseconds; its state is one
cost table (a few hundred floats) plus, since format version 2, a measured-basis part (a few source-device
weights, :mod:`fitplan.predictors.basis`): the prediction is blended in log space with rescaled source
devices' latencies -- their *measured* values for archs of the shipped pool, their additive tables otherwise.
``predict`` stays a feature lookup, a hash lookup and a few vector products; ``state_dict()`` fits in a
hardware profile's JSON.

Compression: the shipped device data are all fp32. A config with ``bits`` < 32, ``sparsity`` > 0 or
``tokens`` is predicted only when the calibration samples contained such configs (then a per-effect
speed-up factor on the affected MAC share is fitted); otherwise the effect is *unknown* and ``predict``
raises :class:`~fitplan.errors.ConfigError` (``unknown="raise"``, default) or returns the fp32 prediction
with a flag (``predict_with_flags`` / ``unknown="fp32"``) — it never invents a speed-up.

Calibration (:func:`calibrate_predictor` / :func:`calibrate_profile`) chooses, per device, among this
meta-learned predictor, the analytic per-unit cost model of :mod:`fitplan.predictors.analytic` (any
space, compression priced per unit) and their log-space average (:mod:`fitplan.predictors.ensemble`) by
cross-validated error on the calibration samples themselves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.paths import package_data
from fitplan.predictors.features import (
    COMPRESSION_KEYS, FBNET_LAYERS, FBNET_OPS, OFA_BLOCKS, OFA_D, OFA_E, OFA_KS, OFA_R_RANGE, PREDICTOR_SPACES,
    fbnet_arrays_features, featurize, ofa_arrays_features, space_features, validate_arch)
from fitplan.predictors.basis import (
    BasisHyper, available_devices, blend_log, blend_share, bma_log_predict, fit_bma, source_columns)
from fitplan.predictors.ensemble import ENSEMBLE_FORMAT, EnsemblePredictor
from fitplan.predictors.meta import (CANDIDATE_NAMES, HyperParams, MetaPrior, Posterior, build_prior, fit_device_table,
                                     suspects)
from fitplan.predictors.samples import iter_samples

if TYPE_CHECKING:
    from fitplan.predictors.analytic import CostModelPredictor

PRIOR_FORMAT = "fitplan.latency_prior"
PRIOR_FORMAT_VERSION = 1
ADAPTED_FORMAT = "fitplan.adapted_latency"
ADAPTED_FORMAT_VERSION = 2  # 2: optional measured-basis part (``basis``); version-1 states (table only) load
#: bump when :mod:`fitplan.predictors.features` changes the feature layout (invalidates shipped state).
FEATURE_VERSION = 1
#: fewest fp32 calibration samples accepted (the posterior is defined for any N>=1; below 3 the scale and
#: one shape direction are all it can learn, so we refuse rather than mislead).
MIN_SAMPLES = 3
#: fewest uncompressed calibration samples with which ``auto`` lets cross-validation replace the meta model:
#: with fewer, leave-one-out folds of 4-6 samples chose worse models more often than better ones (fbnet, N=5
#: / 6 random, 5 draws, auto vs the meta model: leave-one-device-out measured 0.900 / 0.882 vs 0.906 / 0.885,
#: leave-one-class-out noise-free 0.899 / 0.898 vs 0.906 / 0.910, synthetic accelerators N=5 0.891 vs 0.925;
#: at N=8 the means are within 0.006 and the choice lifts the worst device, 0.581 -> 0.653).
MIN_SELECT_SAMPLES = 8

#: Hyper-parameters chosen by random search on HELP's meta-train devices only (leave-one-device-out and
#: leave-one-class/family-out within meta-train, measured and noise-free targets, N=10); the meta-valid
#: devices were not used. Reproduce with ``python benchmarks/predictor_fewshot.py --tune``; its final grid over
#: the analytic scales (``--tune-bound``: ``sigma_a`` and the roofline-bound tables' ``sigma_r``) moved fbnet
#: from one common scale 0.204 to 0.102 / 1.0 (objective 0.878 -> 0.898, mostly leave-one-class-out) and
#: ofa_mbv3 to 0.0347 / 0.1 (0.9136 -> 0.9143: its sources are all GPUs, a wide sigma_r costs there).
#: ``sigma_wide`` (a per-device marginal-likelihood choice of all analytic tables at that scale) is not tuned
#: on these devices, which cannot ask for it: it guards accelerators unlike every source (meta module
#: docstring, "Wide"; ``benchmarks/predictor_synthetic.py``). Nor is ``sigma_tile`` (the third choice, wide plus
#: the tiled-MAC tables; "Tiles"): 0.3 of 0.1 / 0.3 / 1 on the generated channel-tiling accelerators, which no
#: real device here is; it is never chosen on the real ones. ``unlike_log_odds`` (prior odds of those two) is 2 of
#: 1.5 / 2 / 2.5, the largest that kept every real figure within 0.001 ("Odds").
DEFAULT_HYPER: dict[str, HyperParams] = {
    "fbnet": HyperParams(gamma=2.07, sigma_a=0.102, sigma_r=1.0, sigma_b=0.108, tau=0.0237, sigma_n=0.0349,
                         sigma_wide=1.0, sigma_tile=0.3, unlike_log_odds=2.0),
    "ofa_mbv3": HyperParams(gamma=0.549, sigma_a=0.0347, sigma_r=0.1, sigma_b=0.0435, tau=0.0554,
                            sigma_n=0.0365, sigma_wide=1.0, sigma_tile=0.3, unlike_log_odds=2.0),
}

#: Measured-basis blend (:mod:`fitplan.predictors.basis`), chosen by a grid search with leave-one-device-out
#: over HELP's meta-train devices only (sources also meta-train only; measured targets, N=10, 5 draws;
#: objective mean Spearman - 0.01 * median APE%): ``benchmarks/predictor_fewshot.py --tune-basis``. Both
#: spaces pick rho=0.15; sigma/sigma_b barely matter (grid ties within 1e-4), one common setting is kept.
#: Since the additive posterior competes in the average (``fit_bma(base_resid=)``) the grid prefers sigma
#: 0.04 / rho 0.5 by +0.002 of its objective, at a cost on devices unlike every source (fbnet LOCO noise-free
#: N=5 0.906 -> 0.883): not taken (docs/DEVELOPING.md).
DEFAULT_BASIS: dict[str, BasisHyper] = {
    "fbnet": BasisHyper(sigma=0.02, sigma_b=0.3, rho=0.15),
    "ofa_mbv3": BasisHyper(sigma=0.02, sigma_b=0.3, rho=0.15),
}
#: source weights below this are dropped from an adapted state (then renormalised).
_MIN_WEIGHT = 1e-4


# ------------------------------------------------------------------------------------------ inputs
def _is_fp32(arch: Mapping[str, Any]) -> bool:
    bits = arch.get("bits")
    sp = arch.get("sparsity")
    tokens = arch.get("tokens")
    if bits is not None and any(b != 32 for b in (bits if isinstance(bits, (list, tuple)) else [bits])):
        return False
    if sp is not None and any(s != 0 for s in (sp if isinstance(sp, (list, tuple)) else [sp])):
        return False
    if tokens is not None and any(t != 1 for t in (tokens if isinstance(tokens, (list, tuple)) else [tokens])):
        return False
    return True


def _arch_key(space: str, arch: Mapping[str, Any]) -> str:
    return json.dumps({k: arch[k] for k in sorted(arch) if k != "arch_str"}, sort_keys=True)


def parse_samples(space: str, samples: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Validate calibration samples: ``[{"arch": <arch>, "latency_ms": float}, ...]`` or ``{"samples": [...]}``.

    Raises :class:`ConfigError` naming the offending field (``samples.3.latency_ms``) for a wrong arch
    format, a non-finite / non-positive latency, duplicate archs or too few samples.
    """
    archs, ys, seen = [], [], {}
    for i, _, arch, y in iter_samples(samples):
        f = f"samples.{i}"
        a = validate_arch(space, arch, f"{f}.arch")
        key = _arch_key(space, a)
        if key in seen:
            raise ConfigError(f"{f}.arch", f"duplicate of samples.{seen[key]}.arch (average repeated "
                                           "measurements into one sample)")
        seen[key] = i
        archs.append(a)
        ys.append(y)
    n32 = sum(_is_fp32(a) for a in archs)
    if n32 < MIN_SAMPLES:
        raise ConfigError("samples", f"need at least {MIN_SAMPLES} samples of uncompressed (fp32) archs, got "
                                     f"{n32} (10 or more recommended)")
    return archs, np.asarray(ys, dtype=np.float64)


def _fast_features(space: str, configs: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """Vectorised featurisation when every config is well-formed; ``None`` -> use the checked slow path."""
    try:
        if space == "fbnet":
            if not all("op_idx_list" in c for c in configs):
                return None
            op = np.array([c["op_idx_list"] for c in configs])
            if op.ndim != 2 or op.shape[1] != FBNET_LAYERS or op.dtype.kind not in "iu" \
                    or op.min() < 0 or op.max() >= len(FBNET_OPS):
                return None
            for c in configs:
                if "arch_str" in c and [FBNET_OPS[j] for j in c["op_idx_list"]] != list(c["arch_str"]):
                    return None
            return fbnet_arrays_features(op)
        ks = np.array([c["ks"] for c in configs])
        e = np.array([c["e"] for c in configs])
        d = np.array([c["d"] for c in configs])
        r = np.array([c["r"] for c in configs])
        if ks.shape != (len(configs), OFA_BLOCKS) or e.shape != ks.shape or d.shape != (len(configs), 5) \
                or r.shape != (len(configs),) or any(a.dtype.kind not in "iu" for a in (ks, e, d, r)):
            return None
        if not (np.isin(ks, OFA_KS).all() and np.isin(e, OFA_E).all() and np.isin(d, OFA_D).all()
                and (r >= OFA_R_RANGE[0]).all() and (r <= OFA_R_RANGE[1]).all()):
            return None
        if any(k not in ("ks", "e", "d", "r", *COMPRESSION_KEYS) for c in configs for k in c):
            return None
        return ofa_arrays_features(ks, e, d, r)
    except (KeyError, TypeError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _unit_macs(space: str, key: str) -> tuple[float, ...] | None:
    """Per-unit MACs of an arch from the registered space (cached; ``None`` when unavailable)."""
    try:
        from fitplan.search_spaces import create_space

        sp = create_space(space)
        cfg = sp.validate({k: v for k, v in json.loads(key).items() if k not in COMPRESSION_KEYS})
        return tuple(float(u.macs) for u in sp.unit_costs(cfg))
    except Exception:  # the space module is optional for prediction; fall back to uniform unit weights
        return None


def compression_shares(space: str, config: Mapping[str, Any], weights: bool = True) -> dict[str, float]:
    """MAC-weighted share of the network each compression effect touches, e.g. ``{"bits=8": 0.6}``.

    Effects: ``bits=<b>`` for b < 32, ``sparsity:<pattern>`` (share x sparsity ratio), ``tokens``. Units are
    weighted by their MACs from ``space.unit_costs`` when the space is registered (``weights=True``), else
    uniformly.
    """
    out: dict[str, float] = {}
    bits, sp = config.get("bits"), config.get("sparsity")
    n = len(bits) if isinstance(bits, (list, tuple)) else len(sp) if isinstance(sp, (list, tuple)) else 0
    w = None
    if n and not weights:
        w = np.full(n, 1.0 / n)
    elif n:
        macs = _unit_macs(space, _arch_key(space, {k: v for k, v in config.items() if k not in COMPRESSION_KEYS}))
        w = np.asarray(macs if macs is not None and len(macs) == n else [1.0] * n)
        w = w / max(w.sum(), 1e-12)
    if isinstance(bits, (list, tuple)):
        for b in sorted(set(bits)):
            if b != 32:
                out[f"bits={b}"] = float(sum(wi for wi, bi in zip(w, bits) if bi == b))
    elif bits is not None and bits != 32:
        out[f"bits={bits}"] = 1.0
    pattern = config.get("sparsity_pattern", "unstructured")
    if isinstance(sp, (list, tuple)):
        share = float(sum(wi * float(si) for wi, si in zip(w, sp)))
        if share > 0:
            out[f"sparsity:{pattern}"] = share
    elif sp:
        out[f"sparsity:{pattern}"] = float(sp)
    tokens = config.get("tokens")
    if tokens is not None and _is_fp32({"tokens": tokens}) is False:
        out["tokens"] = 1.0
    return out


# ------------------------------------------------------------------------------------------ adapted
@dataclass
class AdaptedPredictor:
    """A latency predictor for one device: ``lat(cfg) = φ(cfg)·table`` ms, times compression factors.

    Attributes:
        space: space name.
        table: cost table in ms over the space's features.
        device: device name (free text).
        n_samples: calibration samples used (0 = unknown).
        effects: learned speed-up per compression effect (``{"bits=8": 0.35}`` means int8 units run
            1/(1-0.35*share)... precisely: ``lat = fp32_lat * (1 - Σ factor * share)``).
        provenance: how the table was obtained (method, source devices, sample count, fit error).
    """

    space: str
    table: np.ndarray
    device: str = "unknown"
    n_samples: int = 0
    effects: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: measured-basis part, or ``None``: ``{"devices": [...], "weights": [...], "a": [...], "b": [...],
    #: "rho": float}`` -- ``log ms = rho·Σ w_k (a_k + b_k log ms_k(arch)) + (1-rho)·log(φ·table)``.
    basis: dict[str, Any] | None = None

    def _fp32_ms(self, x: np.ndarray) -> np.ndarray:
        """fp32 prediction (ms) from feature rows: additive table, blended with the measured basis."""
        ms = x @ self.table
        b = self.basis
        if not b or not b.get("rho") or not len(x):
            return ms
        s, _ = source_columns(self.space, b["devices"], x)
        lb = bma_log_predict(s, np.asarray(b["weights"]), np.asarray(b["a"]), np.asarray(b["b"]))
        return blend_log(ms, lb, float(b["rho"]))

    def features(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix of configs (vectorised fast path; the checked path names the bad field)."""
        x = _fast_features(self.space, configs) if configs else None
        return x if x is not None else featurize(self.space, configs)

    def predict_with_flags(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any]
                           ) -> tuple[np.ndarray, list[list[str]]]:
        """Predicted ms for each config, and per config the effects this device has no data on (their
        speed-up is *not* applied: the value is the fp32 prediction)."""
        if isinstance(configs, Mapping):
            configs = [configs]
        configs = list(configs)
        ms = self._fp32_ms(self.features(configs))
        flags: list[list[str]] = [[] for _ in configs]
        for i, c in enumerate(configs):
            if _is_fp32(c):
                continue
            if not self.effects:  # nothing learned: flag the effects without computing their shares
                flags[i] = sorted(compression_shares(self.space, c, weights=False))
                continue
            factor = 1.0
            for eff, share in compression_shares(self.space, c).items():
                if eff in self.effects:
                    factor -= self.effects[eff] * share
                else:
                    flags[i].append(eff)
            ms[i] *= max(factor, 0.05)
        return ms, flags

    def predict(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any], unknown: str = "raise"
                ) -> np.ndarray:
        """Predicted milliseconds, shape ``[len(configs)]`` (a single dict gives shape ``[1]``).

        ``unknown``: ``"raise"`` (default) raises :class:`ConfigError` if a config uses a compression effect
        this device has no latency data on; ``"fp32"`` returns the uncompressed prediction instead.
        """
        if unknown not in ("raise", "fp32"):
            raise ConfigError("unknown", f"invalid value {unknown!r}", ["raise", "fp32"])
        ms, flags = self.predict_with_flags(configs)
        if unknown == "raise":
            for i, f in enumerate(flags):
                if f:
                    key = f[0].split("=")[0].split(":")[0]
                    raise ConfigError(f"configs.{i}.{key}",
                                      f"no {f[0]} latency data for device {self.device!r}: the speed-up is "
                                      "unknown (calibrate with samples that use it, or pass unknown='fp32' "
                                      "for the uncompressed prediction)")
        return ms

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Predicted ms from a precomputed feature matrix (fp32 configs)."""
        return self._fp32_ms(np.asarray(x, dtype=np.float64))

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (stored under ``profile.predictors[space]``)."""
        return {"format": ADAPTED_FORMAT, "format_version": ADAPTED_FORMAT_VERSION,
                "feature_version": FEATURE_VERSION, "space": self.space, "device": self.device,
                "n_samples": self.n_samples, "table": [float(v) for v in self.table],
                "effects": dict(self.effects), "provenance": self.provenance, "basis": self.basis,
                "note": "predicted latency in ms, batch as measured by the calibration samples"}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AdaptedPredictor":
        """Rebuild from :meth:`state_dict` output; :class:`ConfigError` on a foreign or stale state."""
        if not isinstance(state, Mapping) or state.get("format") != ADAPTED_FORMAT:
            raise ConfigError("format", "not a fitplan adapted latency-predictor state", [ADAPTED_FORMAT])
        if state.get("format_version") not in (1, ADAPTED_FORMAT_VERSION):
            raise ConfigError("format_version", f"unsupported version {state.get('format_version')!r}",
                              [1, ADAPTED_FORMAT_VERSION])
        space = state.get("space")
        if space not in PREDICTOR_SPACES:
            raise ConfigError("space", f"unsupported space {space!r}", PREDICTOR_SPACES)
        if state.get("feature_version") != FEATURE_VERSION:
            raise ConfigError("feature_version", f"state was made with feature layout "
                              f"{state.get('feature_version')!r}; recalibrate", [FEATURE_VERSION])
        table = np.asarray(state.get("table"), dtype=np.float64)
        if table.shape != (space_features(space).n_features,) or not np.isfinite(table).all():
            raise ConfigError("table", f"expected {space_features(space).n_features} finite floats")
        return cls(space=space, table=table, device=str(state.get("device", "unknown")),
                   n_samples=int(state.get("n_samples", 0)),
                   effects={str(k): float(v) for k, v in dict(state.get("effects", {})).items()},
                   provenance=dict(state.get("provenance", {})), basis=_check_basis(space, state.get("basis")))


def _check_basis(space: str, b: Any) -> dict[str, Any] | None:
    """Validate the ``basis`` part of an adapted state (``None`` for version-1 states)."""
    if b is None:
        return None
    if not isinstance(b, Mapping) or not isinstance(b.get("devices"), list):
        raise ConfigError("basis", "expected {devices, weights, a, b, rho}")
    k = len(b["devices"])
    arrs = {}
    for name in ("weights", "a", "b"):
        v = np.asarray(b.get(name), dtype=np.float64)
        if v.shape != (k,) or not np.isfinite(v).all():
            raise ConfigError(f"basis.{name}", f"expected {k} finite floats")
        arrs[name] = [float(t) for t in v]
    rho = b.get("rho")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= float(rho) <= 1.0:
        raise ConfigError("basis.rho", f"expected a float in [0, 1], got {rho!r}")
    if not available_devices(space, [str(d) for d in b["devices"]]):
        raise ConfigError("basis.devices", f"not all devices are in the shipped {space} latency data")
    return {"devices": [str(d) for d in b["devices"]], **arrs, "rho": float(rho)}


# ------------------------------------------------------------------------------------------ meta-trained
class LatencyPredictor:
    """Meta-trained latency predictor of one space; :meth:`adapt` calibrates it to a device.

    Get the shipped one with :meth:`for_space` (``LatencyPredictor.for_space("fbnet")``); rebuild with
    :meth:`meta_train` (deterministic, < 1 s from the shipped latency data).
    """

    def __init__(self, prior: MetaPrior, basis_hyper: BasisHyper | None = None):
        self.prior = prior
        self.space = prior.space
        self.basis_hyper = basis_hyper or DEFAULT_BASIS.get(prior.space, BasisHyper(rho=0.0))

    # -------------------------------------------------------------- construction
    @classmethod
    def meta_train(cls, space: str, devices: Sequence[str] | None = None,
                   hyper: HyperParams | None = None) -> "LatencyPredictor":
        """Fit the prior on the shipped measured devices of ``space`` (all of them by default)."""
        from fitplan.hw_profiles.latency_data import load_latency_dataset

        if space not in PREDICTOR_SPACES:
            raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)
        ds = load_latency_dataset(space)
        devices = list(devices or ds.devices)
        x = _dataset_x(space)
        lat = np.stack([ds.device(d) for d in devices], axis=1)
        sf = space_features(space)
        return cls(build_prior(space, x, lat, devices, sf.analytic, sf.groups, hyper or DEFAULT_HYPER[space],
                               tiled=sf.tiled))

    @classmethod
    def for_space(cls, space: str) -> "LatencyPredictor":
        """The shipped meta-trained predictor (``fitplan/predictors/data``); rebuilt in memory when the file
        is missing or stale."""
        return _shipped(space)

    # -------------------------------------------------------------- adaptation
    def adapt(self, samples: Any, device: str = "unknown") -> AdaptedPredictor:
        """Calibrate to a device from measured samples (``[{"arch", "latency_ms"}]``); milliseconds of CPU.

        fp32 samples give the cost table (Bayesian posterior under the meta-learned prior); samples with
        compression (bits < 32, sparsity > 0) then give one speed-up factor per effect.
        """
        archs, y = parse_samples(self.space, samples)
        fp = np.array([_is_fp32(a) for a in archs])
        x = featurize(self.space, archs, validate=False)
        post = self.prior.posterior(x[fp], y[fp])
        basis = self._fit_basis(x[fp], y[fp], post)
        pred = AdaptedPredictor(self.space, post.table, basis=basis)._fp32_ms(x)
        effects: dict[str, float] = {}
        if (~fp).any():
            shares = [compression_shares(self.space, a) for a, f in zip(archs, fp) if not f]
            names = sorted({k for s in shares for k in s})
            a_mat = np.array([[s.get(k, 0.0) for k in names] for s in shares])
            rel = 1.0 - y[~fp] / pred[~fp]
            coef, *_ = np.linalg.lstsq(a_mat, rel, rcond=None)
            effects = {k: float(np.clip(c, -2.0, 0.95)) for k, c in zip(names, coef)}
        ape = np.abs(pred[fp] - y[fp]) / y[fp]
        method = "meta-learned Gaussian prior over layer-wise cost tables, Bayesian few-shot posterior"
        if basis:
            method += (" blended in log space with a Bayesian model average of rescaled source devices (measured "
                       "latencies for pool archs, their additive tables otherwise)")
        prov = {"method": method,
                "space": self.space, "source_devices": list(self.prior.devices), "n_fp32_samples": int(fp.sum()),
                "n_compressed_samples": int((~fp).sum()), "hyper": self.prior.hyper.to_dict(),
                # the prior the samples' evidence chose: the tuned one, every analytic table wide, or wide plus
                # the tiled-MAC tables (meta module docstring)
                "analytic_prior": CANDIDATE_NAMES[post.candidate],
                "basis_hyper": self.basis_hyper.to_dict(),
                "calibration_in_sample_median_ape_pct": float(np.median(ape) * 100),
                # positions in the given samples: measurements the fit treated as disturbed runs
                "suspect_samples": [int(i) for i in np.flatnonzero(fp)[suspects(post.weights)]]}
        return AdaptedPredictor(self.space, post.table, device, len(archs), effects, prov, basis)

    def _fit_basis(self, x: np.ndarray, y: np.ndarray, post: Posterior) -> dict[str, Any] | None:
        """Measured-basis part from fp32 samples weighted as the posterior weighted them, the posterior
        competing with the sources (:func:`~fitplan.predictors.basis.fit_bma`); ``None`` when disabled, the
        sources have no shipped data or the additive posterior takes the whole average."""
        h = self.basis_hyper
        devices = list(self.prior.devices)
        if h.rho <= 0 or len(y) < MIN_SAMPLES or not available_devices(self.space, devices):
            return None
        s, _ = source_columns(self.space, devices, x)
        w, a, b = fit_bma(s, np.log(y), h, post.weights, post.loo_log_resid)
        w, rho = blend_share(w, h.rho)
        keep = w >= _MIN_WEIGHT
        if rho < _MIN_WEIGHT * h.rho or not keep.any():
            return None
        w = w[keep] / w[keep].sum()
        return {"devices": [d for d, k in zip(devices, keep) if k], "weights": [float(v) for v in w],
                "a": [float(v) for v in a[keep]], "b": [float(v) for v in b[keep]], "rho": rho}

    # -------------------------------------------------------------- state
    def save(self, path: str | Path) -> None:
        """Write the prior as safetensors (arrays) with JSON metadata (format, versions, devices, hyper)."""
        from safetensors.numpy import save_file

        p = self.prior
        meta = {"format": PRIOR_FORMAT, "format_version": str(PRIOR_FORMAT_VERSION),
                "feature_version": str(FEATURE_VERSION), "space": p.space, "devices": json.dumps(list(p.devices)),
                "hyper": json.dumps(p.hyper.to_dict())}
        arrays = {"pool_mean": p.pool_mean, "mean": p.mean, "source_factors": p.source_factors,
                  "analytic": p.analytic, "scale_diag": p.scale_diag, "groups": p.groups}
        if p.tiled is not None:
            arrays["tiled"] = p.tiled
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}, str(path), meta)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyPredictor":
        """Read a file written by :meth:`save`; :class:`ConfigError` on a foreign or stale file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise ConfigError("path", f"file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise ConfigError("path", f"{path} is not a safetensors file ({e})") from None
        if meta.get("format") != PRIOR_FORMAT:
            raise ConfigError("format", f"{path} is not a fitplan latency prior", [PRIOR_FORMAT])
        if meta.get("format_version") != str(PRIOR_FORMAT_VERSION):
            raise ConfigError("format_version", f"unsupported version {meta.get('format_version')!r}",
                              [PRIOR_FORMAT_VERSION])
        if meta.get("feature_version") != str(FEATURE_VERSION):
            raise ConfigError("feature_version", f"{path} was built for feature layout "
                              f"{meta.get('feature_version')!r}", [FEATURE_VERSION])
        prior = MetaPrior(space=meta["space"], pool_mean=arrays["pool_mean"], mean=arrays["mean"],
                          source_factors=arrays["source_factors"], analytic=arrays["analytic"],
                          scale_diag=arrays["scale_diag"], devices=tuple(json.loads(meta["devices"])),
                          groups=arrays["groups"], hyper=HyperParams.from_dict(json.loads(meta["hyper"])),
                          tiled=arrays.get("tiled"))  # absent in files written before the tiled tables
        return cls(prior)


def shipped_prior_path(space: str) -> Path:
    return package_data("predictors", "data", f"{space}_latency_prior.safetensors")


@lru_cache(maxsize=None)
def _dataset_x(space: str) -> np.ndarray:
    from fitplan.predictors.features import dataset_features

    return dataset_features(space)


@lru_cache(maxsize=None)
def _shipped(space: str) -> LatencyPredictor:
    if space not in PREDICTOR_SPACES:
        raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)
    path = shipped_prior_path(space)
    if path.exists():
        try:
            return LatencyPredictor.load(path)
        except ConfigError:
            pass  # stale file (feature layout changed): rebuild deterministically below
    return LatencyPredictor.meta_train(space)


@lru_cache(maxsize=None)
def predictor_for_device(space: str, device_name: str) -> AdaptedPredictor:
    """Predictor of a built-in device: its table fitted directly on all of its measured archs."""
    from fitplan.hw_profiles.builtin import device_info
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    if space not in PREDICTOR_SPACES:
        raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)
    ds = load_latency_dataset(space)
    y = ds.device(device_name)
    x = _dataset_x(space)
    table = fit_device_table(x, y)
    ape = np.abs(x @ table - y) / y
    return AdaptedPredictor(space, table, device_name, len(y), {}, {
        "method": "layer-wise cost table fitted on all measured archs (relative-error ridge)",
        "data": f"{ds.source}; device {device_name}, batch {device_info(device_name)[1]}",
        "in_sample_median_ape_pct": float(np.median(ape) * 100)})


# ------------------------------------------------------------------------------------------ profiles
#: calibration methods: ``meta`` (:meth:`LatencyPredictor.adapt`, spaces with shipped multi-device data),
#: ``analytic`` (:class:`~fitplan.predictors.analytic.CostModelPredictor`, any registered space, compression
#: per unit), ``auto`` (chosen per device by cross-validated error on the samples themselves, the log-space
#: average of the two among the candidates: :func:`calibrate_predictor`).
CALIBRATION_METHODS = ("auto", "meta", "analytic")


def calibrate_predictor(space: str, samples: Any, device: str = "unknown", method: str = "auto",
                        base: LatencyPredictor | None = None
                        ) -> "AdaptedPredictor | CostModelPredictor | EnsemblePredictor":
    """A latency predictor of ``device`` in ``space`` (default spec) from measured samples.

    ``auto`` picks, per device, among the meta-learned predictor, the analytic per-unit cost model and (for
    uncompressed samples) their log-space average (:class:`~fitplan.predictors.ensemble.EnsemblePredictor`)
    by their leave-one-out (at most 10-fold) relative errors on the calibration samples
    (:func:`select_model`): the meta prior wins on devices like its sources (fp32 GPUs/phones of HELP), the
    analytic model wherever compression is measured per unit (e.g. int8 QDQ on ONNX Runtime CPUs, where int8
    pays for pointwise convs and costs for depthwise ones, and precision boundaries cost extra), the average
    on devices unlike every source (fbnet, leave-one-class-out, N=10: mean Spearman 0.837 -> 0.854 on
    measured, 0.908 -> 0.921 on noise-free targets; ``benchmarks/predictor_fewshot.py``). Where fitplan ships
    a measured dataset of the space (:func:`fitplan.predictors.analytic.source_prior`), the analytic model
    anchored on it (``"analytic+prior"``) is kept over the plain analytic fit unless that cross-validates
    better by more than one standard error (:func:`~fitplan.predictors.analytic.prefer_prior`). The default
    is the meta model for uncompressed samples (HELP's setting) and the analytic one when compressed configs
    were measured; another wins only if it cross-validates better by more than one standard error (with 5
    samples the plain lower mean picked the worse model often enough to lose 0.01 Spearman on the LODO
    benchmark); with fewer than :data:`MIN_SELECT_SAMPLES` uncompressed samples the meta model is kept without
    a choice (the rule still lost there). Spaces without a meta prior use ``analytic``
    (:func:`~fitplan.predictors.analytic.fit_with_source_prior`, the same rule). The choice and the errors are
    in ``provenance["selected_by"]``. ``base``: the meta-trained predictor (default: the one shipped for
    ``space``).
    """
    from fitplan.predictors.analytic import (CostModelPredictor, cross_validated_errors, fit_with_source_prior,
                                             prefer_prior, source_prior)

    if method not in CALIBRATION_METHODS:
        raise ConfigError("method", f"unknown calibration method {method!r}", CALIBRATION_METHODS)
    if method == "analytic" or (method == "auto" and space not in PREDICTOR_SPACES):
        return fit_with_source_prior(space, samples, device=device)
    base = base or LatencyPredictor.for_space(space)  # UnknownNameError for a space without a prior
    if method == "meta":
        return base.adapt(samples, device=device)
    items = list(samples["samples"] if isinstance(samples, Mapping) and "samples" in samples else samples)
    analytic = CostModelPredictor.fit(space, items, device=device)  # validates the samples
    configs = [s.get("arch", s.get("config")) for s in items]
    y = np.asarray([float(s["latency_ms"]) for s in items])
    fits = {"meta": lambda tr: base.adapt([items[i] for i in tr], device=device),
            "analytic": lambda tr: CostModelPredictor.fit(space, [items[i] for i in tr], device=device)}
    prior = source_prior(space)
    if prior is not None:
        try:
            with_prior = CostModelPredictor.fit(space, items, device=device, prior=prior)
            fits["analytic+prior"] = lambda tr: CostModelPredictor.fit(space, [items[i] for i in tr], device=device,
                                                                       prior=prior)
        except ConfigError:  # a compression class the prior has no data on: no prior
            prior = None
    # a fit that fails on a fold (e.g. fewer than 3 fp32 samples for the meta predictor) is never chosen
    fold_fit = _memo_folds(fits)
    errs = cross_validated_errors(fold_fit, configs, y, folds=10, unknown="fp32")
    # the analytic model with or without the prior (one-standard-error rule)
    best_analytic = ("analytic+prior" if "analytic+prior" in errs and prefer_prior(errs["analytic"],
                                                                                   errs["analytic+prior"])
                     else "analytic")
    compressed = any(isinstance(c, Mapping) and not _is_fp32(c) for c in configs)
    if not compressed:  # HELP's setting: also the log-space average of the meta and the analytic model
        fold_fit["ensemble"] = lambda tr: EnsemblePredictor([fold_fit["meta"](tr), fold_fit[best_analytic](tr)],
                                                            device=device)
        errs |= cross_validated_errors({"ensemble": fold_fit["ensemble"]}, configs, y, folds=10, unknown="fp32")
    mean = {k: float(np.mean(v) * 100) for k, v in errs.items()}
    # the default is the model built for the samples at hand -- the meta-learned prior for uncompressed ones
    # (HELP's setting), the per-unit analytic model where compressed configs were measured (the meta model
    # has one whole-network factor per effect) -- and another wins only if it is better by more than one
    # standard error (with 5-10 samples the lower CV mean alone picked the worse model often enough to lose
    # on average)
    cands = ["meta", best_analytic] + ([] if compressed else ["ensemble"])
    if compressed or len(items) >= MIN_SELECT_SAMPLES:
        pick = select_model({k: errs[k] for k in cands}, default=best_analytic if compressed else "meta")
    else:  # too few uncompressed samples for the cross-validated choice to beat the default
        pick = "meta" if np.isfinite(np.mean(errs["meta"])) else best_analytic
    try:  # milliseconds; also names the suspect samples
        meta = base.adapt(items, device=device)
    except ConfigError:  # e.g. too few fp32 samples: the meta model was not a candidate (infinite CV error)
        meta = None
    fitted = {"analytic": lambda: analytic, "analytic+prior": lambda: with_prior, "meta": lambda: meta}
    fitted["ensemble"] = lambda: EnsemblePredictor(
        [fitted["meta"](), fitted[best_analytic]()], device=device,
        provenance={"method": f"log-space average of the meta-learned model and the {best_analytic} model"})
    pred = fitted[pick]()
    pred.provenance["selected_by"] = {"rule": "cross-validated relative error on the calibration samples "
                                              "(leave-one-out, at most 10 folds): the analytic model with the "
                                              "source prior unless it is worse by more than one standard error; "
                                              "then, for uncompressed samples the meta model and for samples with "
                                              "compressed configs the analytic one, unless another candidate "
                                              "(for uncompressed samples also the ensemble of the two) is better "
                                              "by more than one standard error (then the lowest mean of those); "
                                              f"with fewer than {MIN_SELECT_SAMPLES} uncompressed samples the "
                                              "meta model",
                                      "chosen": pick, "cv_mean_ape_pct": {k: (v if np.isfinite(v) else None)
                                                                          for k, v in mean.items()}}
    pred.provenance.setdefault("suspect_samples", meta.provenance.get("suspect_samples", []) if meta else [])
    if pick == "ensemble" and meta is not None:  # the meta member's prior choice, as the meta model reports it
        pred.provenance.setdefault("analytic_prior", meta.provenance.get("analytic_prior"))
    return pred


def _memo_folds(fits: Mapping[str, Any]) -> dict[str, Any]:
    """``fits`` with each ``fit(train_idx)`` remembered, so that an ensemble's cross-validation reuses its
    members' fold fits."""
    cache: dict[tuple[str, tuple[int, ...]], Any] = {}

    def wrap(name: str, fit: Any) -> Any:
        def fold_fit(tr: Any) -> Any:
            key = (name, tuple(int(i) for i in tr))
            if key not in cache:
                cache[key] = fit(tr)
            return cache[key]
        return fold_fit

    return {k: wrap(k, f) for k, f in fits.items()}


def select_model(errs: Mapping[str, np.ndarray], default: str) -> str:
    """The calibration's choice among candidate models from their per-sample cross-validated errors: keep
    ``default`` unless other candidates' errors are lower by more than one standard error of the paired
    difference (:func:`~fitplan.predictors.analytic.prefer_prior`); among those, the lowest mean error.

    Why ``default`` first: with 5-10 samples the cross-validated means are noisy and the default (the model
    built for the samples at hand) is the safer bet; a clearly better alternative still wins."""
    from fitplan.predictors.analytic import prefer_prior

    better = [k for k in errs if k != default and not prefer_prior(errs[k], errs[default])]
    return min(better, key=lambda k: float(np.mean(errs[k]))) if better else default


def suspect_note(provenance: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str | None:
    """A one-line note for the user naming the calibration samples the fit down-weighted as disturbed runs
    (``provenance["suspect_samples"]``, positions in ``samples``), or ``None`` when there are none."""
    suspect = list(provenance.get("suspect_samples") or [])
    if not suspect:
        return None
    listed = ", ".join(f"#{i} ({float(samples[i]['latency_ms']):g} ms)" for i in suspect)
    return (f"note: samples {listed} lie far from what the other samples predict and were down-weighted (a "
            f"disturbed run?); re-measuring them may improve the calibration")


def calibrate_profile(profile: Any, samples: Any, space: str, method: str = "auto") -> dict[str, Any]:
    """Calibrate a latency predictor of ``space`` to ``profile``'s samples (:func:`calibrate_predictor`);
    returns the JSON-able state to store under ``profile.predictors[space]`` (the caller stores it)."""
    name = str(getattr(profile, "name", profile))
    return calibrate_predictor(space, samples, device=name, method=method).state_dict()


def load_profile_predictor(state: Mapping[str, Any]) -> "AdaptedPredictor | CostModelPredictor":
    """The predictor stored by :func:`calibrate_profile` (:class:`AdaptedPredictor` or, for states of format
    ``fitplan.analytic_latency``, :class:`~fitplan.predictors.analytic.CostModelPredictor`)."""
    from fitplan.predictors.analytic import ANALYTIC_FORMAT, CostModelPredictor

    if isinstance(state, Mapping) and state.get("format") == ANALYTIC_FORMAT:
        return CostModelPredictor.from_state(state)
    if isinstance(state, Mapping) and state.get("format") == ENSEMBLE_FORMAT:
        return EnsemblePredictor.from_state(state)
    return AdaptedPredictor.from_state(state)


__all__ = ["ADAPTED_FORMAT", "AdaptedPredictor", "CALIBRATION_METHODS", "DEFAULT_HYPER", "LatencyPredictor",
           "MIN_SAMPLES", "MIN_SELECT_SAMPLES", "calibrate_predictor", "calibrate_profile", "compression_shares",
           "load_profile_predictor", "parse_samples", "predictor_for_device", "select_model", "shipped_prior_path",
           "suspect_note"]
