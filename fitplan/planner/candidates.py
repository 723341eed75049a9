"""Verification of candidates on the real runtime (local devices): the searched front measured best first, the
uniformly scaled architectures measured beside it, validation of each network on the held-out split, and the
re-searches that close the loop when measurements show the latency predictor biased."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fitplan.errors import ConfigError, InfeasibleBudgetError
from fitplan.planner.correction import apply_correction, latency_correction, search_corrected
from fitplan.planner.entries import (accept_ms, feasible_predicted, make_entry, measured_entries, predicted_key,
                                     rank_key)

if TYPE_CHECKING:
    from fitplan.planner.request import PlanContext


def verify_candidates(ctx: PlanContext, entries: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """Measure candidates best-first until ``top_k`` pass the latency budget with ``latency_margin`` of
    headroom; return those, most accurate first (ties: lower measured latency). Never returns a measured
    violation."""
    from tqdm.auto import tqdm

    req = ctx.request
    limit = ctx.problem.limits["latency_ms"]
    accept = accept_ms(ctx)
    passed: list[dict[str, Any]] = []
    max_measure = max(3 * req.top_k, req.top_k + 5)
    bar = tqdm(entries[:max_measure], desc="verify (measure)", leave=False, disable=req.quick)
    for e in bar:
        m = measure_candidate(ctx, e)
        if m.get("value") is None:
            continue
        if m["value"] <= accept:
            passed.append(e)
        if len(passed) >= req.top_k:
            break
    n_meas = sum(1 for e in entries if e["measured"])
    if not passed:
        best = min((e for e in entries if (e["measured"].get("latency_ms") or {}).get("value") is not None),
                   key=lambda e: e["measured"]["latency_ms"]["value"], default=None)
        msg = (f"measured latency of the {n_meas} best predicted-feasible candidates all exceed the budget "
               f"{limit:g} ms less the {req.latency_margin:.0%} noise margin ({accept:.4g} ms)")
        if best is not None:
            msg += f" (lowest measured: {best['measured']['latency_ms']['value']:.3f} ms, predicted " \
                   f"{best['predicted']['latency_ms']:.3f} ms)"
        raise InfeasibleBudgetError(msg + "; the predictor is optimistic for this device: relax the budget")
    passed.sort(key=rank_key)
    n_bad = sum(1 for e in entries if (e["measured"].get("latency_ms") or {}).get("value") is not None
                and e["measured"]["latency_ms"]["value"] > accept)
    if n_bad:
        notes.append(f"verify: {n_bad} of {n_meas} measured candidates were above the latency budget less the "
                     f"{req.latency_margin:.0%} noise margin on the real runtime and were skipped")
    return passed


def measure_candidate(ctx: PlanContext, e: dict[str, Any]) -> dict[str, Any]:
    """Measure one candidate on the real runtime; recorded as ``e["measured"]["latency_ms"]``."""
    from fitplan.planner.predict import measure_latency, timing_rule

    m = measure_latency(ctx.space, e["config"], ctx.profile, supernet=ctx.supernet, batch=ctx.budget.batch_size,
                        threads=int(ctx.profile.runtime.threads or 1), rule=timing_rule(ctx.request.quick))
    e["measured"]["latency_ms"] = m
    return m


def add_uniform(ctx: PlanContext, entries: list[dict[str, Any]], ranked: list[dict[str, Any]],
                 notes: list[str], *, n: int | None = None, cap: float = np.inf,
                 score: ValidationScorer | None = None) -> list[dict[str, Any]]:
    """Verify uniformly scaled architectures predicted to fit (``n`` of them, default ``uniform_candidates``, within
    the budget at most, ``n + 3`` measurements at most; the prediction corrected by everything measured so far,
    :func:`~fitplan.planner.correction.latency_correction`, only configs predicted below ``cap`` ms, and after a
    miss only configs predicted smaller by the factor it missed by) and merge those that pass with ``ranked``.
    Configs already in ``entries`` are skipped. They are tagged ``"source": "uniform"`` and kept in the plan's
    candidate list. Which config is measured next: see :func:`pick_uniform` (with a validation ``score``, the best
    on validation among those that use most of the budget; else the largest)."""
    n = ctx.request.uniform_candidates if n is None else n
    if n <= 0:
        return ranked
    problem = ctx.problem
    try:
        cfgs = ctx.space.uniform_configs()
    except ConfigError:
        return ranked
    from fitplan.hw_profiles.measure import config_key

    known = {config_key(e["config"]) for e in entries}
    cfgs = [c for c in cfgs if problem.encode_params(c) is not None and config_key(c) not in known]
    if not cfgs:
        return ranked
    metrics, _, _ = problem.score(cfgs)
    pool = [make_entry(problem, c, metrics, i, None) for i, c in enumerate(cfgs)]
    pool = [e for e in pool if feasible_predicted(problem, {**e["predicted"], "latency_ms": 0.0})]
    accept = accept_ms(ctx)
    tried: list[dict[str, Any]] = []
    passed: list[dict[str, Any]] = []
    # cap: predicted latency below which the next pick must lie, lowered by every miss
    for _ in range(n + 3):
        # the latency correction refitted on everything measured so far (a uniform family can sit off the
        # searched candidates' correction: each miss moves it)
        a, b = latency_correction(measured_entries(entries) + measured_entries(tried))
        left = [e for e in pool if not e["measured"] and e["predicted"]["latency_ms"] <= cap]
        ms = apply_correction(np.array([e["predicted"]["latency_ms"] for e in left]), a, b)
        left = [(e, float(v)) for e, v in zip(left, ms) if v <= accept]
        if not left:
            break
        value = try_candidate(ctx, pick_uniform(left, accept, score), "uniform", accept, tried, passed)
        if len(passed) >= n:
            break
        if value is not None and value > accept:
            # a miss: the next pick must be predicted smaller by at least the factor it missed by. Why: the
            # correction is a median over every measured candidate (mostly searched ones), so a family that
            # runs slower than predicted moves it little, and the next picks would sit just over the budget
            # too (seen: five uniform configs measured 1-10 % over it, none of the smaller ones tried)
            cap = min(cap, tried[-1]["predicted"]["latency_ms"] * accept / value)
    for e in tried:  # validated while picking: kept, so the ranking does not evaluate them again
        if score is not None and score.done(e):
            score.record(e)
    entries.extend(measured_entries(tried))
    entries.sort(key=predicted_key)
    how = " (best on validation among those using most of the budget first)" if score is not None else ""
    notes.append(f"verify: {len(measured_entries(tried))} uniformly scaled architecture(s) measured beside the searched "
                 f"candidates{how}, {len(passed)} within the budget")
    return sorted(ranked + passed, key=rank_key)


def try_candidate(ctx: PlanContext, e: dict[str, Any], source: str, accept: float, tried: list[dict[str, Any]],
                   passed: list[dict[str, Any]]) -> float | None:
    """Tag ``e`` with ``source`` and measure it; it joins ``tried``, and ``passed`` when it measured within
    ``accept`` ms. Returns the measured latency (``None`` when it could not be measured)."""
    e["source"] = source
    tried.append(e)
    value = measure_candidate(ctx, e).get("value")
    if value is not None and value <= accept:
        passed.append(e)
    return value


#: uniform configs whose corrected predicted latency is at least this share of the accepted latency "use
#: most of the budget": :func:`pick_uniform` picks among them by validation
UNIFORM_TIER = 0.75


def pick_uniform(left: list[tuple[dict[str, Any], float]], accept: float,
                  score: Callable[[list[dict[str, Any]]], list[tuple[float, float]]] | None) -> dict[str, Any]:
    """The uniform config to measure next, from ``(entry, corrected predicted ms)`` pairs predicted to fit.

    With a validation scorer: of those predicted at ``UNIFORM_TIER`` x ``accept`` or more, the best on the
    validation split (top-1, then cross-entropy, then the larger); otherwise (or when none is that large) the
    largest predicted. Why: many uniform configs run at about the same latency (kernel, expand, depth and
    resolution trade against each other), and the largest predicted one is just one of them. On mnist5k-rot
    two uniform configs 2 % apart in latency reached 0.71 and 0.777 test top-1 after the same fine-tune
    (docs/DEVELOPING.md); the largest-predicted rule measured the weaker."""
    if score is not None:
        tier = [e for e, ms in left if ms >= UNIFORM_TIER * accept]
        if tier:
            keys = score(tier)
            return tier[max(range(len(tier)), key=lambda i: (*keys[i], tier[i]["predicted"]["latency_ms"]))]
    return max((e for e, _ in left), key=lambda e: e["predicted"]["latency_ms"])


class ValidationScorer:
    """Measures candidates on the validation split as they would be materialised (extracted from the supernet,
    BN recalibrated, compressed; before fine-tuning), once each: ``score(entries)`` is their
    ``(top-1, -cross-entropy)``; :meth:`record` stores one's result as ``measured.val_accuracy`` /
    ``measured.val_nll``."""

    def __init__(self, ctx: PlanContext, calib_for: Callable[[Any], Any]) -> None:
        n_val = ctx.data.info.sizes.get("val")
        self.ctx, self.calib_for = ctx, calib_for
        self.loader = ctx.data.loader("val", batch_size=256)
        self.how = (f"measured: on the {n_val} validation images, weights shared from the supernet, BN "
                    "recalibrated, compression applied, before fine-tuning")
        self.cache: dict[str, dict[str, float]] = {}

    def _key(self, e: dict[str, Any]) -> str:
        return json.dumps(e["config"], sort_keys=True)

    def done(self, e: dict[str, Any]) -> bool:
        return self._key(e) in self.cache

    def metrics(self, e: dict[str, Any]) -> dict[str, float]:
        key = self._key(e)
        if key not in self.cache:
            from fitplan.planner.materialize import build_model
            from fitplan.search_spaces.training import evaluate_metrics

            ctx, cfg = self.ctx, e["config"]
            r = evaluate_metrics(build_model(ctx.space, ctx.supernet, cfg, self.calib_for(cfg)), None, self.loader,
                                 input_shape=ctx.space.input_shape(cfg))
            self.cache[key] = {"accuracy": float(r["accuracy"]), "nll": float(r["nll"])}
        return self.cache[key]

    def __call__(self, entries: list[dict[str, Any]]) -> list[tuple[float, float]]:
        from tqdm.auto import tqdm

        todo = [e for e in entries if not self.done(e)]  # a tier can hold dozens of configs: a progress bar
        for e in tqdm(todo, desc="validate configs (before fine-tuning)", leave=False, disable=self.ctx.request.quick):
            self.metrics(e)
        return [(r["accuracy"], -r["nll"]) for r in map(self.metrics, entries)]

    def record(self, e: dict[str, Any]) -> None:
        r = self.metrics(e)
        e["measured"]["val_accuracy"] = {"value": r["accuracy"], "method": self.how + " (top-1)"}
        e["measured"]["val_nll"] = {"value": r["nll"], "method": self.how + " (mean cross-entropy)"}


def rank_by_validation(ctx: PlanContext, ranked: list[dict[str, Any]], score: ValidationScorer,
                        notes: list[str]) -> list[dict[str, Any]]:
    """Measure every verified candidate on the validation split as it would be materialised (extracted from the
    supernet, BN recalibrated, compressed; before fine-tuning; ``score`` evaluates each network once, so uniform
    candidates validated by :func:`pick_uniform` are not evaluated again) and order them by measured top-1, then
    cross-entropy, then measured latency. Recorded as ``measured.val_accuracy`` / ``measured.val_nll``."""
    from tqdm.auto import tqdm

    for e in tqdm(ranked, desc="validate candidates", leave=False, disable=ctx.request.quick):
        score.record(e)
    out = sorted(ranked, key=lambda e: (-e["measured"]["val_accuracy"]["value"], e["measured"]["val_nll"]["value"],
                                        e["measured"]["latency_ms"]["value"]))
    if out and out[0] is not ranked[0]:
        def val(e: dict[str, Any]) -> str:
            m = e["measured"]
            return f"top-1 {m['val_accuracy']['value']:.4f}, cross-entropy {m['val_nll']['value']:.4f}"

        notes.append(f"validate: the verified candidate ranked first on the validation split ({val(out[0])}) is "
                     f"not the one predicted most accurate ({val(ranked[0])}); measured ranking used")
    return out


def reverify_tightened(ctx: PlanContext, entries: list[dict[str, Any]], notes: list[str],
                        error: InfeasibleBudgetError, rounds: int = 2) -> list[dict[str, Any]]:
    """When every verified candidate broke the budget on the real runtime, the predictor is optimistic here: search
    again with latency corrected by the measurements (:func:`~fitplan.planner.correction.search_corrected`) and
    verify the new candidates against the true budget; each failed round adds its measurements to the fit. Raises
    the original error if that fails too."""
    limit = ctx.problem.limits["latency_ms"]
    measured = measured_entries(entries)
    for r in range(rounds):
        new, how = search_corrected(ctx, measured, ctx.request.seed + 1 + r)
        if not new:
            break
        entries.extend(new)
        entries.sort(key=predicted_key)
        try:
            ranked = verify_candidates(ctx, new, notes)
        except InfeasibleBudgetError:
            measured += measured_entries(new)
            continue
        notes.append(f"verify: the predictor was optimistic on this machine (every first candidate broke the budget "
                     f"{limit:g} ms when measured); {how}; searched again and verified against the real budget")
        return ranked
    raise error


def refine_with_measurements(ctx: PlanContext, entries: list[dict[str, Any]], ranked: list[dict[str, Any]],
                              notes: list[str]) -> list[dict[str, Any]]:
    """Close the loop when verification showed the latency predictor is biased where the budget is.

    If candidates predicted *more accurate* than the best verified one broke the budget on the real runtime, the
    search spent its effort on a region the device cannot afford, and the region it can afford may be
    under-explored: search again with corrected latency (:func:`~fitplan.planner.correction.search_corrected`),
    verify the new candidates that are predicted more accurate than the best verified one, and merge them."""
    accept = accept_ms(ctx)
    measured = measured_entries(entries)
    best = ranked[0]["predicted"]["accuracy"]
    missed = [e for e in measured if e["predicted"]["accuracy"] > best and e["measured"]["latency_ms"]["value"] > accept]
    if not missed or len(measured) < 3:
        return ranked
    new, how = search_corrected(ctx, measured, ctx.request.seed + 11, min_accuracy=best)
    more: list[dict[str, Any]] = []
    if new:
        entries.extend(new)
        entries.sort(key=predicted_key)
        try:
            more = verify_candidates(ctx, new, notes)
        except InfeasibleBudgetError:
            more = []
    notes.append(f"verify: {len(missed)} candidate(s) predicted more accurate than the best verified one broke the "
                 f"budget when measured; {how}; searched again: {len(new)} new candidate(s) predicted more "
                 f"accurate, {len(measured_entries(new))} measured, {len(more)} within the budget")
    return sorted(ranked + more, key=rank_key)
