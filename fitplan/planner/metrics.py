"""Predicted metrics of joint configs, vectorised over a batch: the planner's objective function.

:class:`Evaluator` turns a list of validated configs into arrays of ``accuracy``, ``latency_ms``,
``size_mb``, ``memory_mb`` (and ``energy_mj`` when the profile has power data). Everything here is a
*prediction*; :attr:`Evaluator.predicted_by` names the model behind each metric.

Compression and latency. The shipped latency predictors are trained on architectures only (HELP data has
no bit-widths), so the planner adds compression with an Amdahl model over the units' MAC fractions::

    latency = arch_latency * (1 - sum_u f_u * (1 - 1 / speedup(bits_u, sparsity_u)))

using only the speed-ups the hardware profile *states* (``int8``, ``int4``, ``sparse_unstructured``,
``sparse_2:4``). Where the profile does not know a speed-up, none is assumed (the factor is 1) and a note
tells the user; when compression then buys nothing the device cares about (no size/memory budget), those
dimensions are fixed to "no compression" so the search does not waste trials on them
(:func:`restricted_dimensions`). A latency predictor that models compression itself sets
``models_compression = True`` and is used as is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fitplan.registry import Registry

Config = dict[str, Any]

#: compression speed-up key -> the :class:`~fitplan.hw_profiles.profile.Capabilities` field that says
#: whether it helps on the device (``yes`` / ``no`` / ``unknown``)
CAPABILITY_FIELDS: dict[str, str] = {
    "int8": "int8_speedup",
    "int4": "int4_speedup",
    "sparse_unstructured": "sparse_kernels",
    "sparse_2:4": "sparse_kernels",
}


def _lookup(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def capability_state(profile: Any, key: str) -> str:
    """``"yes"`` / ``"no"`` / ``"unknown"`` for a speed-up key (``int8``, ``int4``, ``sparse_unstructured``,
    ``sparse_2:4``) from ``profile.capabilities``; anything unreadable counts as unknown."""
    v = _lookup(_lookup(profile, "capabilities"), CAPABILITY_FIELDS.get(key, key))
    return v if v in ("yes", "no", "unknown") else "unknown"


def compression_speedups(profile: Any, factors: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """Speed-up factor per compression key, or ``None`` (no gain assumed).

    A factor is only used when one is *known*: measured by the planner on a local device or given by the
    caller (``factors``), and the profile does not say ``no``. A bare ``yes`` without a factor still gives
    ``None``: the planner never invents a number.
    """
    factors = dict(factors or {})
    out: dict[str, float | None] = {}
    for key in CAPABILITY_FIELDS:
        f = factors.get(key)
        ok = capability_state(profile, key) != "no" and isinstance(f, (int, float)) and math.isfinite(f) and f > 0
        out[key] = float(f) if ok else None
    return out


_COST_CACHE: dict[tuple, list[Any]] = {}


def unit_costs_cached(space: Any, config: Config) -> list[Any]:
    """``space.unit_costs(config)`` memoised on the architecture keys (compression does not change unit
    costs), so the several metrics of one evaluation compute them once. Bounded (cleared at 200k)."""
    cached = getattr(space, "_fitplan_cost_key", None)
    if cached is None:
        cached = (tuple(d.name for d in space.arch_dimensions()), repr(sorted(space.spec().items())))
        try:
            space._fitplan_cost_key = cached
        except AttributeError:
            pass
    names, spec_key = cached
    key = (spec_key,) + tuple(tuple(v) if isinstance(v, list) else v for v in (config.get(n) for n in names))
    hit = _COST_CACHE.get(key)
    if hit is None:
        if len(_COST_CACHE) > 200_000:
            _COST_CACHE.clear()
        hit = _COST_CACHE[key] = space.unit_costs(config)
    return hit


@dataclass
class UnitArrays:
    """Per-unit costs of a batch of configs as ``[n_configs, n_units]`` arrays."""

    macs: np.ndarray
    params: np.ndarray
    act: np.ndarray
    bits: np.ndarray
    sparsity: np.ndarray
    two_four: np.ndarray  # [n] bool
    input_elems: np.ndarray  # [n]

    @classmethod
    def of(cls, space: Any, configs: Sequence[Config]) -> "UnitArrays":
        n, u = len(configs), len(space.units())
        macs = np.zeros((n, u))
        params = np.zeros((n, u))
        act = np.zeros((n, u))
        inp = np.zeros(n)
        for i, cfg in enumerate(configs):
            for j, c in enumerate(unit_costs_cached(space, cfg)):
                macs[i, j], params[i, j], act[i, j] = c.macs, c.params, c.act_elems
            inp[i] = float(np.prod(space.input_shape(cfg)))
        bits = np.asarray([c["bits"] for c in configs], dtype=np.float64).reshape(n, u)
        sp = np.asarray([c["sparsity"] for c in configs], dtype=np.float64).reshape(n, u)
        tf = np.asarray([c.get("sparsity_pattern") == "2:4" for c in configs], dtype=bool)
        return cls(macs, params, act, bits, sp, tf, inp)


def size_bytes(ua: UnitArrays) -> np.ndarray:
    """Stored weight bytes: ``params * bits/8 * (1 - sparsity)`` plus a 1-bit-per-weight mask (unstructured)
    or 2-bit index per kept weight (2:4, i.e. the same 1/8 byte per weight) where a unit is sparse.
    Per-channel quantisation scales are ignored (< 1 % for these nets)."""
    dense = ua.params * (ua.bits / 8.0) * (1.0 - ua.sparsity)
    mask = np.where(ua.sparsity > 0, ua.params / 8.0, 0.0)
    return (dense + mask).sum(axis=1)


def memory_bytes(ua: UnitArrays, batch: int) -> np.ndarray:
    """Peak inference memory estimate: stored weights + fp32 input + the two largest unit activations
    (a producer and its consumer live at once), for ``batch`` inputs."""
    acts = np.sort(ua.act, axis=1)
    two = acts[:, -1] + (acts[:, -2] if acts.shape[1] > 1 else 0.0)
    return size_bytes(ua) + 4.0 * batch * (two + ua.input_elems)


def latency_scale(ua: UnitArrays, speedups: Mapping[str, float | None]) -> np.ndarray:
    """Amdahl factor (<= 1 when a stated speed-up applies) from per-unit bits and sparsity."""
    total = ua.macs.sum(axis=1, keepdims=True)
    frac = np.divide(ua.macs, total, out=np.zeros_like(ua.macs), where=total > 0)
    factor = np.ones_like(ua.macs)
    for bits, key in ((8, "int8"), (4, "int4")):
        s = speedups.get(key)
        if s:
            factor = np.where(ua.bits == bits, factor / s, factor)
    s_un, s_24 = speedups.get("sparse_unstructured"), speedups.get("sparse_2:4")
    if s_un:
        # the factor is for 50 % unstructured sparsity; the saved time fraction scales with the ratio
        sp_factor = np.clip(1.0 - (1.0 - 1.0 / s_un) * ua.sparsity / 0.5, 0.1, 1.0)
        factor = np.where(~ua.two_four[:, None] & (ua.sparsity > 0), factor * sp_factor, factor)
    if s_24:
        factor = np.where(ua.two_four[:, None] & (ua.sparsity > 0), factor / s_24, factor)
    return 1.0 - (frac * (1.0 - factor)).sum(axis=1)


def takes_unit_arrays(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Mark a predictor ``(configs, ua=None) -> values`` for :class:`Evaluator`, which then passes the batch's
    :class:`UnitArrays` it has built anyway (the planner's inner searches call predictors on every
    generation: building the arrays once per batch instead of once per predictor)."""
    fn.takes_unit_arrays = True  # type: ignore[attr-defined]
    return fn


