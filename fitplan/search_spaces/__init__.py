"""Search spaces and their weight-sharing supernets.

Importing this package registers the built-in spaces. Use :func:`create_space` to build one by name.
"""
from fitplan.search_spaces.base import (
    SPACES,
    Config,
    Dimension,
    SearchSpace,
    UnitCost,
    create_space,
    list_spaces,
    register_space,
)
from fitplan.search_spaces.supernet import Supernet

# Built-in spaces register themselves on import. Each lives in its own module.
import importlib as _importlib

for _mod in ("ofa_mbv3", "fbnet", "elastic_resnet", "elastic_vit"):
    try:
        _importlib.import_module(f"fitplan.search_spaces.{_mod}")
    except ModuleNotFoundError as _e:  # a space still being written
        if _e.name != f"fitplan.search_spaces.{_mod}":
            raise

__all__ = ["SPACES", "Config", "Dimension", "SearchSpace", "Supernet", "UnitCost", "create_space",
           "list_spaces", "register_space"]
