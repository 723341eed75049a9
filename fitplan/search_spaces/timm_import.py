"""Build a supernet from a timm model, inheriting its weights.

Space modules register a converter per timm family with :func:`register_timm_converter`; a converter gets
the instantiated timm model and returns a :class:`~fitplan.search_spaces.supernet.Supernet` whose largest
subnet computes the same function (in eval mode).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from fitplan.errors import UnknownNameError
from fitplan.registry import Registry

#: timm model name (as in ``timm.create_model``) -> converter(model) -> Supernet
TIMM_CONVERTERS: Registry[Callable[[nn.Module], "object"]] = Registry("timm model")


def register_timm_converter(*names: str):
    """Decorator registering a converter for one or more timm model names."""

    def deco(fn):
        for n in names:
            TIMM_CONVERTERS.register(n, fn)
        return fn

    return deco


def timm_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    return arch or getattr(model, "default_cfg", {}).get("architecture")


def from_timm(model: nn.Module | str, **kwargs):
    """Supernet for a timm model instance or name (``pretrained=False`` when a name is given).

    Raises :class:`UnknownNameError` listing the supported timm models for anything else.
    """
    import fitplan.search_spaces  # noqa: F401  (registers converters)

    if isinstance(model, str):
        name = model
        if name not in TIMM_CONVERTERS:
            raise UnknownNameError("timm model", name, TIMM_CONVERTERS.names())
        import timm

        model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        name = timm_name(model) or type(model).__name__
        if name not in TIMM_CONVERTERS:
            raise UnknownNameError("timm model", name, TIMM_CONVERTERS.names())
    return TIMM_CONVERTERS.get(name)(model.eval())
