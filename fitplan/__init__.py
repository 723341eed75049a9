"""fitplan: the best compressed network that fits a device and a budget.

``plan(model, device, budget)`` searches architecture, bit-widths, sparsity and token budgets jointly
with a multi-objective Optuna study guided by meta-learned latency predictors, then materialises,
fine-tunes, verifies and exports the chosen subnet.

The public names below are imported on first use (PEP 562), so ``import fitplan`` and the CLI start
without loading torch, optuna and onnxruntime until a command needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from fitplan.errors import ConfigError, DeliveredOverBudgetError, FitplanError, InfeasibleBudgetError, UnknownNameError

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Dimension", "SearchSpace", "Supernet", "create_space", "from_timm", "list_spaces",
                     "register_space"], "fitplan.search_spaces"),
    **dict.fromkeys(["HardwareProfile", "get_profile", "list_profiles", "save_profile"], "fitplan.hw_profiles"),
    **dict.fromkeys(["AdaptedPredictor", "CostModelPredictor", "EnsemblePredictor", "LatencyPredictor",
                     "calibrate_profile", "predictor_for_device"], "fitplan.predictors"),
    "AccuracyPredictor": "fitplan.predictors.accuracy",
    **dict.fromkeys(["Budget", "Plan", "PlanRequest", "finish", "plan", "prepare", "run_search"],
                    "fitplan.planner"),
    "load_dataset": "fitplan.data",
    **dict.fromkeys(["cancel", "result", "run_worker", "status", "submit"], "fitplan.jobs"),
}

__all__ = ["__version__", "ConfigError", "DeliveredOverBudgetError", "FitplanError", "InfeasibleBudgetError",
           "UnknownNameError", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fitplan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the eager imports
    from fitplan.data import load_dataset  # noqa: F401
    from fitplan.hw_profiles import HardwareProfile, get_profile, list_profiles, save_profile  # noqa: F401
    from fitplan.jobs import cancel, result, run_worker, status, submit  # noqa: F401
    from fitplan.planner import Budget, Plan, PlanRequest, finish, plan, prepare, run_search  # noqa: F401
    from fitplan.predictors import (AdaptedPredictor, CostModelPredictor, EnsemblePredictor,  # noqa: F401
                                    LatencyPredictor, calibrate_profile, predictor_for_device)
    from fitplan.predictors.accuracy import AccuracyPredictor  # noqa: F401
    from fitplan.search_spaces import (Dimension, SearchSpace, Supernet, create_space, from_timm,  # noqa: F401
                                       list_spaces, register_space)
