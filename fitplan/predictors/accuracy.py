"""Accuracy predictor for the subnets of a trained supernet, with per-unit bits/sparsity sensitivity.

Two measured ingredients:

1. **Architecture accuracy** -- a few hundred sampled (uncompressed) subnets are evaluated on a held-out
   split after BN recalibration (:func:`measure_subnet_metrics`: top-1 accuracy and mean cross-entropy);
   a regressor predicts their accuracy. Candidates are every combination of

   * regressor: ridge on standardised features, or gradient-boosted trees (``MODELS``);
   * features: ``encode`` (``space.encode``: one-hot choices per block plus per-unit costs) or
     ``summary`` (log MACs / params / activations and the mean or share of every arch dimension: few
     features, better with few measured subnets) (``FEATURE_SETS``);
   * target: the measured ``accuracy``, or ``nll`` -- the subnets' cross-entropy mapped linearly onto the
     accuracy scale (``acc ~ a + b * nll``, fitted on the same subnets). Top-1 accuracy on a few hundred
     validation images moves in steps of ``1 / n`` and saturates; cross-entropy uses every image's
     confidence, so it orders subnets with much less noise (on the MNIST-5k supernet, 500 validation
     images: Kendall tau with the accuracy on 1000 *test* images 0.68 for validation NLL against 0.60 for
     validation accuracy) (``TARGETS``).

   They are compared by 5-fold cross-validated Kendall tau against the *measured accuracy* of the held-out
   fold; the chosen one is scored the same way on held-out subnets it never saw
   (``metrics["kendall_tau_holdout"]``) and then refit on all measured subnets.
2. **Compression sensitivity** -- on a reference subnet, one unit at a time is quantised (4 / 8 bits) or
   sparsified (each unstructured ratio, and 2:4), BN is recalibrated, activation ranges are calibrated,
   and the accuracy drop versus the float reference is measured (:func:`measure_sensitivity`).

``predict(config) = arch_accuracy(config) - a * sum over active units of [drop(unit, bits) + drop(unit, sparsity)]``

with ``a = 1`` (pure additivity) unless :meth:`AccuracyPredictor.fit_drop_scale` fitted it on measured
compressed configs (``build(..., n_compressed=N)``).

**Additivity assumption**: the drops of different units (and of bits and sparsity on the same unit)
add up, and a unit's drop measured on the reference subnet carries over to other architectures. This is
the usual first-order (Hessian-diagonal-free) sensitivity model of mixed-precision search (HAQ / HAWQ use
per-layer sensitivities the same way); it ignores interactions, which grow when many units are
compressed at once, so predictions of heavily compressed configs are optimistic (on the MNIST-5k
benchmark, without fine-tuning, the plain sum under-predicts the real drop by ~0.10 on average;
``drop_scale`` fitted on a few measured compressed configs corrects the average). Measured drops below
zero (evaluation noise) count as zero. Units inactive in the reference subnet take the mean drop of the
measured units for that setting. ``benchmarks/accuracy_predictor.py`` measures how well the sum matches
real compressed subnets. Drops are measured before fine-tuning; the planner fine-tunes afterwards, so
real accuracies after fine-tuning are usually higher.

Saved as ``<path>.json`` (versioned metadata, sensitivity tables, metrics) + ``<path>.npz`` (regressor
arrays); no pickle: both regressors are evaluated from their arrays.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fitplan.errors import ConfigError
from fitplan.jsonio import dumps, load_versioned, save_versioned

FORMAT = "fitplan-accuracy-predictor"
FORMAT_VERSION = 2
MODELS = ("ridge", "gbr")
FEATURE_SETS = ("encode", "summary")
TARGETS = ("accuracy", "nll")


# ----------------------------------------------------------------------------------------- measuring
def _arch_only(space, config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture part of a config, compression reset to the defaults (no compression)."""
    cfg = space.validate(config)
    return space.validate({d.name: cfg[d.name] for d in space.arch_dimensions()})


