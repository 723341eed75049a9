"""Candidate entries of a plan: one dict per network (``config``, ``predicted``, ``measured``, ``source``...)
and the small helpers every stage of :func:`~fitplan.planner.api.finish` ranks and filters them with."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from fitplan.planner.search import SearchProblem

if TYPE_CHECKING:
    from fitplan.planner.request import PlanContext


def make_entry(problem: SearchProblem, cfg: dict[str, Any], metrics: Mapping[str, np.ndarray], i: int,
           trial: int | None) -> dict[str, Any]:
    pred = {k: float(v[i]) for k, v in metrics.items() if k != "accuracy_drop"}
    return {"config": cfg, "predicted": pred, "measured": {}, "feasible": True, "trial": trial}


def feasible_predicted(problem: SearchProblem, pred: Mapping[str, float]) -> bool:
    for name, lim in problem.limits.items():
        v = problem.reference_accuracy - pred["accuracy"] if name == "max_accuracy_drop" else pred[name]
        if v > lim + 1e-12:
            return False
    return True


def predicted_key(e: dict[str, Any]) -> tuple[float, float]:
    """Front entries: most accurate (predicted) first, then the lowest predicted latency."""
    return -e["predicted"]["accuracy"], e["predicted"]["latency_ms"]


def accept_ms(ctx: PlanContext) -> float:
    """The measured latency a candidate must not exceed: the budget less ``latency_margin``."""
    return ctx.problem.limits["latency_ms"] * (1.0 - ctx.request.latency_margin)


def rank_key(e: dict[str, Any]) -> tuple[float, float]:
    """Verified candidates: most accurate (predicted) first, then the lowest measured latency."""
    return -round(e["predicted"]["accuracy"], 4), e["measured"]["latency_ms"]["value"]


def measured_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with a measured latency."""
    return [e for e in entries if (e["measured"].get("latency_ms") or {}).get("value")]


def distinct_networks(space: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first entry of each network (:meth:`SearchSpace.network_key`): front configs that differ
    only in choices of unused units build the same model, and measuring, validating or racing it twice
    would take a slot from another candidate."""
    seen: set[str] = set()
    out = []
    for e in entries:
        key = space.network_key(e["config"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
