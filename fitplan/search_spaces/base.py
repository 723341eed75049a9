"""Search spaces: what can be chosen, how a choice (a *config*) is validated, sampled and encoded.

A **config** is one flat JSON-able dict. Architecture keys are space-specific (``ks``/``e``/``d``/``r`` for
``ofa_mbv3``, ``op_idx_list`` for ``fbnet``); the compression keys are shared by every space:

``bits``
    per compression unit, in ``bits_choices`` (default 4, 8, 32; 32 = float).
``sparsity``
    per compression unit, weight sparsity ratio in ``sparsity_choices`` (default 0, 0.25, 0.5, 0.75).
``sparsity_pattern``
    ``"unstructured"`` or ``"2:4"`` (then every non-zero ratio must be 0.5).

A space defines a fixed list of compression units (:meth:`SearchSpace.units`) covering *all* weights of
the supernet (stem, blocks, head), so that per-unit costs add up to the whole network. Units of inactive
blocks (depth below maximum, skip ops) still have entries; their values are ignored and their costs are 0.
Missing compression keys default to no compression, so the arch dicts of ``../shared/data/latency`` are
valid configs as they are.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError
from fitplan.registry import Registry

Config = dict[str, Any]

#: Dimension kinds. The planner and the predictors treat them differently (e.g. bits need capability data).
KINDS = ("arch", "resolution", "bits", "sparsity", "tokens")


@dataclass(frozen=True)
class Dimension:
    """One searchable key of a config.

    Args:
        name: config key.
        choices: allowed values (of each element, for list dimensions).
        length: ``None`` for a scalar; else the key holds a list of ``length`` values.
        kind: one of :data:`KINDS`.
        doc: one line for ``fitplan spaces``.
    """

    name: str
    choices: tuple[Any, ...]
    length: int | None = None
    kind: str = "arch"
    doc: str = ""

    def param_names(self) -> list[str]:
        """Flat parameter names (``ks.0``, ``ks.1``, ...) as used for Optuna trials."""
        if self.length is None:
            return [self.name]
        return [f"{self.name}.{i}" for i in range(self.length)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "choices": list(self.choices), "length": self.length, "kind": self.kind,
                "doc": self.doc}


#: channel multiple below which depthwise convs count as *unaligned* (:attr:`UnitCost.unaligned_dw_macs`).
DW_CHANNEL_ALIGN = 16


def unaligned_dw(dw_macs: int, channels: int) -> int:
    """``dw_macs`` when a depthwise conv of ``channels`` channels is not a multiple of
    :data:`DW_CHANNEL_ALIGN`, else 0 (the value of :attr:`UnitCost.unaligned_dw_macs` for one conv)."""
    return int(dw_macs) if int(channels) % DW_CHANNEL_ALIGN else 0


@dataclass
class UnitCost:
    """Analytic cost of one compression unit for one config (zeros when the unit is inactive).

    ``macs`` multiply-accumulates for one input; ``params`` weight + bias count; ``act_elems`` the elements
    of the unit's output activation(s) (drives memory traffic); ``active`` whether the unit runs;
    ``dw_macs`` the part of ``macs`` done by depthwise convolutions (one filter per channel, groups ==
    channels; already *included* in ``macs``, so ``0 <= dw_macs <= macs``). Depthwise convs have a far lower
    arithmetic intensity than dense / pointwise ones and run at a different speed (notably in int8), so
    cost models may price them separately. Spaces without depthwise convs leave it 0. ``strided_dw_macs``
    the part of ``dw_macs`` done by strided (stride > 1) depthwise convs (``0 <= strided_dw_macs <=
    dw_macs``): int8 strided depthwise kernels can be several times slower per MAC than stride-1 ones
    (ONNX Runtime, x86), so cost models may add a cost of their own to them; 0 where unknown.
    ``unaligned_dw_macs`` the part of ``dw_macs`` done by depthwise convs whose channel count is not a
    multiple of :data:`DW_CHANNEL_ALIGN` (:func:`unaligned_dw`): ONNX Runtime's x86 int8 depthwise kernels
    process channels in vectors of 16, and the archs whose expanded widths are 72 or 120 channels ran up to
    ~25 % slower in int8 than their MACs say (``benchmarks/predictor_local.py --noise``); 0 where unknown.
    """

    name: str
    macs: int = 0
    params: int = 0
    act_elems: int = 0
    active: bool = True
    dw_macs: int = 0
    strided_dw_macs: int = 0
    unaligned_dw_macs: int = 0

    @property
    def dense_macs(self) -> int:
        """``macs - dw_macs``: MACs of dense (incl. pointwise and few-group) convolutions and linear layers."""
        return self.macs - self.dw_macs


SPACES: Registry[type["SearchSpace"]] = Registry("search space")


def register_space(name: str):
    """Class decorator: register a :class:`SearchSpace` subclass under ``name``."""

    def deco(cls: type[SearchSpace]) -> type[SearchSpace]:
        cls.name = name
        SPACES.register(name, cls)
        return cls

    return deco


class SearchSpace(ABC):
    """Base class of all search spaces.

    Subclasses define :meth:`arch_dimensions`, :meth:`units`, :meth:`unit_costs`, :meth:`input_shape`,
    :meth:`build_supernet` and, where needed, :meth:`_check_arch` for constraints across keys.
    Constructor keyword arguments (width multiplier, classes, ...) are the space's *spec*; ``spec()`` returns
    them so a space (and a plan made in it) can be rebuilt from JSON.
    """

    name: str = "base"
    bits_choices: tuple[int, ...] = (4, 8, 32)
    sparsity_choices: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    sparsity_patterns: tuple[str, ...] = ("unstructured", "2:4")

    def __init__(self, **spec: Any):
        self._spec = dict(spec)

    # ----------------------------------------------------------------- definition (subclasses)
    @abstractmethod
    def arch_dimensions(self) -> list[Dimension]:
        """Architecture (and resolution / token) dimensions, in a stable order."""

    @abstractmethod
    def units(self) -> list[str]:
        """Names of the compression units, fixed length, covering every weight of the supernet."""

    @abstractmethod
    def unit_costs(self, config: Config) -> list[UnitCost]:
        """Analytic per-unit cost of a (validated) config, aligned with :meth:`units`."""

    @abstractmethod
    def input_shape(self, config: Config) -> tuple[int, ...]:
        """Shape of one input sample (no batch dimension) for this config, e.g. ``(3, r, r)``."""

    @abstractmethod
    def build_supernet(self) -> "Any":
        """A freshly initialised :class:`~fitplan.search_spaces.supernet.Supernet` of this space."""

    def _check_arch(self, config: Config) -> None:
        """Cross-key checks beyond per-dimension choices. Raise :class:`ConfigError`."""

    # ----------------------------------------------------------------- derived
    def spec(self) -> dict[str, Any]:
        """``{"space": name, **constructor kwargs}``; :func:`create_space` rebuilds the space from it."""
        return {"space": self.name, **copy.deepcopy(self._spec)}

    def compression_dimensions(self) -> list[Dimension]:
        n = len(self.units())
        return [
            Dimension("bits", tuple(self.bits_choices), n, "bits", "weight/activation bits per unit (32 = float)"),
            Dimension("sparsity", tuple(self.sparsity_choices), n, "sparsity", "weight sparsity ratio per unit"),
            Dimension("sparsity_pattern", tuple(self.sparsity_patterns), None, "sparsity",
                      "unstructured magnitude or 2:4 semi-structured"),
        ]

    @property
    def dimensions(self) -> dict[str, Dimension]:
        """All dimensions, name -> :class:`Dimension` (architecture first, then compression)."""
        dims = self.arch_dimensions() + self.compression_dimensions()
        return {d.name: d for d in dims}

    def defaults(self) -> Config:
        """Values that missing compression keys take: no compression."""
        n = len(self.units())
        return {"bits": [32] * n, "sparsity": [0.0] * n, "sparsity_pattern": "unstructured"}

    # ----------------------------------------------------------------- validation
    def validate(self, config: Mapping[str, Any]) -> Config:
        """Return a normalised copy of ``config`` or raise :class:`ConfigError` naming the bad key.

        Unknown keys, wrong lengths and values outside the choices are errors; missing compression keys
        take :meth:`defaults`; missing architecture keys are errors.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("config", f"expected a dict, got {type(config).__name__}")
        dims = self.dimensions
        unknown = [k for k in config if k not in dims]
        if unknown:
            raise ConfigError(unknown[0], f"unknown key for space {self.name!r}", list(dims))
        out: Config = {}
        defaults = self.defaults()
        for name, dim in dims.items():
            if name not in config:
                if name in defaults:
                    out[name] = copy.deepcopy(defaults[name])
                    continue
                raise ConfigError(name, f"missing key for space {self.name!r}")
            out[name] = _check_value(dim, config[name])
        if out["sparsity_pattern"] == "2:4":
            for i, s in enumerate(out["sparsity"]):
                if s not in (0.0, 0.5):
                    raise ConfigError(f"sparsity.{i}", f"{s} is not possible with sparsity_pattern '2:4'",
                                      [0.0, 0.5])
        self._check_arch(out)
        return out

    def is_valid(self, config: Mapping[str, Any]) -> bool:
        try:
            self.validate(config)
            return True
        except ConfigError:
            return False

    # ----------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator | int | None = None, *, compression: bool = True) -> Config:
        """A uniformly random valid config. ``compression=False`` leaves bits/sparsity at defaults."""
        rng = np.random.default_rng(rng)
        for _ in range(1000):
            cfg: Config = {}
            for name, dim in self.dimensions.items():
                if dim.kind in ("bits", "sparsity") and not compression:
                    continue
                pick = lambda: dim.choices[int(rng.integers(len(dim.choices)))]  # noqa: E731
                cfg[name] = pick() if dim.length is None else [pick() for _ in range(dim.length)]
            if cfg.get("sparsity_pattern") == "2:4":
                cfg["sparsity"] = [0.5 if s > 0 else 0.0 for s in cfg["sparsity"]]
            cfg = self._repair(cfg)
            if self.is_valid(cfg):
                return self.validate(cfg)
        raise RuntimeError(f"could not sample a valid config of {self.name!r}")

    def _repair(self, config: Config) -> Config:
        """Make a per-dimension sample satisfy cross-key constraints (default: nothing to do)."""
        return config

    def _extreme(self, pick) -> Config:
        cfg = {d.name: (pick(d.choices) if d.length is None else [pick(d.choices)] * d.length)
               for d in self.arch_dimensions()}
        return self.validate(self._repair(cfg))

    def smallest(self) -> Config:
        """Smallest architecture, uncompressed (the planner adds compression on its own)."""
        return self._extreme(min)

    def largest(self) -> Config:
        """Largest architecture, uncompressed."""
        return self._extreme(max)

    def uniform_configs(self, limit: int = 20_000) -> list[Config]:
        """Every valid architecture whose per-layer lists repeat one choice, uncompressed: the uniformly
        scaled models (same kernel / expand / depth everywhere, one resolution) a user would otherwise try
        by hand. The planner verifies the largest that fit a budget beside its searched candidates, so a
        plan is never chosen blind to the plain scaled-down model. ``limit`` caps the product of choices."""
        dims = self.arch_dimensions()
        n = math.prod(len(d.choices) for d in dims)
        if n > limit:
            raise ConfigError("limit", f"{n} uniform configs of {self.name!r} exceed the limit {limit}")
        out: list[Config] = []
        seen: set[str] = set()
        for combo in itertools.product(*(d.choices for d in dims)):
            cfg = {d.name: (v if d.length is None else [v] * d.length) for d, v in zip(dims, combo)}
            cfg = self._repair(cfg)
            if not self.is_valid(cfg):
                continue
            cfg = self.validate(cfg)
            key = repr(sorted(cfg.items()))
            if key not in seen:
                seen.add(key)
                out.append(cfg)
        return out

    def network_key(self, config: Mapping[str, Any]) -> str:
        """Identity of the network a config builds, blind to choices of units it does not use (e.g. the
        kernel size of a block beyond a stage's depth): input shape, then per unit whether it is active
        and, for active units, its MACs, parameters, activations and compression. Two configs with one
        key extract the same network, so the planner measures and fine-tunes it once. Spaces that can
        state their inactive choices exactly may override this."""
        cfg = self.validate(config)
        n = len(self.units())
        bits = cfg.get("bits", [32] * n)
        sparsity = cfg.get("sparsity", [0.0] * n)
        parts: list[Any] = [list(self.input_shape(cfg)), cfg.get("sparsity_pattern")]
        for u, b, sp in zip(self.unit_costs(cfg), bits, sparsity):
            parts.append([u.macs, u.params, u.act_elems, b, sp] if u.active else None)
        return json.dumps(parts, separators=(",", ":"))

    # ----------------------------------------------------------------- params / trials
    def to_params(self, config: Config) -> dict[str, Any]:
        """Flatten a config to ``{param_name: value}`` (``ks.3``), the form Optuna trials use."""
        params: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            v = config[name]
            if dim.length is None:
                params[name] = v
            else:
                params.update({f"{name}.{i}": x for i, x in enumerate(v)})
        return params

    def from_params(self, params: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`to_params` (missing compression params take defaults)."""
        cfg: Config = {}
        defaults = self.defaults()
        for name, dim in self.dimensions.items():
            if dim.length is None:
                if name in params:
                    cfg[name] = params[name]
            else:
                keys = dim.param_names()
                if all(k in params for k in keys):
                    cfg[name] = [params[k] for k in keys]
                elif name not in defaults:
                    missing = next(k for k in keys if k not in params)
                    raise ConfigError(missing, "missing parameter")
        return self.validate(cfg)

    # ----------------------------------------------------------------- costs and features
    def costs(self, config: Mapping[str, Any]) -> dict[str, float]:
        """Whole-network analytic costs: MACs, params, weight bytes (bits and sparsity applied),
        activation elements."""
        cfg = self.validate(config)
        units = self.unit_costs(cfg)
        wbytes = 0.0
        for u, b, s in zip(units, cfg["bits"], cfg["sparsity"]):
            wbytes += u.params * (b / 8.0) * (1.0 - s)
        return {
            "macs": float(sum(u.macs for u in units)),
            "params": float(sum(u.params for u in units)),
            "weight_bytes": wbytes,
            "act_elems": float(sum(u.act_elems for u in units)),
        }

    def count_params(self, config: Mapping[str, Any]) -> int:
        """Analytic parameter count of the extracted subnet (must equal the real count)."""
        return int(self.costs(config)["params"])

    def arch_features(self, config: Config) -> tuple[list[str], list[float]]:
        """Architecture part of :meth:`encode`: one-hot per choice for every element of every arch
        dimension (ordinal for resolution-like dims with many choices)."""
        names: list[str] = []
        values: list[float] = []
        for dim in self.arch_dimensions():
            elems = [config[dim.name]] if dim.length is None else config[dim.name]
            pnames = dim.param_names()
            for pname, v in zip(pnames, elems):
                if len(dim.choices) > 12 or dim.kind == "resolution":
                    lo, hi = min(dim.choices), max(dim.choices)
                    names.append(pname)
                    values.append((float(v) - lo) / max(hi - lo, 1e-9))
                else:
                    for c in dim.choices:
                        names.append(f"{pname}={c}")
                        values.append(1.0 if v == c else 0.0)
        return names, values

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Fixed-length numeric features of a config: arch one-hots, then per unit
        ``[log1p MACs, log1p params, log1p act, active, bits/32, sparsity]``, then whole-net log costs.
        See :meth:`feature_names`."""
        return np.asarray(self._features(self.validate(config))[1], dtype=np.float64)

    def feature_names(self) -> list[str]:
        return self._features(self.largest())[0]

    def _features(self, cfg: Config) -> tuple[list[str], list[float]]:
        names, values = self.arch_features(cfg)
        units = self.unit_costs(cfg)
        for u, b, s in zip(units, cfg["bits"], cfg["sparsity"]):
            names += [f"{u.name}:{k}" for k in ("log_macs", "log_params", "log_act", "active", "bits", "sparsity")]
            values += [np.log1p(u.macs), np.log1p(u.params), np.log1p(u.act_elems), float(u.active),
                       b / 32.0, float(s) if u.active else 0.0]
        names.append("sparsity_pattern=2:4")
        values.append(1.0 if cfg["sparsity_pattern"] == "2:4" else 0.0)
        tot = self.costs(cfg)
        for k in ("macs", "params", "weight_bytes", "act_elems"):
            names.append(f"total:log_{k}")
            values.append(float(np.log1p(tot[k])))
        return names, values

    # ----------------------------------------------------------------- misc
    def supernet(self) -> "Any":
        """Build the weight-sharing supernet of this space (see :meth:`build_supernet`)."""
        return self.build_supernet()

    def describe(self) -> dict[str, Any]:
        """JSON summary for ``fitplan spaces``."""
        return {"space": self.name, "spec": self.spec(), "units": len(self.units()),
                "dimensions": [d.to_dict() for d in self.dimensions.values()]}

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self._spec.items())
        return f"{type(self).__name__}({kw})"