def measure_subnet_metrics(supernet: nn.Module, configs: Sequence[Mapping[str, Any]], val_loader: Iterable,
                           calib_batches: Sequence[torch.Tensor], *, desc: str = "subnets") -> dict[str, np.ndarray]:
    """``{"accuracy", "nll"}`` arrays (top-1, mean cross-entropy) of each (architecture) config on
    ``val_loader``, BN recalibrated per subnet."""
    from tqdm.auto import tqdm

    from fitplan.search_spaces.training import evaluate_metrics

    rows = [evaluate_metrics(supernet, cfg, val_loader, calib_batches) for cfg in tqdm(configs, desc=desc, leave=False)]
    return {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in ("accuracy", "nll")}


def measure_compressed(supernet: nn.Module, config: Mapping[str, Any], val_loader: Iterable,
                       calib_batches: Sequence[torch.Tensor]) -> float:
    """Accuracy of a compressed config without fine-tuning: extract (BN recalibrated for the arch),
    apply masks + fake quant, recalibrate BN again, calibrate activation ranges, evaluate."""
    from fitplan.search_spaces.training import recalibrate_bn

    space = supernet.space
    cfg = space.validate(config)
    recalibrate_bn(supernet, cfg, calib_batches)
    return _compressed_accuracy(supernet.extract(cfg).eval(), cfg, space.input_shape(cfg), val_loader,
                                calib_batches)


def _compressed_accuracy(model: nn.Module, cfg: Mapping[str, Any], shape: Sequence[int], val_loader: Iterable,
                         calib_batches: Sequence[torch.Tensor]) -> float:
    """Compress ``model`` (an extracted float subnet, modified in place) as ``cfg`` says and evaluate it."""
    from fitplan.data import resize_for_shape
    from fitplan.search_spaces.compression import apply_compression, calibrate
    from fitplan.search_spaces.training import evaluate, recalibrate_bn

    if any(b < 32 for b in cfg["bits"]) or any(s > 0 for s in cfg["sparsity"]):
        calib = [resize_for_shape(c, shape) for c in calib_batches]
        apply_compression(model, cfg)
        recalibrate_bn(model, None, calib, input_shape=shape)  # activation quantisers still pass-through
        calibrate(model, calib)
    return evaluate(model, None, val_loader, input_shape=shape)


def sensitivity_settings(space: Any, bits: Sequence[int] | None = None, sparsities: Sequence[float] | None = None,
                         two_four: bool = True) -> list[tuple[str, Any, str]]:
    """The ``(dimension, value, pattern)`` settings :func:`measure_sensitivity` measures one unit at a time:
    every bit-width below 32 and every sparsity above 0 (unstructured) of ``bits`` / ``sparsities``
    (default: all of the space's), plus 50 % 2:4 when ``two_four`` and the space has that pattern."""
    bits = [b for b in (bits if bits is not None else space.bits_choices) if b < 32]
    sps = [float(s) for s in (sparsities if sparsities is not None else space.sparsity_choices) if s > 0]
    settings: list[tuple[str, Any, str]] = [("bits", b, "") for b in bits]
    settings += [("sparsity", s, "unstructured") for s in sps]
    if two_four and "2:4" in space.sparsity_patterns:
        settings.append(("sparsity", 0.5, "2:4"))
    return settings


def _sensitivity_row_table(sensitivity: Mapping[str, Any], key: str, pattern: str) -> Mapping[str, Any]:
    """The ``{value: [drop per unit]}`` table of one setting kind in a :func:`measure_sensitivity` result."""
    return sensitivity["bits"] if key == "bits" else sensitivity["sparsity"].get(pattern, {})


