"""Latency predictions corrected by what the real runtime measured: the fit
(``log(measured / predicted) = a + b log(predicted)``), the same fit per precision class, and a search with
corrected latency. Predicted values in entries stay the predictor's own; corrections only decide what is measured
next."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fitplan.planner.entries import feasible_predicted, make_entry, predicted_key
from fitplan.planner.search import SearchProblem

if TYPE_CHECKING:
    from fitplan.planner.request import PlanContext


#: predicted latencies of the measured candidates must span this factor before the correction fits a slope
SLOPE_MIN_SPAN = 1.5


def latency_correction(measured: list[dict[str, Any]]) -> tuple[float, float]:
    """``(a, b)`` of ``log(measured / predicted) = a + b log(predicted)`` over measured entries: ``b`` by
    least squares (clipped to ±0.5; 0 with fewer than 3 points or predictions spanning less than a factor
    ``SLOPE_MIN_SPAN``), ``a`` the median offset (robust: one noisy measurement moves it far less than a
    worst-case ratio would).

    Why the span: a slope fitted on candidates of nearly equal predicted latency is noise, and extrapolated
    to larger configs it can halve their corrected latency (seen: searched candidates at 0.168-0.171 ms gave
    b = -0.5, and a uniform config predicted 0.59 ms was measured for a 0.38 ms budget)."""
    x = np.log([e["predicted"]["latency_ms"] for e in measured])
    y = np.log([e["measured"]["latency_ms"]["value"] for e in measured]) - x
    spread = len(x) > 2 and float(np.ptp(x)) >= np.log(SLOPE_MIN_SPAN)
    b = float(np.clip(np.cov(x, y, bias=True)[0, 1] / np.var(x), -0.5, 0.5)) if spread else 0.0
    return float(np.median(y - b * x)) if len(x) else 0.0, b


def apply_correction(pred_ms: np.ndarray, a: float, b: float) -> np.ndarray:
    """Predicted latency corrected by :func:`latency_correction`'s fit."""
    return pred_ms * np.exp(a + b * np.log(np.maximum(pred_ms, 1e-12)))


def int8_class(space: Any, configs: list[dict[str, Any]], ua: Any = None) -> np.ndarray:
    """Per config: whether any *active* unit runs below 32 bits (the precision class of its graph).
    ``ua``: the configs' :class:`~fitplan.planner.metrics.UnitArrays` when the caller has them already."""
    from fitplan.planner.metrics import UnitArrays

    if not configs:
        return np.zeros(0, dtype=bool)
    ua = UnitArrays.of(space, configs) if ua is None else ua
    return ((ua.bits < 32) & (ua.macs > 0)).any(axis=1)


def class_corrected(ctx: PlanContext, measured: list[dict[str, Any]]) -> Callable[[Any], np.ndarray]:
    """``configs -> predicted latency`` corrected per precision class (:func:`int8_class`): by
    :func:`latency_correction` fitted on the measured candidates of the config's class when it has at least
    two, else on all of them.

    Why per class: the local model prices each unit by its bit-width, but how far int8 units of a mixed graph
    run from their price drifts with the machine's int8 speed, while fp32 graphs track the fp32 reference
    (docs/DEVELOPING.md: with a calibration from an earlier session, mixed 8/32-bit networks measured 1.3-1.4x
    faster than predicted where fp32 uniform configs measured 1.05-1.2x slower); one correction for both would
    misplace one of them."""
    from fitplan.planner.metrics import METRICS, UnitArrays, takes_unit_arrays

    cls = int8_class(ctx.space, [e["config"] for e in measured])
    pooled = latency_correction(measured)
    fits = {k: (latency_correction([e for e, c in zip(measured, cls) if c == k])
                if int((cls == k).sum()) >= 2 else pooled) for k in (False, True)}
    latency = METRICS.get("latency_ms")

    @takes_unit_arrays
    def corrected(configs: Any, ua: Any = None) -> np.ndarray:
        configs = list(configs)
        ua = UnitArrays.of(ctx.space, configs) if ua is None else ua  # the search passes the batch's arrays
        ms = np.asarray(latency(ctx.evaluator, configs, ua), dtype=np.float64)
        k = int8_class(ctx.space, configs, ua)
        out = ms.copy()
        for key, (a, b) in fits.items():
            out[k == key] = apply_correction(ms[k == key], a, b)
        return out

    return corrected


def inner_front(ctx: PlanContext, evaluator: Any, budget: Any, seed: int) -> list[dict[str, Any]]:
    """The feasible front of a vectorised NSGA-II (not written to the study) over the request's space and
    restrictions, with ``evaluator`` (e.g. latency corrected by measurements) and ``budget``: decoded configs,
    unscored."""
    from fitplan.planner.search import archive_front, evolve

    prob = SearchProblem(ctx.space, evaluator, budget, ctx.problem.restrict)
    res = evolve(prob, 2000 if ctx.request.quick else 5000, seed=seed, progress=False)
    idx = [i for i in archive_front(res, prob) if (res.constraints[i] <= 0).all()]
    return prob.decode_genotypes(res.genotypes[idx])


def search_corrected(ctx: PlanContext, measured: list[dict[str, Any]], seed: int,
                      min_accuracy: float = -np.inf) -> tuple[list[dict[str, Any]], str]:
    """Search again with latency predictions corrected by what the real runtime measured.

    Fits ``log(measured / predicted) = a + b log(predicted)`` on the measured candidates (a robust least
    squares fit: one noisy measurement moves it far less than a worst-case ratio would), runs a vectorised
    NSGA-II (not written to the study) with corrected latency and the true budget, and returns the new
    (unmeasured) front entries predicted more accurate than ``min_accuracy``, best first, with a note of the
    correction. Predicted values in the entries stay the predictor's own."""
    from dataclasses import replace

    from fitplan.hw_profiles.measure import config_key

    a, b = latency_correction(measured)
    raw = ctx.evaluator.latency_predict

    def corrected(configs: Any) -> np.ndarray:
        return apply_correction(np.asarray(raw(configs), dtype=np.float64), a, b)

    known = {config_key(e["config"]) for e in measured}
    cfgs = [c for c in inner_front(ctx, replace(ctx.evaluator, latency_predict=corrected), ctx.budget, seed)
            if config_key(c) not in known]
    new: list[dict[str, Any]] = []
    if cfgs:
        metrics, _, _ = ctx.problem.score(cfgs)
        new = [make_entry(ctx.problem, c, metrics, i, None) for i, c in enumerate(cfgs)]
        new = [e for e in new if feasible_predicted(ctx.problem, {**e["predicted"], "latency_ms": 0.0})
               and e["predicted"]["accuracy"] > min_accuracy]
        new.sort(key=predicted_key)
    how = (f"latency re-predicted as predicted x exp({a:+.3f} {b:+.3f} log predicted), fitted on {len(measured)} "
           "measured candidates")
    return new, how
