"""`HardwareProfile`: what fitplan knows about a device, and where each piece of knowledge came from.

A profile is plain data stored as versioned JSON (``format = "fitplan-hardware-profile"``). It says what
the device is (``kind``), how models run on it (``runtime``: engine, execution provider, threads, batch),
what compression can speed it up (``capabilities``, each one *yes* / *no* / *unknown*), its memory limit,
whether energy can be measured, which measured latency data exist for it (``datasets``) and the calibrated
latency-predictor state per search space (``predictors``, written by :mod:`fitplan.predictors`).

Every datum carries provenance (:class:`Provenance`): measured (where / when / how), imported from a
dataset (with a citation), declared by the user, or assumed. :meth:`HardwareProfile.validate` refuses a
profile in which a set field has no provenance, so an unexplained number cannot enter a plan.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from fitplan.errors import ConfigError

PROFILE_FORMAT = "fitplan-hardware-profile"
PROFILE_VERSION = 1

#: Device kinds. ``phone`` = a mobile SoC measured as a whole (the data does not say which unit ran it).
KINDS: tuple[str, ...] = ("cpu", "gpu", "npu", "mcu", "asic", "fpga", "phone")
#: Tri-state answers for capabilities: known to help, known not to help (or unsupported), unknown.
TRISTATE: tuple[str, ...] = ("yes", "no", "unknown")
#: Capability names (see :class:`Capabilities`).
CAPABILITIES: tuple[str, ...] = ("int8_speedup", "int4_speedup", "fp16_speedup", "sparse_kernels")
#: Where a datum came from.
PROVENANCE_SOURCES: tuple[str, ...] = ("measured", "dataset", "user", "assumed", "documented")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def utc_now() -> str:
    """Current UTC time as ISO-8601 with seconds (what provenance records use)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_profile_name(name: Any, field_name: str = "name") -> str:
    """A profile name is a file name too: letters, digits, ``_ . -``, at most 64 characters."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(field_name, f"invalid profile name {name!r}: use letters, digits, '_', '.', '-' "
                                      "(starting with a letter or digit, at most 64 characters)")
    return name


def _check_choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(field_name, f"invalid value {value!r}", allowed)
    return value


def _check_keys(field_name: str, d: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(field_name, f"expected an object, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{field_name}.{k}", "unknown key", allowed)


@dataclass
class Provenance:
    """Where one datum came from.

    Attributes:
        source: one of :data:`PROVENANCE_SOURCES`.
        text: one human sentence (``"measured by fitplan measure on AMD EPYC, 1 thread"``).
        where: machine / lab / dataset location, if known.
        when: ISO-8601 time, if known.
        how: method (tool, repeats, statistic), if relevant.
        citation: paper / dataset reference for imported data.
    """

    source: str
    text: str
    where: str | None = None
    when: str | None = None
    how: str | None = None
    citation: str | None = None

    def __post_init__(self) -> None:
        _check_choice("provenance.source", self.source, PROVENANCE_SOURCES)
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError("provenance.text", "must be a non-empty sentence saying where the datum came from")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field_name: str = "provenance") -> "Provenance":
        _check_keys(field_name, d, ("source", "text", "where", "when", "how", "citation"))
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise ConfigError(field_name, str(e)) from None


@dataclass
class Runtime:
    """How inference runs on the device.

    ``engine`` e.g. ``onnxruntime`` or ``unknown``; ``provider`` the execution provider
    (``CPUExecutionProvider``); ``threads`` intra-op threads (``None``: unknown / not applicable);
    ``batch`` the batch size latencies refer to; ``local`` whether fitplan can run and time models on it
    from this process (only such profiles can be measured by ``fitplan measure``).
    """

    engine: str = "unknown"
    provider: str | None = None
    threads: int | None = None
    batch: int = 1
    local: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.engine, str) or not self.engine:
            raise ConfigError("runtime.engine", "must be a non-empty string (e.g. 'onnxruntime', 'unknown')")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError("runtime.threads", f"must be a positive integer or null, got {self.threads!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError("runtime.batch", f"must be a positive integer, got {self.batch!r}")
        if not isinstance(self.local, bool):
            raise ConfigError("runtime.local", f"must be true or false, got {self.local!r}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Runtime":
        _check_keys("runtime", d, ("engine", "provider", "threads", "batch", "local"))
        return cls(**dict(d))


@dataclass
class Capabilities:
    """What compression can make faster on the device: each ``"yes"`` / ``"no"`` / ``"unknown"``.

    ``int8_speedup`` / ``int4_speedup`` / ``fp16_speedup``: whether running that precision is faster than
    fp32 here (``no`` also when unsupported). ``sparse_kernels``: whether weight sparsity reduces latency.
    The planner only credits a latency gain for a capability that is ``yes`` or measurable.
    """

    int8_speedup: str = "unknown"
    int4_speedup: str = "unknown"
    fp16_speedup: str = "unknown"
    sparse_kernels: str = "unknown"

    def __post_init__(self) -> None:
        for k in CAPABILITIES:
            _check_choice(f"capabilities.{k}", getattr(self, k), TRISTATE)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Capabilities":
        _check_keys("capabilities", d, CAPABILITIES)
        return cls(**dict(d))


@dataclass
class DatasetRef:
    """A measured latency dataset for this device in one search space.

    ``dataset`` names where the data lives, by scheme (see :mod:`fitplan.hw_profiles.datasets`):
    ``shipped:<space>`` (the HELP/HW-NAS-Bench arrays shipped with fitplan, ``column`` = device column),
    ``jsonl:<path>`` (a file written by :func:`fitplan.hw_profiles.measure.measure_configs`; a relative
    path is relative to the package data folder), ``inline`` (``samples`` held in the profile, e.g. from
    the calibration kit). ``variant`` says which numeric format the latencies are for (``fp32`` ...).
    """

    space: str
    dataset: str
    provenance: Provenance
    column: str | None = None
    variant: str = "fp32"
    samples: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not self.space:
            raise ConfigError("datasets.space", "must name a search space")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("datasets.dataset", "must be 'shipped:<space>', 'jsonl:<path>' or 'inline'")
        if self.dataset == "inline":
            if not isinstance(self.samples, list) or not self.samples:
                raise ConfigError("datasets.samples", "an inline dataset needs a non-empty list of samples")
            from fitplan.jsonio import check_finite

            for i, s in enumerate(self.samples):
                if not isinstance(s, Mapping) or "arch" not in s or "latency_ms" not in s:
                    raise ConfigError(f"datasets.samples.{i}", "expected {'arch': ..., 'latency_ms': float}")
                check_finite(f"datasets.samples.{i}.latency_ms", s["latency_ms"], positive=True)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"space": self.space, "dataset": self.dataset, "variant": self.variant}
        if self.column is not None:
            d["column"] = self.column
        if self.samples is not None:
            d["samples"] = copy.deepcopy(self.samples)
        d["provenance"] = self.provenance.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetRef":
        _check_keys("datasets", d, ("space", "dataset", "column", "variant", "samples", "provenance"))
        if "provenance" not in d:
            raise ConfigError("datasets.provenance", "every dataset reference needs provenance")
        kw = dict(d)
        kw["provenance"] = Provenance.from_dict(kw["provenance"], "datasets.provenance")
        return cls(**kw)


@dataclass
class HardwareProfile:
    """A device fitplan can plan for.

    Attributes:
        name: unique profile name (also the file name of a user profile).
        kind: one of :data:`KINDS`.
        description: one line for ``fitplan profiles``.
        runtime: :class:`Runtime`.
        capabilities: :class:`Capabilities`.
        memory_limit_mb: usable memory for the model, ``None`` when unknown.
        energy_available: whether energy per inference can be measured / is in the data.
        datasets: measured latency datasets (:class:`DatasetRef`), at most one per (space, variant).
        predictors: calibrated latency-predictor state per space (JSON dicts written by
            ``fitplan calibrate fit``); empty until calibrated.
        provenance: where each set field came from, keyed by field (``kind``, ``runtime``,
            ``capabilities.int8_speedup``, ``memory_limit_mb``, ``energy_available``, ``predictors.<space>``).
        builtin: set by the store for profiles shipped with fitplan (not saved).
    """

    name: str
    kind: str
    description: str = ""
    runtime: Runtime = field(default_factory=Runtime)
    capabilities: Capabilities = field(default_factory=Capabilities)
    memory_limit_mb: float | None = None
    energy_available: bool = False
    datasets: list[DatasetRef] = field(default_factory=list)
    predictors: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)
    builtin: bool = False

    # ---------------------------------------------------------------- validation
    def validate(self) -> "HardwareProfile":
        """Check every field; raise :class:`ConfigError` naming the first bad one. Returns ``self``."""
        check_profile_name(self.name)
        _check_choice("kind", self.kind, KINDS)
        if not isinstance(self.runtime, Runtime):
            raise ConfigError("runtime", "expected a Runtime")
        if not isinstance(self.capabilities, Capabilities):
            raise ConfigError("capabilities", "expected a Capabilities")
        if self.memory_limit_mb is not None:
            from fitplan.jsonio import check_finite

            self.memory_limit_mb = check_finite("memory_limit_mb", self.memory_limit_mb, positive=True)
        if not isinstance(self.energy_available, bool):
            raise ConfigError("energy_available", f"must be true or false, got {self.energy_available!r}")
        seen: set[tuple[str, str]] = set()
        for i, ref in enumerate(self.datasets):
            if not isinstance(ref, DatasetRef):
                raise ConfigError(f"datasets.{i}", "expected a DatasetRef")
            key = (ref.space, ref.variant)
            if key in seen:
                raise ConfigError(f"datasets.{i}", f"two datasets for space {ref.space!r}, variant {ref.variant!r}")
            seen.add(key)
        if not isinstance(self.predictors, dict) or not all(isinstance(v, dict) for v in self.predictors.values()):
            raise ConfigError("predictors", "expected {space: predictor state dict}")
        for k, v in self.provenance.items():
            if not isinstance(v, Provenance):
                raise ConfigError(f"provenance.{k}", "expected a Provenance")
        missing = self.missing_provenance()
        if missing:
            raise ConfigError(f"provenance.{missing[0]}", "a set field has no provenance; say where it came from")
        return self

    def missing_provenance(self) -> list[str]:
        """Fields that are set (not unknown / default) but have no provenance entry."""
        need = ["kind", "runtime"]
        need += [f"capabilities.{c}" for c in CAPABILITIES if getattr(self.capabilities, c) != "unknown"]
        if self.memory_limit_mb is not None:
            need.append("memory_limit_mb")
        if self.energy_available:
            need.append("energy_available")
        need += [f"predictors.{s}" for s in self.predictors]
        return [k for k in need if k not in self.provenance]

    # ---------------------------------------------------------------- queries
    def dataset_for(self, space: str, variant: str = "fp32") -> DatasetRef | None:
        """The dataset reference for ``space`` (and numeric ``variant``), if any."""
        for ref in self.datasets:
            if ref.space == space and ref.variant == variant:
                return ref
        return None

    @property
    def measurable(self) -> bool:
        """Whether ``fitplan measure`` can time models on this device from here."""
        return self.runtime.local and self.runtime.engine == "onnxruntime"

    def summary(self) -> str:
        """One line for listings."""
        rt = self.runtime
        engine = rt.engine + (f" {rt.threads}t" if rt.threads else "")
        spaces = ",".join(sorted({d.space for d in self.datasets})) or "-"
        cal = ",".join(sorted(self.predictors)) or "-"
        src = "builtin" if self.builtin else "user"
        return (f"{self.name:<16} {self.kind:<6} b{rt.batch:<3} {engine:<15} data: {spaces:<15} "
                f"calibrated: {cal:<10} [{src}] {self.description}")

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON payload (without the format header)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "runtime": self.runtime.to_dict(),
            "capabilities": self.capabilities.to_dict(),
            "memory_limit_mb": self.memory_limit_mb,
            "energy_available": self.energy_available,
            "datasets": [d.to_dict() for d in self.datasets],
            "predictors": copy.deepcopy(self.predictors),
            "provenance": {k: v.to_dict() for k, v in sorted(self.provenance.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HardwareProfile":
        """Build and validate a profile from :meth:`to_dict` output (format header allowed and ignored)."""
        allowed = ("format", "format_version", "name", "kind", "description", "runtime", "capabilities",
                   "memory_limit_mb", "energy_available", "datasets", "predictors", "provenance")
        _check_keys("profile", d, allowed)
        for req in ("name", "kind"):
            if req not in d:
                raise ConfigError(req, "missing")
        mem = d.get("memory_limit_mb")
        if isinstance(mem, float) and not math.isfinite(mem):
            raise ConfigError("memory_limit_mb", "must be finite")
        datasets = d.get("datasets", [])
        if not isinstance(datasets, list):
            raise ConfigError("datasets", "expected a list")
        prov = d.get("provenance", {})
        if not isinstance(prov, Mapping):
            raise ConfigError("provenance", "expected an object")
        prof = cls(
            name=d["name"],
            kind=d["kind"],
            description=str(d.get("description", "")),
            runtime=Runtime.from_dict(d.get("runtime", {})),
            capabilities=Capabilities.from_dict(d.get("capabilities", {})),
            memory_limit_mb=mem,
            energy_available=d.get("energy_available", False),
            datasets=[DatasetRef.from_dict(x) for x in datasets],
            predictors=copy.deepcopy(dict(d.get("predictors", {}))),
            provenance={k: Provenance.from_dict(v, f"provenance.{k}") for k, v in prov.items()},
        )
        return prof.validate()

    def save(self, path: Any) -> None:
        """Write the profile as versioned JSON (atomically)."""
        from fitplan.jsonio import save_versioned

        self.validate()
        save_versioned(path, PROFILE_FORMAT, PROFILE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> "HardwareProfile":
        """Read a profile written by :meth:`save`; checks format and version."""
        from fitplan.jsonio import load_versioned

        return cls.from_dict(load_versioned(path, PROFILE_FORMAT, (PROFILE_VERSION,)))

    def copy(self) -> "HardwareProfile":
        """A deep copy (built-in profiles are shared objects; copy before changing one)."""
        new = HardwareProfile.from_dict(self.to_dict())
        new.builtin = False
        return new
