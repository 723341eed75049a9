"""Where the planner's predictions come from: adapters to :mod:`fitplan.predictors`, and labelled fallbacks.

Latency (``configs -> ms per batch``), in order:

1. :func:`fitplan.predictors.predictor_for_device` ``(space, profile)``: the meta-learned predictor of a
   built-in device, or the adapted one stored in ``profile.predictors[space]``.
   A calibrated analytic state (:class:`fitplan.predictors.CostModelPredictor`) applies to any space spec
   it was fitted in.
2. Local, measurable profiles only: :func:`fit_local_latency`, a :class:`fitplan.predictors.CostModelPredictor`
   (per-unit non-negative least squares on MACs, activation elements and launches) fitted to ``n`` configs
   *measured here* with ONNX Runtime (cached in ``out_dir``). It is a real few-shot predictor for this exact
   space spec. When the space searches 8-bit units and the profile does not rule int8 out, a third of the
   configs are all-int8 and a third mixed 8/32-bit, so the model prices every unit by its own bit-width
   (the search then places 8-bit units where they pay; :func:`best_int8_gain` decides whether they can).
3. Otherwise: :class:`~fitplan.errors.ConfigError` naming ``device`` (the planner never guesses latency).

Accuracy (``configs -> [0, 1]``), in order: an :class:`fitplan.predictors.AccuracyPredictor` built for
the trained supernet and data; else, when data and a supernet are given, :class:`SubnetAccuracyModel`
(ridge regression on arch features over subnets *evaluated on the validation split*, plus a documented
compression prior); else an analytic capacity proxy, labelled as such.

Each adapter returns ``(predict, description)``; the description is what the plan's ``predicted_by`` says.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError, FitplanError
from fitplan.jsonio import atomic_write_text, dumps
from fitplan.planner.metrics import takes_unit_arrays, unit_costs_cached

Config = dict[str, Any]
Predict = Callable[[Sequence[Config]], np.ndarray]


# ====================================================================== observations (both models)
def collect_samples(space: Any, first: Sequence[Config], n: int, seed: int,
                    observe: Callable[[Config], dict[str, Any] | None], *, cache: str | Path | None = None,
                    cache_key: Mapping[str, Any] | None = None, desc: str = "",
                    retry_unstable: bool = False) -> list[dict[str, Any]]:
    """Observe ``n`` configs (``first``, then seeded random uncompressed ones) as ``{"config", **observe(cfg)}``.

    Resumable: samples are appended to the JSON ``cache`` after each observation and reused when the cache
    was written for the same space spec and ``cache_key``; ``observe`` returning ``None`` skips a config.
    ``retry_unstable``: observations with ``"stable": False`` (a measurement whose stopping rule ran out of
    time) are observed once more after all others; ``latency_ms`` becomes the geometric mean of both attempts,
    the other fields those of the attempt with the tighter ``rel_ci`` (see
    :func:`fitplan.hw_profiles.measure.combined_records`: on a shared VM a measurement inside a slow or fast
    machine state can be off by 20 %, and no single attempt is reliably the right one).
    """
    from tqdm.auto import tqdm

    key = {"space": space.spec(), **dict(cache_key or {})}
    samples: list[dict[str, Any]] = []
    if cache is not None and Path(cache).is_file():
        doc = json.loads(Path(cache).read_text())
        if all(doc.get(k) == v for k, v in key.items()):
            samples = doc["samples"]
    rng = np.random.default_rng(seed)
    configs = list(first)
    while len(configs) < n:
        configs.append(space.sample(rng, compression=False))
    from fitplan.hw_profiles.measure import config_key

    have = {config_key(s["config"]) for s in samples}
    for cfg in tqdm(configs, desc=desc, leave=False):
        if config_key(cfg) in have:
            continue
        obs = observe(cfg)
        if obs is None:
            continue
        samples.append({"config": cfg, **obs})
        if cache is not None:
            atomic_write_text(cache, dumps({**key, "samples": samples}))
    if retry_unstable:
        from fitplan.hw_profiles.measure import combine_latencies, measurement_rank

        again = [s for s in samples if s.get("stable") is False and s.get("attempts", 1) < 2]
        for s in tqdm(again, desc=f"{desc} (unstable, again)", leave=False):
            obs = observe(s["config"])
            if obs is not None:
                ms = [v for v in (s.get("latency_ms"), obs.get("latency_ms")) if v]
                if measurement_rank({"status": "ok", **obs}) <= measurement_rank({"status": "ok", **s}):
                    s.update(obs)
                if len(ms) == 2:
                    s["latency_ms"] = combine_latencies(ms)
            s["attempts"] = 2
            if cache is not None:
                atomic_write_text(cache, dumps({**key, "samples": samples}))
    return samples


# ====================================================================== latency
def fit_local_latency(space: Any, profile: Any, n: int = 12, seed: int = 0, cache: str | Path | None = None,
                      batch: int = 1, quick: bool = False, int8: bool = False
                      ) -> tuple[Any, list[dict[str, Any]], str]:
    """Measure ``n`` configs here (resumable via ``cache``) and fit
    :class:`fitplan.predictors.CostModelPredictor` to them.

    ``int8=False``: uncompressed configs only (smallest, largest, then seeded random ones); the predictor has
    no data on compression (``models_compression`` is false: the planner adds compression with its
    capability model). ``int8=True``: :func:`fitplan.hw_profiles.measure.sample_measure_configs` groups --
    an architecture in fp32 and all-int8, another with a random per-unit 8/32-bit mix -- so the predictor
    prices every unit by its own bit-width: on ONNX Runtime CPUs int8 pays for dense (pointwise) convs and
    costs for depthwise ones and for large activations, so a net that keeps its early layers float and runs
    its late ones in int8 can be faster than both pure precisions while all-int8 is not
    (``benchmarks/mixed_precision.py``); a whole-network factor cannot express that. Where fitplan ships a
    measured dataset of the space (another machine's), the fit is anchored on it when that cross-validates
    better (:func:`fitplan.predictors.analytic.fit_with_source_prior`).

    Returns ``(predictor, samples, method)``; ``method`` is the measurement method of the last sample.
    """
    from fitplan.hw_profiles.measure import sample_measure_configs
    from fitplan.predictors.analytic import fit_with_source_prior

    supernet = space.build_supernet()
    threads = int(getattr(getattr(profile, "runtime", None), "threads", None) or 1)
    rule = timing_rule(quick)

    def measure(cfg: Config) -> dict[str, Any] | None:
        m = measure_latency(space, cfg, profile, supernet=supernet, batch=batch, threads=threads, rule=rule)
        if m.get("value") is None:
            return None
        return {"latency_ms": m["value"], "method": m["method"], "stable": m.get("stable"), "rel_ci": m.get("rel_ci")}

    first = sample_measure_configs(space, n, seed=seed, bits=(8, 32)) if int8 else [space.smallest(), space.largest()]
    samples = collect_samples(space, first, n, seed, measure, cache=cache, cache_key={"batch": batch},
                              desc="calibrate local latency", retry_unstable=not quick)
    method = next((s["method"] for s in reversed(samples) if "method" in s), "")
    model = fit_with_source_prior(space, [{"config": s["config"], "latency_ms": s["latency_ms"]} for s in samples],
                                  device=str(getattr(profile, "name", profile)))
    return model, samples, method


def int8_searchable(space: Any, profile: Any) -> bool:
    """Whether 8-bit units are a choice: the space has 8 among its ``bits`` choices and the profile does not
    state that int8 gives no speed-up."""
    from fitplan.planner.metrics import capability_state

    dims = getattr(space, "dimensions", {})
    return "bits" in dims and 8 in dims["bits"].choices and capability_state(profile, "int8") != "no"


def local_int8_calibration(space: Any, profile: Any) -> bool:
    """Whether the local calibration should measure 8-bit configs (all-int8 and mixed): 8-bit units are a
    choice (:func:`int8_searchable`) next to 32-bit ones."""
    return int8_searchable(space, profile) and 32 in space.dimensions["bits"].choices


def best_int8_gain(model: Any, space: Any) -> float | None:
    """Largest predicted speed-up that 8-bit units buy, over the smallest and the largest architecture: the
    fp32 latency divided by the best of all-int8 and every split "first k active units float, the rest
    int8" (or the reverse). ``None`` when ``model`` has no int8 data.

    Why splits: where int8 pays only for some units (late, pointwise-heavy ones on ONNX Runtime CPUs) the
    whole-network int8 factor is ~1 or below, yet a float-first split is faster than fp32. The planner keeps
    ``bits=8`` searchable when this gain is above 1; the search itself then prices every unit.
    """
    from fitplan.hw_profiles.measure import split_bits

    if "bits=8" not in getattr(model, "classes", ()):
        return None
    best = 0.0
    for arch in (space.smallest(), space.largest()):
        n_units = len(arch["bits"])
        active = [i for i, u in enumerate(space.unit_costs(arch)) if u.active]
        variants = [[8] * n_units] + [split_bits(n_units, active, k, first, rest) for k in range(1, len(active))
                                      for first, rest in ((32, 8), (8, 32))]
        cfgs = [space.validate({**arch, "bits": [32] * n_units})] + [space.validate({**arch, "bits": b})
                                                                      for b in variants]
        ms = np.asarray(model.predict(cfgs, unknown="fp32", validate=False), dtype=float)
        best = max(best, float(ms[0] / ms[1:].min()))
    return best


def timing_rule(quick: bool) -> dict[str, Any]:
    """The planner's stopping rule for one measurement: short for tests / ``--quick`` runs, else capped at 3 s
    of timed runs (interleaved with the reference model, see :mod:`fitplan.hw_profiles.reference`)."""
    return {"max_seconds": 0.5, "warmup_s": 0.05, "min_repeats": 10} if quick else {"max_seconds": 3.0}


def measure_latency(space: Any, config: Config, profile: Any, *, supernet: Any = None, batch: int = 1,
                    threads: int = 1, rule: Mapping[str, Any] | None = None,
                    calib: Any = None) -> dict[str, Any]:
    """One local measurement as ``{"value": ms | None, "p10", "p90", "method", "status"}`` through
    :func:`fitplan.hw_profiles.measure.measure_config` (static int8 QDQ for 8-bit units, 4-bit not
    measurable on ORT CPU)."""
    from fitplan.hw_profiles.measure import measure_config

    m = measure_config(space, config, profile, threads=threads, batch=batch, supernet=supernet,
                       calib_inputs=calib, **dict(rule or {}))
    if not m.ok:
        return {"value": None, "status": m.status, "method": m.reason or m.method}
    host = m.fingerprint.get("hostname", m.fingerprint.get("host", ""))
    return {"value": m.median_ms, "p10": m.p10_ms, "p90": m.p90_ms, "status": "ok", "stable": bool(m.stable),
            "rel_ci": m.rel_ci,
            "method": f"measured: {m.method}; host {host}", "when": m.measured_at}


def effects_to_speedups(effects: Mapping[str, float]) -> dict[str, float]:
    """Map an AdaptedPredictor's learned effects (``lat = fp32 * (1 - f * share)``) to the planner's
    speed-up keys: ``bits=8`` -> ``int8`` = 1 / (1 - f) (the speed-up when the whole net is int8)."""
    keys = {"bits=8": "int8", "bits=4": "int4", "sparsity:unstructured": "sparse_unstructured",
            "sparsity:2:4": "sparse_2:4"}
    out = {}
    for eff, f in effects.items():
        if eff in keys and f < 1.0:
            out[keys[eff]] = 1.0 / (1.0 - f)
    return out


def _predictors_latency(space: Any, profile: Any) -> tuple[Any, str]:
    """The :mod:`fitplan.predictors` predictor for this space and device, when one applies: the profile's
    calibrated state (``profile.predictors[space]``) or the built-in device table. An analytic state
    (:class:`~fitplan.predictors.CostModelPredictor`) applies to the exact space spec it was fitted in; the
    meta-learned ones cover the space's default spec (the shipped archs) only. Otherwise ``ConfigError``."""
    from fitplan.predictors.analytic import ANALYTIC_FORMAT
    from fitplan.predictors.features import PREDICTOR_SPACES
    from fitplan.predictors.latency import load_profile_predictor, predictor_for_device
    from fitplan.search_spaces import create_space

    state = (getattr(profile, "predictors", None) or {}).get(space.name)
    if state and state.get("format") == ANALYTIC_FORMAT:
        pred = load_profile_predictor(state)
        if pred.space.spec() != space.spec():
            raise ConfigError("model", f"the predictor calibrated for {profile.name} was fitted in space spec "
                                       f"{pred.space.spec()}, not {space.spec()}")
        return pred, f"predictor calibrated for {profile.name}"
    if space.name not in PREDICTOR_SPACES:
        raise ConfigError("model", f"no meta-learned latency predictor for space {space.name!r}", PREDICTOR_SPACES)
    if space.spec() != create_space(space.name).spec():
        raise ConfigError("model", "latency predictors cover the default spec of the space only")
    if state:
        return load_profile_predictor(state), f"predictor calibrated for {profile.name}"
    return predictor_for_device(space.name, profile.name), f"built-in table of {profile.name}"


def resolve_latency(space: Any, profile: Any, *, out_dir: Path | None = None, batch: int = 1,
                    quick: bool = False, seed: int = 0, prefer_local_fit: bool | None = None
                    ) -> tuple[Predict, str, bool, dict[str, float]]:
    """``(predict, description, models_compression, known_speedups)`` for ``space`` on ``profile`` (see
    module doc). ``known_speedups`` are compression speed-ups the predictor itself has learned."""
    local = bool(getattr(getattr(profile, "runtime", None), "local", False))
    errors = []
    if not (local and prefer_local_fit):
        try:
            pred, how = _predictors_latency(space, profile)
            predict = lambda configs: pred.predict(list(configs), unknown="fp32")  # noqa: E731
            prov = getattr(pred, "provenance", {}) or {}
            desc = (f"predicted: fitplan.predictors {how} ({prov.get('method', type(pred).__name__)}; "
                    f"{pred.n_samples} samples; known compression effects: {sorted(pred.effects) or 'none'})")
            return predict, desc, bool(pred.effects), effects_to_speedups(pred.effects)
        except (ImportError, FitplanError, KeyError, ValueError, NotImplementedError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    if local:
        cache = out_dir / "latency_calibration.json" if out_dir is not None else None
        int8 = local_int8_calibration(space, profile)
        n = 8 if quick else 16
        if int8:  # whole groups of three (fp32 / all-int8 / mixed)
            n = -(-n // 3) * 3
        model, samples, method = fit_local_latency(space, profile, n=n, seed=seed, cache=cache, batch=batch,
                                                   quick=quick, int8=int8)
        kinds = "fp32, all-int8 and mixed 8/32-bit" if int8 else "uncompressed"
        desc = (f"predicted: fitplan.predictors CostModelPredictor (per-unit NNLS on dense/depthwise MACs, "
                f"activations, launches, per bit-width) fitted to {len(samples)} {kinds} configs measured here "
                f"({method[:120]})"
                + ("; anchored on the shipped source-machine model"
                   if model.provenance.get("prior_selected_by", {}).get("chosen") == "prior" else ""))
        predict = lambda configs: model.predict(list(configs), unknown="fp32", validate=False)  # noqa: E731
        learned = effects_to_speedups(model.effects)
        gain = best_int8_gain(model, space)
        if gain is not None:
            learned["int8"] = gain
        return predict, desc, model.models_compression, learned
    raise ConfigError("device", f"no latency predictor for space {space.name!r} on device "
                                f"{getattr(profile, 'name', profile)!r} and the device is not local, so it "
                                f"cannot be measured ({'; '.join(errors)})")


# ====================================================================== accuracy
#: prior accuracy cost of compressing ALL of a network's MACs at a setting (absolute fraction); scaled by
#: each unit's MAC share. Orders of magnitude from the QAT/pruning literature (8-bit QAT ~0-0.5 points,
#: 4-bit QAT ~1-3 points, 50 % magnitude pruning + fine-tune ~0.5-1 point, 75 % ~2-4 points). An
#: assumption, recorded as such in the plan's predicted_by.
BITS_PRIOR = {32: 0.0, 16: 0.0, 8: 0.003, 4: 0.03}
SPARSITY_PRIOR = {0.0: 0.0, 0.25: 0.002, 0.5: 0.008, 0.75: 0.03}


def compression_penalty(space: Any, configs: Sequence[Config], ua: Any = None) -> np.ndarray:
    """Prior accuracy cost of the configs' bits and sparsity (``BITS_PRIOR`` / ``SPARSITY_PRIOR`` by MAC share).
    ``ua``: the configs' :class:`~fitplan.planner.metrics.UnitArrays` when the caller has them already."""
    from fitplan.planner.metrics import UnitArrays

    ua = UnitArrays.of(space, configs) if ua is None else ua
    tot = ua.macs.sum(axis=1, keepdims=True)
    frac = np.divide(ua.macs, tot, out=np.zeros_like(ua.macs), where=tot > 0)
    pb = np.vectorize(lambda b: BITS_PRIOR.get(int(b), 0.03))(ua.bits)
    ps = np.vectorize(lambda s: SPARSITY_PRIOR.get(float(s), 0.03 * s / 0.75))(ua.sparsity)
    return (frac * (pb + ps)).sum(axis=1)


class CapacityProxy:
    """No data, no predictor: a monotone *proxy* in [0, 1] (log MACs and params, scaled so the largest
    subnet is 1 and the smallest 0.5) minus :func:`compression_penalty`. Orders configs; is not an
    accuracy. Labelled ``proxy`` in plans."""

    def __init__(self, space: Any):
        self.space = space
        lo, hi = (self._raw([space.smallest()])[0], self._raw([space.largest()])[0])
        self.lo, self.hi = lo, max(hi, lo + 1e-9)

    def _raw(self, configs: Sequence[Config]) -> np.ndarray:
        x = []
        for cfg in configs:
            units = unit_costs_cached(self.space, cfg)
            x.append(0.7 * np.log1p(sum(u.macs for u in units)) + 0.3 * np.log1p(sum(u.params for u in units)))
        return np.asarray(x)

    @takes_unit_arrays
    def predict(self, configs: Sequence[Config], ua: Any = None) -> np.ndarray:
        s = 0.5 + 0.5 * (self._raw(configs) - self.lo) / (self.hi - self.lo)
        return s - compression_penalty(self.space, configs, ua)


class SubnetAccuracyModel:
    """Ridge regression of *measured* validation accuracy of supernet subnets (BN recalibrated) on
    ``space.arch_features`` + log costs, plus :func:`compression_penalty` (prior)."""

    def __init__(self, space: Any, coef: np.ndarray, mean: np.ndarray, samples: list[dict[str, Any]]):
        self.space, self.coef, self.mean, self.samples = space, coef, mean, samples

    def _x(self, configs: Sequence[Config]) -> np.ndarray:
        rows = []
        for cfg in configs:
            _, v = self.space.arch_features(cfg)
            units = unit_costs_cached(self.space, cfg)
            rows.append(v + [np.log1p(sum(u.macs for u in units)), np.log1p(sum(u.params for u in units)), 1.0])
        return np.asarray(rows, dtype=np.float64)

    @takes_unit_arrays
    def predict(self, configs: Sequence[Config], ua: Any = None) -> np.ndarray:
        return np.clip(self._x(configs) @ self.coef, 0.0, 1.0) - compression_penalty(self.space, configs, ua)

    @classmethod
    def fit(cls, space: Any, supernet: Any, data: Any, n: int = 16, seed: int = 0, ridge: float = 1.0,
            cache: Path | None = None) -> "SubnetAccuracyModel":
        samples = collect_samples(space, [space.largest(), space.smallest()], n, seed,
                                  lambda cfg: {"accuracy": evaluate_subnet(supernet, space, cfg, data)},
                                  cache=cache, desc="evaluate subnets (accuracy model)")
        model = cls(space, np.zeros(1), np.zeros(1), samples)
        x = model._x([s["config"] for s in samples])
        y = np.asarray([s["accuracy"] for s in samples])
        a = x.T @ x + ridge * np.eye(x.shape[1])
        a[-1, -1] -= ridge  # do not shrink the intercept
        model.coef = np.linalg.solve(a, x.T @ y)
        return model


def evaluate_subnet(supernet: Any, space: Any, config: Config, data: Any, *, calib_batches: int = 4,
                    max_batches: int | None = None) -> float:
    """Measured top-1 accuracy of one subnet of the supernet on the validation split (BN recalibrated on
    ``calib_batches`` training batches first, as OFA does)."""
    from fitplan.data import calibration_batches
    from fitplan.search_spaces.training import evaluate

    calib = calibration_batches(data, n_batches=calib_batches, batch_size=64)
    acc = evaluate(supernet, config, data.loader("val", batch_size=256), calib, max_batches=max_batches)
    return float(acc)


def sensitivity_choices(space: Any, restrict: Mapping[str, Sequence[Any]] | None) -> dict[str, Any]:
    """:func:`fitplan.predictors.accuracy.measure_sensitivity` keywords for the compression choices the
    search keeps (``restrict`` as :func:`fitplan.planner.metrics.restricted_dimensions` returns it)."""
    restrict = dict(restrict or {})
    out: dict[str, Any] = {}
    if "bits" in restrict:
        out["bits"] = [int(b) for b in restrict["bits"]]
    if "sparsity" in restrict:
        out["sparsities"] = [float(s) for s in restrict["sparsity"]]
    if "sparsity_pattern" in restrict:
        out["two_four"] = "2:4" in restrict["sparsity_pattern"]
    return out


def resolve_accuracy(space: Any, supernet: Any, data: Any, *, out_dir: Path | None = None, seed: int = 0,
                     quick: bool = False, sensitivity: bool = True, n_subnets: int = 80,
                     restrict: Mapping[str, Sequence[Any]] | None = None) -> tuple[Predict, str]:
    """``(predict, description)`` of accuracy (see module doc).

    With a trained supernet and data: :class:`fitplan.predictors.accuracy.AccuracyPredictor` built on
    subnets evaluated on the validation split (cached in ``out_dir/accuracy_predictor.json``), with the
    measured per-unit compression sensitivity when ``sensitivity`` (the planner asks for it only when
    compression is searched; ``restrict``, the planner's dimension restrictions, limits it to the searched
    bits / sparsity choices); without it, compression costs the documented prior
    (:func:`compression_penalty`). Without data: :class:`CapacityProxy`.
    """
    choices = sensitivity_choices(space, restrict)
    if data is not None and supernet is not None:
        try:
            from fitplan.data import calibration_batches
            from fitplan.predictors.accuracy import AccuracyPredictor

            path = out_dir / "accuracy_predictor.json" if out_dir is not None else None
            pred = None
            if path is not None and path.is_file():
                pred = AccuracyPredictor.load(path, space=space)
                if sensitivity and not pred.covers(choices):
                    pred = None
            if pred is None:
                calib = calibration_batches(data, n_batches=2 if quick else 4, batch_size=64, seed=seed)
                pred = AccuracyPredictor.build(supernet, data.loader("val", batch_size=256), calib,
                                               n_subnets=min(8, n_subnets) if quick else n_subnets, seed=seed, sensitivity=sensitivity,
                                               sensitivity_choices=choices)
                if path is not None:
                    pred.save(path)
            n = len(pred.meta.get("measured", {}).get("configs", []))
            tau = (pred.metrics or {}).get("kendall_tau_holdout")
            desc = (f"predicted: fitplan.predictors AccuracyPredictor ({pred.kind}, {n} subnets measured on the "
                    f"validation split" + (f", holdout Kendall tau {tau:.2f}" if isinstance(tau, float) else "") + ")")
            if pred.sensitivity is not None:
                return pred.predict, desc + " - measured per-unit compression sensitivity"
            @takes_unit_arrays
            def with_prior(configs: Sequence[Config], ua: Any = None) -> np.ndarray:
                return np.clip(pred.predict(configs) - compression_penalty(space, configs, ua), 0, 1)

            return with_prior, desc + " - compression prior (assumed, see planner.predict)"
        except (ImportError, FitplanError, RuntimeError, ValueError) as e:
            note = f"{type(e).__name__}: {e}"
        cache = out_dir / "accuracy_samples.json" if out_dir is not None else None
        m = SubnetAccuracyModel.fit(space, supernet, data, n=6 if quick else 16, seed=seed, cache=cache)
        return m.predict, (f"predicted: planner SubnetAccuracyModel (ridge on {len(m.samples)} subnets evaluated "
                           f"on the validation split) + compression prior (assumed); AccuracyPredictor "
                           f"unavailable: {note[:120]}")
    p = CapacityProxy(space)
    return p.predict, ("proxy: analytic capacity score (log MACs/params, largest = 1.0) minus a compression "
                       "prior; not an accuracy (no data and no accuracy predictor)")