def _predict(fn: Callable[..., np.ndarray], configs: Sequence[Config], ua: UnitArrays) -> np.ndarray:
    return np.asarray(fn(configs, ua) if getattr(fn, "takes_unit_arrays", False) else fn(configs), dtype=np.float64)


#: metric name -> function(evaluator, configs, unit_arrays) -> values. Registered below.
METRICS: Registry[Callable[["Evaluator", Sequence[Config], UnitArrays], np.ndarray]] = Registry("metric")


@dataclass
class Evaluator:
    """Vectorised predicted metrics for one space on one device.

    Args:
        space: the search space.
        latency_predict: ``configs -> ms`` (per batch of ``batch_size``) for the *architecture*; compression
            is added with :func:`latency_scale` unless ``latency_models_compression``.
        accuracy_predict: ``configs -> accuracy`` in [0, 1], compression-aware. Either predictor may take
            the batch's :class:`UnitArrays` too (:func:`takes_unit_arrays`).
        speedups: stated compression speed-ups (``None`` = unknown = no gain assumed).
        batch_size: inputs per batch.
        power_w: average power on the device, when the profile has it (energy = power x latency).
        predicted_by: metric -> description, recorded in the plan.
    """

    space: Any
    latency_predict: Callable[[Sequence[Config]], np.ndarray]
    accuracy_predict: Callable[[Sequence[Config]], np.ndarray]
    speedups: dict[str, float | None] = field(default_factory=dict)
    batch_size: int = 1
    power_w: float | None = None
    latency_models_compression: bool = False
    predicted_by: dict[str, str] = field(default_factory=dict)
    n_evaluated: int = 0

    def metric_names(self) -> list[str]:
        names = ["accuracy", "latency_ms", "size_mb", "memory_mb"]
        if self.power_w:
            names.append("energy_mj")
        return names

    def evaluate(self, configs: Sequence[Config]) -> dict[str, np.ndarray]:
        """All metrics of validated configs, ``{metric: float64[n]}``."""
        configs = list(configs)
        if not configs:
            return {m: np.zeros(0) for m in self.metric_names()}
        ua = UnitArrays.of(self.space, configs)
        out = {m: np.asarray(METRICS.get(m)(self, configs, ua), dtype=np.float64).reshape(len(configs))
               for m in self.metric_names() if m != "energy_mj"}
        if self.power_w:
            out["energy_mj"] = out["latency_ms"] * float(self.power_w)  # W * ms = mJ
        self.n_evaluated += len(configs)
        return out

    def evaluate_one(self, config: Config) -> dict[str, float]:
        return {k: float(v[0]) for k, v in self.evaluate([config]).items()}