def _check_value(dim: Dimension, value: Any) -> Any:
    def one(v: Any, field: str) -> Any:
        # accept 0/1 ints for float choices and 8.0 for 8 while keeping the canonical choice value
        for c in dim.choices:
            if v == c and (isinstance(v, bool) == isinstance(c, bool)) and not isinstance(v, (list, dict)):
                return c
        raise ConfigError(field, f"invalid value {v!r}", dim.choices)

    if dim.length is None:
        return one(value, dim.name)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(dim.name, f"expected a list of {dim.length} values, got {type(value).__name__}")
    if len(value) != dim.length:
        raise ConfigError(dim.name, f"expected {dim.length} values, got {len(value)}")
    return [one(v, f"{dim.name}.{i}") for i, v in enumerate(value)]


def create_space(name: str | Mapping[str, Any], **spec: Any) -> SearchSpace:
    """Build a registered space by name (``create_space("ofa_mbv3", width_mult=0.5)``) or from a
    ``spec()`` dict."""
    if isinstance(name, Mapping):
        spec = {**{k: v for k, v in name.items() if k != "space"}, **spec}
        name = name["space"]
    _ensure_builtin_spaces()
    return SPACES.get(name)(**spec)


def list_spaces() -> list[str]:
    _ensure_builtin_spaces()
    return SPACES.names()


def _ensure_builtin_spaces() -> None:
    import fitplan.search_spaces  # noqa: F401  (registers built-in spaces on import)
