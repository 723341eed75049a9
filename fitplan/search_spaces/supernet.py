"""The weight-sharing supernet interface shared by every space."""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Mapping

import torch.nn as nn

from fitplan.search_spaces.base import Config, SearchSpace


class Supernet(nn.Module):
    """An elastic network holding the weights of the largest config of :attr:`space`.

    ``set_active(config)`` selects a subnet for ``forward``; ``extract(config)`` returns a standalone
    ``nn.Module`` with real, smaller tensors that computes the same function (in eval mode).

    The extracted module carries ``fitplan_units``: a list aligned with ``space.units()`` whose entries are
    the dotted names of the submodules that belong to each compression unit (empty list when the unit is
    inactive for that config). :mod:`fitplan.search_spaces.compression` uses it to apply bits and sparsity.
    """

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.active_config: Config | None = None

    def set_active(self, config: Mapping[str, Any]) -> Config:
        """Validate ``config`` and make it the subnet that ``forward`` runs. Returns the normalised config."""
        cfg = self.space.validate(config)
        self._set_active(cfg)
        self.active_config = cfg
        return cfg

    def set_largest(self) -> Config:
        return self.set_active(self.space.largest())

    def set_smallest(self) -> Config:
        return self.set_active(self.space.smallest())

    def extract(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        """A standalone copy of the subnet for ``config`` (default: the active one), in the supernet's
        train/eval mode, on the supernet's device."""
        cfg = self.space.validate(config) if config is not None else self.active_config
        if cfg is None:
            raise ValueError("no config given and none active: call set_active(config) or pass one")
        module = self._extract(cfg)
        if not hasattr(module, "fitplan_units"):
            raise TypeError(f"{type(self).__name__}._extract must set fitplan_units on the module")
        module.fitplan_config = cfg
        module.fitplan_space = self.space.spec()
        return module.train(self.training).to(next(self.parameters()).device)

    @abstractmethod
    def _set_active(self, config: Config) -> None:
        """Configure dynamic layers for the (validated) config."""

    @abstractmethod
    def _extract(self, config: Config) -> nn.Module:
        """Build the static subnet (must set ``fitplan_units``)."""
