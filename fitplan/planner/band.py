"""Band candidates: searched networks of the largest capacity whose corrected latency uses most of the budget
(:func:`add_band`), verified beside the predictor's front and the uniformly scaled ones."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fitplan.planner.candidates import ValidationScorer, try_candidate
from fitplan.planner.correction import class_corrected, inner_front
from fitplan.planner.entries import accept_ms, make_entry, measured_entries, predicted_key, rank_key

if TYPE_CHECKING:
    from fitplan.planner.request import PlanContext


#: searched networks whose class-corrected predicted latency is at least this share of the accepted latency
#: "use most of the budget": :func:`add_band` picks among them
BAND_TIER = 0.8


#: networks of that band validated by :func:`add_band` before the best are measured
BAND_POOL = 8


def capacity_front(ctx: PlanContext, corrected: Callable[[Any], np.ndarray], seed: int) -> list[dict[str, Any]]:
    """Configs of the largest capacity (total MACs) for their corrected latency within the accepted latency:
    the front of a vectorised NSGA-II on (log MACs up, ``corrected`` latency down), unscored."""
    from dataclasses import replace

    from fitplan.planner.metrics import UnitArrays, takes_unit_arrays

    @takes_unit_arrays
    def capacity(configs: Any, ua: Any = None) -> np.ndarray:
        ua = UnitArrays.of(ctx.space, list(configs)) if ua is None else ua
        return np.log(np.maximum(ua.macs.sum(axis=1), 1.0))

    ev = replace(ctx.evaluator, latency_predict=corrected, accuracy_predict=capacity, latency_models_compression=True)
    return inner_front(ctx, ev, replace(ctx.budget, latency_ms=accept_ms(ctx)), seed)


def add_band(ctx: PlanContext, entries: list[dict[str, Any]], ranked: list[dict[str, Any]], notes: list[str],
              score: ValidationScorer) -> list[dict[str, Any]]:
    """Verify searched networks that use most of the budget (``band_candidates`` of them, ``n + 2``
    measurements at most) and merge those that pass with ``ranked``, tagged ``"source": "band"``.

    The band: configs of the largest capacity for their latency (:func:`capacity_front`) whose latency, predicted
    and corrected per precision class by everything measured so far
    (:func:`~fitplan.planner.correction.class_corrected`), lies in [``BAND_TIER``, 1] x the accepted latency.
    ``BAND_POOL`` distinct networks spread over that range are evaluated on the validation split (as materialised,
    before fine-tuning) and measured best first.

    Why: the accuracy predictor learns from subnets before fine-tuning (holdout Kendall tau 0.09-0.29 on
    plan_quality's mnist5k-rot runs), so the predicted front often ends at about half the budget and only the
    uniform candidates use the rest; capacity ranks where the predictor cannot, and the validation split
    ranks networks of about equal latency well (Spearman 0.86 with test top-1 after fine-tuning among
    uniform configs, docs/DEVELOPING.md)."""
    n = ctx.request.band_candidates
    if n <= 0:
        return ranked
    accept = accept_ms(ctx)
    measured = measured_entries(entries)
    corrected = class_corrected(ctx, measured)
    cfgs = capacity_front(ctx, corrected, ctx.request.seed + 23)
    known = {ctx.space.network_key(e["config"]) for e in entries}
    ms = corrected(cfgs) if cfgs else np.zeros(0)
    band: dict[str, tuple[dict[str, Any], float]] = {}
    for c, v in sorted(zip(cfgs, ms), key=lambda t: t[1]):
        key = ctx.space.network_key(c)
        if BAND_TIER * accept <= v <= accept and key not in known:
            band.setdefault(key, (c, float(v)))
    if not band:
        notes.append(f"band: no searched network of the largest capacity predicted at {BAND_TIER:.0%}-100 % of "
                     "the accepted latency that is not a candidate already")
        return ranked
    pool_cfgs = list(band.values())
    if len(pool_cfgs) > BAND_POOL:  # spread over the band's latency range
        pick = np.unique(np.linspace(0, len(pool_cfgs) - 1, BAND_POOL).round().astype(int))
        pool_cfgs = [pool_cfgs[i] for i in pick]
    metrics, _, _ = ctx.problem.score([c for c, _ in pool_cfgs])
    pool = [make_entry(ctx.problem, c, metrics, i, None) for i, (c, _) in enumerate(pool_cfgs)]
    keys = score(pool)
    order = sorted(range(len(pool)), key=lambda i: (keys[i][0], keys[i][1]), reverse=True)
    passed, tried = [], []
    for i in order[: n + 2]:
        try_candidate(ctx, pool[i], "band", accept, tried, passed)
        if len(passed) >= n:
            break
    for e in tried:
        score.record(e)
    entries.extend(measured_entries(tried))
    entries.sort(key=predicted_key)
    notes.append(f"band: {len(band)} searched network(s) of the largest capacity predicted at {BAND_TIER:.0%}-100 % "
                 f"of the accepted latency (corrected per precision class); {len(pool)} validated, "
                 f"{len(measured_entries(tried))} measured best on validation first, {len(passed)} within the budget")
    return sorted(ranked + passed, key=rank_key)