def measure_sensitivity(supernet: nn.Module, val_loader: Iterable, calib_batches: Sequence[torch.Tensor], *,
                        reference: Mapping[str, Any] | None = None, bits: Sequence[int] | None = None,
                        sparsities: Sequence[float] | None = None, two_four: bool = True) -> dict[str, Any]:
    """Accuracy drop per (unit, bits) and (unit, sparsity) on ``reference`` (default: the largest subnet).

    Returns ``{"reference", "base_accuracy", "bits": {"4": [drop | None per unit], ...},
    "sparsity": {"unstructured": {"0.5": [...]}, "2:4": {"0.5": [...]}}}``; ``None`` marks units that are
    inactive in the reference.
    """
    from tqdm.auto import tqdm

    space = supernet.space
    ref = _arch_only(space, reference if reference is not None else space.largest())
    n = len(space.units())
    active = [u.active for u in space.unit_costs(ref)]
    settings = sensitivity_settings(space, bits, sparsities, two_four)
    from fitplan.search_spaces.training import recalibrate_bn

    recalibrate_bn(supernet, ref, calib_batches)
    base_model = supernet.extract(ref).eval()  # float reference; each setting compresses a copy of it
    shape = space.input_shape(ref)
    base = _compressed_accuracy(copy.deepcopy(base_model), ref, shape, val_loader, calib_batches)
    out: dict[str, Any] = {"reference": ref, "base_accuracy": base, "bits": {},
                           "sparsity": {"unstructured": {}}}
    for key, val, pattern in settings:
        table = out["bits"] if key == "bits" else out["sparsity"].setdefault(pattern, {})
        table[str(val)] = [None] * n
    jobs = [(u, st) for u in range(n) if active[u] for st in settings]
    for u, (key, val, pattern) in tqdm(jobs, desc="sensitivity", leave=False):
        cfg = copy.deepcopy(ref)
        if key == "bits":
            cfg["bits"][u] = val
        else:
            cfg["sparsity"][u] = val
            cfg["sparsity_pattern"] = pattern
        acc = _compressed_accuracy(copy.deepcopy(base_model), cfg, shape, val_loader, calib_batches)
        _sensitivity_row_table(out, key, pattern)[str(val)][u] = base - acc
    return out


# ----------------------------------------------------------------------------------------- regressors
def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    t = kendalltau(a, b).statistic
    return float(t) if np.isfinite(t) else 0.0


def _fit_model(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Fit one regressor and return it as plain arrays (see :func:`_predict_arrays`)."""
    if kind == "ridge":
        from sklearn.linear_model import RidgeCV

        mean, scale = X.mean(0), X.std(0)
        scale[scale < 1e-12] = 1.0
        r = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((X - mean) / scale, y)
        return {"mean": mean, "scale": scale, "coef": np.asarray(r.coef_, dtype=np.float64),
                "intercept": np.asarray([r.intercept_], dtype=np.float64), "alpha": np.asarray([r.alpha_])}
    if kind == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        g = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8,
                                      random_state=seed).fit(X, y)
        trees = [e[0].tree_ for e in g.estimators_]
        offsets = np.cumsum([0] + [t.node_count for t in trees])
        return {
            "init": np.asarray([float(np.ravel(g.init_.constant_)[0])]),
            "learning_rate": np.asarray([g.learning_rate]),
            "offsets": offsets.astype(np.int64),
            "left": np.concatenate([t.children_left for t in trees]).astype(np.int64),
            "right": np.concatenate([t.children_right for t in trees]).astype(np.int64),
            "feature": np.concatenate([t.feature for t in trees]).astype(np.int64),
            "threshold": np.concatenate([t.threshold for t in trees]).astype(np.float64),
            "value": np.concatenate([t.value[:, 0, 0] for t in trees]).astype(np.float64),
        }
    raise ConfigError("model", f"unknown regressor {kind!r}", MODELS)


def _predict_arrays(kind: str, p: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Evaluate a regressor stored as arrays (identical to the sklearn model it came from)."""
    if kind == "ridge":
        return ((X - p["mean"]) / p["scale"]) @ p["coef"] + float(p["intercept"][0])
    if kind == "gbr":
        Xf = X.astype(np.float32).astype(np.float64)  # sklearn trees compare float32 inputs
        out = np.full(len(X), float(p["init"][0]))
        rows = np.arange(len(X))
        off = p["offsets"]
        for t in range(len(off) - 1):
            base = int(off[t])
            node = np.zeros(len(X), dtype=np.int64)
            while True:
                left = p["left"][base + node]
                leaf = left < 0
                if leaf.all():
                    break
                f = p["feature"][base + node]
                go_left = Xf[rows, np.where(leaf, 0, f)] <= p["threshold"][base + node]
                nxt = np.where(go_left, left, p["right"][base + node])
                node = np.where(leaf, node, nxt)
            out += float(p["learning_rate"][0]) * p["value"][base + node]
        return out
    raise ConfigError("model", f"unknown regressor {kind!r}", MODELS)


def _summary_features(space, cfg: Mapping[str, Any]) -> list[float]:
    """Few, space-generic features of an architecture: log MACs / params / activations of the whole net,
    then per arch dimension the mean of its values over all elements scaled to [0, 1] (numeric
    choices) or the share of each choice (categorical ones)."""
    tot = space.costs(cfg)
    out = [float(np.log1p(tot[k])) for k in ("macs", "params", "act_elems")]
    for dim in space.arch_dimensions():
        vals = [cfg[dim.name]] if dim.length is None else list(cfg[dim.name])
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in dim.choices):
            lo, hi = float(min(dim.choices)), float(max(dim.choices))
            out.append((float(np.mean(vals)) - lo) / max(hi - lo, 1e-9))
        else:
            out += [sum(v == c for v in vals) / len(vals) for c in dim.choices]
    return out


