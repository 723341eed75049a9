"""What a plan must fit: :class:`Budget`, and the registry of budget metrics.

A budget is any combination of ``latency_ms`` (per batch of ``batch_size`` inputs, on the profile's
runtime), ``memory_mb`` (peak inference memory: stored weights + the two largest live activations),
``size_mb`` (stored weights: bits and sparsity applied, plus the sparsity mask/index overhead),
``energy_mj`` (per batch; needs power data in the profile) and ``max_accuracy_drop`` (absolute, as a
fraction: 0.02 = two points below the largest subnet's predicted accuracy). ``MB`` is 10**6 bytes.

Each budgeted metric becomes one Optuna constraint (``value - limit <= 0``); latency, size and memory are
also objectives when budgeted (:data:`BUDGET_METRICS` says which).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from fitplan.errors import ConfigError
from fitplan.jsonio import check_finite
from fitplan.registry import Registry


@dataclass(frozen=True)
class BudgetMetric:
    """One budgetable metric.

    Attributes:
        name: budget field and metric key (``latency_ms``).
        unit: display unit.
        objective: also an objective (minimised) when budgeted.
        doc: one line for help texts.
    """

    name: str
    unit: str
    objective: bool
    doc: str


#: Budget metrics by name. Register new ones here; the planner reads constraints from this registry.
BUDGET_METRICS: Registry[BudgetMetric] = Registry("budget metric")
for _m in (
    BudgetMetric("latency_ms", "ms", True, "latency of one batch of batch_size inputs on the device runtime"),
    BudgetMetric("memory_mb", "MB", True, "peak inference memory: weights + two largest activations"),
    BudgetMetric("size_mb", "MB", True, "stored model size (bits, sparsity and mask overhead applied)"),
    BudgetMetric("energy_mj", "mJ", False, "energy per batch (needs power data in the profile)"),
    BudgetMetric("max_accuracy_drop", "", False, "allowed drop of predicted accuracy vs the largest subnet "
                                                 "(absolute fraction, 0.02 = 2 points)"),
):
    BUDGET_METRICS.register(_m.name, _m)


@dataclass
class Budget:
    """The limits a plan must meet. All optional, at least one required; ``batch_size`` explicit.

    >>> Budget(latency_ms=5.0).limits()
    {'latency_ms': 5.0}
    """

    latency_ms: float | None = None
    memory_mb: float | None = None
    size_mb: float | None = None
    energy_mj: float | None = None
    max_accuracy_drop: float | None = None
    batch_size: int = 1
    #: which latency: ``per_batch`` (the time for one batch of ``batch_size``) is the only one supported.
    latency_kind: str = "per_batch"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "Budget":
        """Check every field; raise :class:`ConfigError` naming ``budget.<field>``."""
        for name in BUDGET_METRICS.names():
            v = getattr(self, name)
            if v is None:
                continue
            v = check_finite(f"budget.{name}", v, positive=name != "max_accuracy_drop")
            if name == "max_accuracy_drop" and not 0.0 <= v < 1.0:
                raise ConfigError("budget.max_accuracy_drop",
                                  f"must be a fraction in [0, 1), got {v!r} (0.02 = two points)")
            setattr(self, name, v)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("budget.batch_size", f"must be an integer >= 1, got {self.batch_size!r}")
        if self.latency_kind != "per_batch":
            raise ConfigError("budget.latency_kind", f"unsupported {self.latency_kind!r}", ["per_batch"])
        if not self.limits():
            raise ConfigError("budget", "no limit given; set at least one of " + ", ".join(BUDGET_METRICS.names()))
        return self

    def limits(self) -> dict[str, float]:
        """``{metric: limit}`` for the budgeted metrics, in registry order."""
        return {n: float(getattr(self, n)) for n in BUDGET_METRICS.names() if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "Budget") -> "Budget":
        """Build from a dict (JSON/YAML/CLI); unknown keys are errors naming the key."""
        if isinstance(d, Budget):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError("budget", f"expected a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for k in d:
            if k not in known:
                raise ConfigError(f"budget.{k}", "unknown budget field", known)
        return cls(**dict(d))

    def describe(self) -> str:
        parts = []
        for n, v in self.limits().items():
            unit = BUDGET_METRICS.get(n).unit
            parts.append(f"{n} <= {v:g}{(' ' + unit) if unit else ''}")
        return ", ".join(parts) + f" (batch {self.batch_size})"
