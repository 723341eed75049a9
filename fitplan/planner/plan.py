"""The result of planning: :class:`Plan`, saved as versioned JSON (``plan.json``), never pickled.

Every number says what it is: ``predicted`` values come from predictors (``predicted_by`` names which),
``measured`` values carry their method (runtime, threads, batch, repeats, where and when).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fitplan.jsonio import dumps, load_versioned, save_versioned

PLAN_FORMAT = "fitplan-plan"
PLAN_FORMAT_VERSION = 1


@dataclass
class Plan:
    """A chosen compressed subnet and everything needed to trust and rebuild it.

    Attributes:
        space: the space spec (``space.spec()``), enough to rebuild the space and the subnet.
        device: profile name and the runtime facts the plan relied on.
        budget: :meth:`Budget.to_dict`.
        config: the chosen joint config (architecture + bits + sparsity + tokens).
        predicted: predicted metrics of ``config`` (``accuracy``, ``latency_ms``, ``size_mb``, ...).
        predicted_by: metric -> which predictor produced it.
        measured: metric -> ``{"value": ..., "method": ...}`` (empty when nothing was measured).
        pareto: the predicted feasible Pareto front, each entry ``{"config", "predicted", "measured",
            "feasible", "trial"}``, best first.
        artifacts: name -> path (``model_safetensors``, ``model_config``, ``model_onnx``,
            ``model_int8_onnx``, ``report_html``, ``summary_txt``, ``pareto_json``).
        checks: verification results (``onnx_max_abs_diff``, ...).
        search: study name, storage, sampler, trial counts, timings.
        finetune: fine-tuning settings and results (accuracy measured on the user's validation split).
        notes: human-readable caveats (unknown int8 speed-up, ...).
    """

    space: dict[str, Any]
    device: dict[str, Any]
    budget: dict[str, Any]
    config: dict[str, Any]
    predicted: dict[str, float]
    predicted_by: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format_version: int = PLAN_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "format_version"}
        return {"format": PLAN_FORMAT, "format_version": self.format_version, **d}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``plan.json`` atomically (a directory gets ``plan.json`` inside)."""
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / "plan.json"
        payload = {k: v for k, v in self.to_dict().items() if k not in ("format", "format_version")}
        save_versioned(path, PLAN_FORMAT, self.format_version, payload)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a ``plan.json`` (or a directory holding one), checking format and version."""
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        doc = load_versioned(path, PLAN_FORMAT, (PLAN_FORMAT_VERSION,))
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Plan":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def summary(self) -> str:
        """A short human-readable text: the choice, predicted vs measured, where the files are."""
        lines = [f"fitplan plan: space {self.space.get('space')} on {self.device.get('name')} "
                 f"(budget: {_budget_text(self.budget)})"]
        for k, v in self.predicted.items():
            m = self.measured.get(k)
            meas = f"   measured {m['value']:.4g} ({m.get('method', '')})" if isinstance(m, dict) else ""
            label = "proxy" if self.predicted_by.get(k, "").startswith("proxy") else "predicted"
            lines.append(f"  {k:<14} {label} {v:.4g}{meas}")
        for k, m in self.measured.items():
            if k not in self.predicted and isinstance(m, dict) and "value" in m:
                lines.append(f"  {k:<14} measured {m['value']:.4g} ({m.get('method', '')})")
        if self.checks:
            lines.append("  checks: " + ", ".join(f"{k}={v}" for k, v in self.checks.items()))
        lines.append(f"  pareto front: {len(self.pareto)} candidates; configs evaluated by the predictors: "
                     f"{self.search.get('predictor_evaluations', '?')} ({self.search.get('n_trials', '?')} trials "
                     "stored in the study)")
        for n in self.notes:
            lines.append(f"  note: {n}")
        for k, p in self.artifacts.items():
            lines.append(f"  {k}: {p}")
        return "\n".join(lines)


def _budget_text(b: dict[str, Any]) -> str:
    keys = ("latency_ms", "memory_mb", "size_mb", "energy_mj", "max_accuracy_drop")
    parts = [f"{k} <= {b[k]:g}" for k in keys if b.get(k) is not None]
    return ", ".join(parts) + f", batch {b.get('batch_size', 1)}"