def _nll_mapping(nll: np.ndarray, acc: np.ndarray) -> list[float]:
    """``[a, b]`` of the least-squares line ``acc ~ a + b * nll``; ``b`` is clipped to <= 0 (lower loss
    never maps to lower accuracy; with no usable relation the target is the constant mean accuracy)."""
    var = float(np.var(nll))
    b = min(0.0, float(np.cov(nll, acc, bias=True)[0, 1] / var)) if var > 1e-12 else 0.0
    return [float(acc.mean() - b * nll.mean()), b]


# ----------------------------------------------------------------------------------------- predictor
class AccuracyPredictor:
    """Predicts top-1 accuracy of (compressed) configs of one space / trained supernet / dataset.

    Build with :meth:`build` (measures everything) or :meth:`fit` + :meth:`set_sensitivity` (from
    measurements you already have). All predictions are *predicted* values; :attr:`metrics` says how good
    they were on held-out subnets.
    """

    def __init__(self, space):
        self.space = space
        self.kind: str | None = None
        self.feature_set: str = "encode"
        self.target: str = "accuracy"
        self.params: dict[str, np.ndarray] = {}
        self.metrics: dict[str, Any] = {}
        self.sensitivity: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}
        #: multiplies the summed unit drops; 1.0 = pure additivity, fitted by :meth:`fit_drop_scale`
        self.drop_scale: float = 1.0

    # ------------------------------------------------------------------ features
    def features(self, configs: Iterable[Mapping[str, Any]], feature_set: str | None = None) -> np.ndarray:
        """Features of the architecture part of each config: ``encode`` (``space.encode``) or ``summary``
        (see module doc). Default: the set the predictor was fitted with."""
        fs = feature_set or self.feature_set
        if fs not in FEATURE_SETS:
            raise ConfigError("feature_set", f"unknown feature set {fs!r}", FEATURE_SETS)
        arch = [_arch_only(self.space, c) for c in configs]
        if fs == "encode":
            return np.stack([self.space.encode(c) for c in arch])
        return np.stack([_summary_features(self.space, c) for c in arch])

    # ------------------------------------------------------------------ fitting
    def fit(self, configs: Sequence[Mapping[str, Any]], accuracies: Sequence[float], *, nll: Sequence[float] | None = None,
            holdout: float = 0.2, seed: int = 0, models: Sequence[str] = MODELS,
            feature_sets: Sequence[str] = FEATURE_SETS, targets: Sequence[str] | None = None) -> dict[str, Any]:
        """Fit the architecture regressor on measured ``(config, accuracy[, nll])`` triples.

        Every (target, feature set, regressor) candidate is scored by 5-fold CV Kendall tau against the
        measured accuracy on the training part; the best is scored on the held-out part (Kendall tau /
        Spearman / MAE against measured accuracy), then refit on all subnets. ``nll`` (mean cross-entropy
        per subnet) enables the ``nll`` target. Returns the metrics.
        """
        from scipy.stats import spearmanr
        from sklearn.model_selection import KFold

        y = np.asarray(accuracies, dtype=np.float64)
        if len(configs) != len(y):
            raise ConfigError("accuracies", f"{len(y)} values for {len(configs)} configs")
        if len(y) < 10:
            raise ConfigError("configs", f"need at least 10 measured subnets, got {len(y)}")
        if not np.all(np.isfinite(y)):
            raise ConfigError("accuracies", "must be finite")
        z = None if nll is None else np.asarray(nll, dtype=np.float64)
        if z is not None and (len(z) != len(y) or not np.all(np.isfinite(z))):
            raise ConfigError("nll", f"need one finite value per config ({len(z)} for {len(y)})")
        targets = list(targets) if targets is not None else [t for t in TARGETS if t != "nll" or z is not None]
        for name, given, allowed in (("models", models, MODELS), ("feature_sets", feature_sets, FEATURE_SETS),
                                     ("targets", targets, TARGETS)):
            for g in given:
                if g not in allowed:
                    raise ConfigError(name, f"unknown value {g!r}", allowed)
        if "nll" in targets and z is None:
            raise ConfigError("nll", "the 'nll' target needs the measured cross-entropy of every subnet")
        Xs = {fs: self.features(configs, fs) for fs in feature_sets}
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(y))
        n_hold = int(round(len(y) * holdout)) if holdout > 0 else 0
        hold, train = perm[:n_hold], perm[n_hold:]

        def fit_on(idx: np.ndarray, t: str, fs: str, m: str) -> tuple[dict[str, np.ndarray], list[float] | None]:
            mapping = _nll_mapping(z[idx], y[idx]) if t == "nll" else None
            target = y[idx] if mapping is None else mapping[0] + mapping[1] * z[idx]
            return _fit_model(m, Xs[fs][idx], target, seed), mapping

        cv: dict[str, float] = {}
        folds = list(KFold(n_splits=min(5, len(train)), shuffle=True, random_state=seed).split(train))
        for t in targets:
            for fs in feature_sets:
                for m in models:
                    taus = []
                    for tr, te in folds:
                        p, _ = fit_on(train[tr], t, fs, m)
                        taus.append(_kendall(_predict_arrays(m, p, Xs[fs][train[te]]), y[train[te]]))
                    cv[f"{t}/{fs}/{m}"] = float(np.mean(taus))
        best = max(cv, key=cv.get)
        t, fs, m = best.split("/")
        metrics: dict[str, Any] = {"model": m, "features": fs, "target": t, "cv_kendall_tau": cv,
                                   "n_measured": int(len(y)), "n_train": int(len(train)), "n_holdout": int(n_hold),
                                   "accuracy_range": [float(y.min()), float(y.max())]}
        if n_hold >= 3:
            p, _ = fit_on(train, t, fs, m)
            pred = _predict_arrays(m, p, Xs[fs][hold])
            metrics.update(kendall_tau_holdout=_kendall(pred, y[hold]),
                           spearman_holdout=float(spearmanr(pred, y[hold]).statistic),
                           mae_holdout=float(np.abs(pred - y[hold]).mean()))
            if z is not None:
                metrics["kendall_tau_holdout_vs_nll"] = _kendall(-pred, z[hold])
        self.params, mapping = fit_on(np.arange(len(y)), t, fs, m)
        self.kind, self.feature_set, self.target = m, fs, t
        if mapping is not None:
            metrics["nll_to_accuracy"] = {"intercept": mapping[0], "slope": mapping[1]}
        self.metrics = metrics
        return metrics

    def set_sensitivity(self, sensitivity: Mapping[str, Any]) -> None:
        """Use a table from :func:`measure_sensitivity` (checked against the space's units)."""
        n = len(self.space.units())
        for b, row in sensitivity["bits"].items():
            if len(row) != n:
                raise ConfigError(f"sensitivity.bits.{b}", f"expected {n} entries (one per unit), got {len(row)}")
        self.sensitivity = copy.deepcopy(dict(sensitivity))

    def fit_drop_scale(self, configs: Sequence[Mapping[str, Any]], accuracies: Sequence[float]) -> float:
        """Fit one factor ``a`` so that ``arch_accuracy - a * sum(unit drops)`` matches measured compressed
        accuracies (least squares through the origin, ``a`` in [0, 10]).

        Compressing many units at once hurts more than the sum of single-unit drops (errors compound
        through the network); ``a > 1`` absorbs the average compounding. Needs the sensitivity table.
        """
        if self.sensitivity is None:
            raise RuntimeError("fit_drop_scale needs a sensitivity table (set_sensitivity / build)")
        y = np.asarray(accuracies, dtype=np.float64)
        if len(y) != len(configs) or len(y) < 2:
            raise ConfigError("accuracies", f"need >= 2 values, one per config ({len(y)} for {len(configs)})")
        old, self.drop_scale = self.drop_scale, 1.0
        try:
            raw = np.asarray([self.compression_drop(c) for c in configs])
        finally:
            self.drop_scale = old
        real_drop = self.predict_arch(configs) - y
        a = float(np.clip((raw @ real_drop) / max(float(raw @ raw), 1e-12), 0.0, 10.0))
        self.drop_scale = a
        self.metrics["drop_scale"] = {"value": a, "n_configs": int(len(y)),
                                      "method": "least squares of measured drop on summed unit drops"}
        return a

    def covers(self, choices: Mapping[str, Any]) -> bool:
        """Whether the sensitivity table has every setting of ``choices`` (:func:`measure_sensitivity`'s
        ``bits`` / ``sparsities`` / ``two_four`` keywords; a key left out means all of the space's)."""
        if self.sensitivity is None:
            return False
        return all(str(val) in _sensitivity_row_table(self.sensitivity, key, pattern)
                   for key, val, pattern in sensitivity_settings(self.space, **choices))

    @classmethod
    def build(cls, supernet: nn.Module, val_loader: Iterable, calib_batches: Sequence[torch.Tensor], *,
              n_subnets: int = 300, holdout: float = 0.2, seed: int = 0, sensitivity: bool = True,
              reference: Mapping[str, Any] | None = None, models: Sequence[str] = MODELS,
              n_compressed: int = 0, sensitivity_choices: Mapping[str, Any] | None = None) -> "AccuracyPredictor":
        """Measure ``n_subnets`` random subnets (plus smallest and largest) and, optionally, the
        per-unit sensitivity, then fit. ``val_loader`` must be data the supernet was not trained on.
        ``sensitivity_choices`` limits the sensitivity settings (``bits``, ``sparsities``, ``two_four``
        keywords of :func:`measure_sensitivity`; default all of the space's): a planner that searches only
        8-bit units need not pay for 4-bit and sparse evaluations. ``n_compressed > 0`` also measures that
        many random compressed configs and fits :attr:`drop_scale` on them (:meth:`fit_drop_scale`)."""
        space = supernet.space
        rng = np.random.default_rng(seed)
        configs = [space.largest(), space.smallest()]
        configs += [space.sample(rng, compression=False) for _ in range(max(0, n_subnets - 2))]
        measured = measure_subnet_metrics(supernet, configs, val_loader, calib_batches)
        pred = cls(space)
        pred.fit(configs, measured["accuracy"], nll=measured["nll"], holdout=holdout, seed=seed, models=models)
        pred.meta["measured"] = {"configs": configs, "accuracies": measured["accuracy"].tolist(),
                                 "nll": measured["nll"].tolist()}
        if sensitivity:
            pred.set_sensitivity(measure_sensitivity(supernet, val_loader, calib_batches, reference=reference,
                                                     **dict(sensitivity_choices or {})))
            if n_compressed > 0:
                from tqdm.auto import tqdm

                ccfgs = [space.sample(rng, compression=True) for _ in range(n_compressed)]
                cacc = [measure_compressed(supernet, c, val_loader, calib_batches)
                        for c in tqdm(ccfgs, desc="compressed", leave=False)]
                pred.fit_drop_scale(ccfgs, cacc)
                pred.meta["measured_compressed"] = {"configs": ccfgs, "accuracies": cacc}
        return pred

    # ------------------------------------------------------------------ predicting
    def predict_arch(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predicted accuracy of the uncompressed architectures."""
        if self.kind is None:
            raise RuntimeError("the predictor is not fitted: call fit() or build() first")
        return _predict_arrays(self.kind, self.params, self.features(configs))

    def compression_drop(self, config: Mapping[str, Any]) -> float:
        """``drop_scale`` times the sum of measured per-unit drops for the config's bits and sparsity
        (0 without a sensitivity table)."""
        if self.sensitivity is None:
            return 0.0
        cfg = self.space.validate(config)
        active = [u.active for u in self.space.unit_costs(cfg)]
        drop = 0.0
        for u, on in enumerate(active):
            if not on:
                continue
            if cfg["bits"][u] < 32:
                drop += self._lookup(self.sensitivity["bits"], str(cfg["bits"][u]), u, f"bits.{u}")
            if cfg["sparsity"][u] > 0:
                tables = self.sensitivity["sparsity"].get(cfg["sparsity_pattern"])
                if tables is None:
                    raise ConfigError("sparsity_pattern", "no sensitivity measured for this pattern",
                                      list(self.sensitivity["sparsity"]))
                drop += self._lookup(tables, str(float(cfg["sparsity"][u])), u, f"sparsity.{u}")
        return drop * self.drop_scale

    @staticmethod
    def _lookup(tables: Mapping[str, Sequence[float | None]], key: str, u: int, field: str) -> float:
        if key not in tables:
            raise ConfigError(field, f"no sensitivity measured for value {key}", list(tables))
        row = tables[key]
        v = row[u]
        if v is None:  # unit inactive in the reference subnet: mean of the measured units
            vals = [x for x in row if x is not None]
            v = float(np.mean(vals)) if vals else 0.0
        return max(0.0, float(v))

    def predict(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray:
        """Predicted top-1 accuracy of (compressed) configs: arch accuracy minus summed unit drops, in [0, 1]."""
        if isinstance(configs, Mapping):
            configs = [configs]
        arch = self.predict_arch(configs)
        drops = np.asarray([self.compression_drop(c) for c in configs])
        return np.clip(arch - drops, 0.0, 1.0)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (JSON, versioned) and ``path`` with suffix ``.npz`` (regressor arrays)."""
        if self.kind is None:
            raise RuntimeError("nothing to save: the predictor is not fitted")
        path = Path(path)
        npz = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_name(f".{npz.stem}.tmp.npz")
        np.savez(tmp, **self.params)
        os.replace(tmp, npz)
        save_versioned(path, FORMAT, FORMAT_VERSION, {
            "space": self.space.spec(), "model": self.kind, "features": self.feature_set, "target": self.target,
            "arrays": npz.name, "n_features": int(self.features([self.space.largest()]).shape[1]),
            "metrics": self.metrics,
            "sensitivity": self.sensitivity, "drop_scale": self.drop_scale, "meta": self.meta,
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space=None) -> "AccuracyPredictor":
        """Load a predictor written by :meth:`save` (the space is rebuilt from its spec unless given)."""
        path = Path(path)
        doc = load_versioned(path, FORMAT, (1, FORMAT_VERSION))  # v1: encode features, accuracy target
        if space is None:
            from fitplan.search_spaces import create_space

            space = create_space(doc["space"])
        elif json.loads(dumps(space.spec())) != doc["space"]:
            raise ConfigError("space", f"{path} was fitted for {doc['space']}, not {space.spec()}")
        pred = cls(space)
        pred.feature_set, pred.target = doc.get("features", "encode"), doc.get("target", "accuracy")
        if pred.feature_set not in FEATURE_SETS:
            raise ConfigError("features", f"{path}: unknown feature set {pred.feature_set!r}", FEATURE_SETS)
        n_features = int(pred.features([space.largest()]).shape[1])
        if n_features != doc["n_features"]:
            raise ConfigError("n_features", f"{path} expects {doc['n_features']} features, the space gives "
                              f"{n_features}")
        with np.load(path.with_name(doc["arrays"]), allow_pickle=False) as z:
            pred.params = {k: z[k] for k in z.files}
        pred.kind, pred.metrics, pred.meta = doc["model"], doc["metrics"], doc.get("meta", {})
        pred.sensitivity = doc.get("sensitivity")
        pred.drop_scale = float(doc.get("drop_scale", 1.0))
        return pred