@METRICS.register("accuracy")
def _accuracy(ev: Evaluator, configs: Sequence[Config], ua: UnitArrays) -> np.ndarray:
    return _predict(ev.accuracy_predict, configs, ua)


@METRICS.register("latency_ms")
def _latency(ev: Evaluator, configs: Sequence[Config], ua: UnitArrays) -> np.ndarray:
    base = _predict(ev.latency_predict, configs, ua)
    if ev.latency_models_compression:
        return base
    return base * latency_scale(ua, ev.speedups)


@METRICS.register("size_mb")
def _size(ev: Evaluator, configs: Sequence[Config], ua: UnitArrays) -> np.ndarray:
    return size_bytes(ua) / 1e6


@METRICS.register("memory_mb")
def _memory(ev: Evaluator, configs: Sequence[Config], ua: UnitArrays) -> np.ndarray:
    return memory_bytes(ua, ev.batch_size) / 1e6


def restricted_dimensions(space: Any, speedups: Mapping[str, float | None], budgeted: Sequence[str],
                          profile: Any = None) -> tuple[dict[str, list[Any]], list[str]]:
    """Which compression choices to exclude, and notes that tell the user why.

    Returns ``(restrict, notes)``: ``restrict`` maps a dimension name to the values it is limited to
    (``{"bits": [8, 32]}``). A choice stays searchable when the device has a known speed-up for it or when
    it shrinks a budgeted size/memory; otherwise it would only cost accuracy, so it is excluded.
    """
    dims = space.dimensions
    size_matters = any(m in budgeted for m in ("size_mb", "memory_mb"))
    restrict: dict[str, list[Any]] = {}
    notes: list[str] = []
    if "bits" in dims:
        keep = []
        for b in dims["bits"].choices:
            key = {8: "int8", 4: "int4"}.get(int(b))
            if key is None or (speedups.get(key) or 0) > 1.0:
                keep.append(b)
                continue
            state = capability_state(profile, key)
            f = speedups.get(key)
            what = f"measured factor {f:.2f} (slower)" if f else state
            if size_matters:
                keep.append(b)
                notes.append(f"{key} speed-up {what} on this device: bits={b} searched for size/memory only "
                             + ("(predicted latency includes the measured slow-down)" if f else
                                "(predicted latency assumes no gain)"))
            else:
                notes.append(f"{key} speed-up {what} on this device: bits={b} not searched (it would cost "
                             f"accuracy for no latency gain; add a size_mb budget to search it)")
        if len(keep) < len(dims["bits"].choices):
            restrict["bits"] = keep
    if "sparsity" in dims:
        gain = max(speedups.get("sparse_unstructured") or 0, speedups.get("sparse_2:4") or 0) > 1.0
        state = capability_state(profile, "sparse_unstructured")
        if not gain and not size_matters:
            restrict["sparsity"] = [0.0]
            restrict["sparsity_pattern"] = ["unstructured"]
            notes.append(f"sparse-kernel speed-up {state} on this device: sparsity not searched "
                         "(add a size_mb budget to search it)")
        elif not gain:
            notes.append(f"sparse-kernel speed-up {state} on this device: predicted latency assumes no gain "
                         "from sparsity (searched for size/memory only)")
    return restrict, notes
