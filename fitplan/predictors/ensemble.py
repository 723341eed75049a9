"""Ensemble of calibrated latency predictors: a weighted geometric mean of their predictions.

Why: on a device unlike every source device (a new hardware class), the meta-learned predictor
(:class:`~fitplan.predictors.latency.AdaptedPredictor`) and the analytic per-unit cost model
(:class:`~fitplan.predictors.analytic.CostModelPredictor`) err in different places -- the first carries the
sources' per-op cost shape, the second the device's own MAC / activation / launch trade-off fitted on the
samples alone -- and their log-space average ranks the held-out archs better than either (fbnet,
leave-one-class-out, N=10: mean Spearman 0.906 meta / 0.892 analytic / 0.923 average on noise-free targets).
Where a source device is a near twin, the meta model alone is better; the calibration's selection rule
(:func:`fitplan.predictors.latency.select_model`) chooses per device from the samples' cross-validated errors.

The state is JSON (format :data:`ENSEMBLE_FORMAT`): the members' own states and the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError

ENSEMBLE_FORMAT = "fitplan.ensemble_latency"
ENSEMBLE_FORMAT_VERSION = 1


def log_average(preds: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """``exp(Σ_i w_i log p_i)``: the weighted geometric mean of predictions in ms (equal weights by default;
    the weights must sum to 1)."""
    logs = np.stack([np.log(np.maximum(np.asarray(p, dtype=np.float64), 1e-9)) for p in preds])
    w = np.full(len(logs), 1.0 / len(logs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.exp(w @ logs)


@dataclass
class EnsemblePredictor:
    """``log ms = Σ_i w_i log ms_i`` over member predictors (weights normalised to sum to 1).

    A compression effect is known only when every member knows it: a config using an effect one member
    lacks is flagged (``predict_with_flags``) or raises (``predict(unknown="raise")``), as the members do.
    """

    members: list[Any]
    weights: list[float] | None = None
    device: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ConfigError("members", f"an ensemble needs at least 2 predictors, got {len(self.members)}")
        w = np.ones(len(self.members)) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if w.shape != (len(self.members),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError("weights", f"expected {len(self.members)} finite non-negative floats, not all 0")
        self.weights = [float(v) for v in w / w.sum()]

    @property
    def space(self) -> Any:
        """The first member's space (all members predict the same space's configs)."""
        return self.members[0].space

    @property
    def n_samples(self) -> int:
        return max(int(getattr(m, "n_samples", 0)) for m in self.members)

    @property
    def effects(self) -> dict[str, float]:
        """Compression effects every member knows (weighted mean of the members' factors)."""
        known = set.intersection(*(set(m.effects) for m in self.members))
        return {k: float(sum(w * m.effects[k] for w, m in zip(self.weights, self.members))) for k in sorted(known)}

    def predict_with_flags(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any]
                           ) -> tuple[np.ndarray, list[list[str]]]:
        """Predicted ms per config and, per config, the effects some member has no data on."""
        outs = [m.predict_with_flags(configs) for m in self.members]
        flags = [sorted(set().union(*(o[1][i] for o in outs))) for i in range(len(outs[0][1]))]
        return log_average([o[0] for o in outs], self.weights), flags

    def predict(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any], unknown: str = "raise"
                ) -> np.ndarray:
        """Predicted milliseconds, shape ``[len(configs)]``; ``unknown`` as the members take it
        (``"raise"``: :class:`~fitplan.errors.ConfigError` naming the config field; ``"fp32"``)."""
        return log_average([m.predict(configs, unknown=unknown) for m in self.members], self.weights)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (storable under ``profile.predictors[space]``)."""
        space = self.space
        return {"format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_FORMAT_VERSION,
                "space": space if isinstance(space, str) else space.name, "device": self.device,
                "n_samples": self.n_samples, "weights": list(self.weights),
                "members": [m.state_dict() for m in self.members], "provenance": self.provenance,
                "note": "predicted latency in ms: weighted geometric mean of the members' predictions"}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "EnsemblePredictor":
        """Rebuild from :meth:`state_dict` output; :class:`ConfigError` naming the field on a foreign or
        malformed state."""
        from fitplan.predictors.latency import load_profile_predictor

        if not isinstance(state, Mapping) or state.get("format") != ENSEMBLE_FORMAT:
            raise ConfigError("format", "not a fitplan ensemble latency-predictor state", [ENSEMBLE_FORMAT])
        if state.get("format_version") != ENSEMBLE_FORMAT_VERSION:
            raise ConfigError("format_version", f"unsupported version {state.get('format_version')!r}",
                              [ENSEMBLE_FORMAT_VERSION])
        members = state.get("members")
        if not isinstance(members, list) or len(members) < 2:
            raise ConfigError("members", "expected a list of at least 2 predictor states")
        loaded = []
        for i, m in enumerate(members):
            if isinstance(m, Mapping) and m.get("format") == ENSEMBLE_FORMAT:
                raise ConfigError(f"members.{i}.format", "nested ensembles are not supported")
            try:
                loaded.append(load_profile_predictor(m))
            except ConfigError as e:
                raise ConfigError(f"members.{i}.{e.field}", str(e).split(": ", 1)[-1]) from None
        weights = state.get("weights")
        if not isinstance(weights, list):
            raise ConfigError("weights", f"expected a list of {len(loaded)} floats")
        return cls(loaded, weights, device=str(state.get("device", "unknown")),
                   provenance=dict(state.get("provenance") or {}))


__all__ = ["ENSEMBLE_FORMAT", "ENSEMBLE_FORMAT_VERSION", "EnsemblePredictor", "log_average"]
