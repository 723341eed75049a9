"""fitplan: the best compressed network that fits a device and a budget.

``plan(model, device, budget)`` searches architecture, bit-widths, sparsity and token budgets jointly
with a multi-objective Optuna study guided by meta-learned latency predictors, then materialises,
fine-tunes, verifies and exports the chosen subnet.
"""
__version__ = "0.1.0"

from fitplan.errors import ConfigError, FitplanError, InfeasibleBudgetError, UnknownNameError
from fitplan.search_spaces import Dimension, SearchSpace, Supernet, create_space, list_spaces, register_space
from fitplan.hw_profiles import HardwareProfile, get_profile, list_profiles, save_profile

__all__ = [
    "__version__",
    "ConfigError",
    "Dimension",
    "FitplanError",
    "HardwareProfile",
    "InfeasibleBudgetError",
    "SearchSpace",
    "Supernet",
    "UnknownNameError",
    "create_space",
    "get_profile",
    "list_profiles",
    "list_spaces",
    "register_space",
    "save_profile",
]
