"""Errors fitplan raises for bad input.

Every error names the offending field and, where the set is finite, the allowed values, so that a user
can fix the input without reading the source. The CLI turns :class:`FitplanError` into exit code 2.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class FitplanError(Exception):
    """Base class for user-facing errors (bad input, infeasible request). The CLI exits 2 on these."""


class ConfigError(FitplanError, ValueError):
    """A config, spec or file field is invalid.

    Args:
        field: dotted name of the offending field (``"ks.3"``, ``"budget.latency_ms"``).
        message: what is wrong.
        allowed: the allowed values, when the set is small enough to list.
    """

    def __init__(self, field: str, message: str, allowed: Iterable[Any] | None = None):
        self.field = field
        self.allowed = list(allowed) if allowed is not None else None
        text = f"{field}: {message}"
        if self.allowed is not None:
            text += f" (allowed: {format_allowed(self.allowed)})"
        super().__init__(text)


class UnknownNameError(FitplanError, KeyError):
    """A name (space, device, profile, model) is not registered. Lists known names and the closest match."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = closest_name(name, self.known)
        text = f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}"
        if close:
            text += f". Did you mean {close!r}?"
        super().__init__(text)

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class InfeasibleBudgetError(FitplanError):
    """No config of the space can meet the budget; the message names the smallest achievable value."""


class DeliveredOverBudgetError(InfeasibleBudgetError):
    """The fine-tuned, exported model measured over the latency budget when re-timed: no plan is returned
    for it; its config is recorded as rejected, and finishing again materialises the next candidate."""


def closest_name(name: str, known: Iterable[str], cutoff: float = 0.4) -> str | None:
    """The known name closest to a mistyped ``name`` (for "did you mean" hints), or ``None``."""
    m = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return m[0] if m else None


def format_allowed(values: list[Any], limit: int = 12) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values)} in all)"
    return shown
