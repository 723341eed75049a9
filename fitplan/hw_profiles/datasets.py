"""Reading the measured latency data a profile references (:class:`~fitplan.hw_profiles.profile.DatasetRef`).

Schemes (registered in :data:`DATASET_LOADERS`, no if/elif on names):

``shipped:<space>``
    the HELP / HW-NAS-Bench arrays shipped with fitplan; ``column`` picks the device.
``jsonl:<path>``
    a file written by :func:`fitplan.hw_profiles.measure.measure_configs` (relative paths are relative to
    the package data folder). Only successfully measured lines are returned.
``inline``
    samples held in the profile itself (the calibration kit stores its results this way).

All loaders return :class:`LatencySamples`: configs (architecture dicts as the space accepts them) and
latencies in milliseconds, with provenance. A referenced file that does not exist (e.g. the shipped local
dataset before it has been measured) gives a clear :class:`~fitplan.errors.ConfigError`;
:func:`profile_samples` returns ``None`` for a space the profile has no data for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fitplan.errors import ConfigError
from fitplan.hw_profiles.profile import DatasetRef, HardwareProfile
from fitplan.paths import package_data
from fitplan.registry import Registry


@dataclass
class LatencySamples:
    """Measured latencies of configs of one space on one device.

    ``configs[i]`` was measured at ``latency_ms[i]``; ``records`` keeps the full JSONL records (with
    p10/p90, fingerprint) where the source has them.
    """

    space: str
    configs: list[dict[str, Any]]
    latency_ms: np.ndarray
    provenance: str
    records: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.configs)

    def to_calibration(self) -> dict[str, Any]:
        """The DESIGN.md ``CAL.json`` form: ``{"samples": [{"arch": ..., "latency_ms": ...}]}``."""
        return {"samples": [{"arch": c, "latency_ms": float(v)} for c, v in zip(self.configs, self.latency_ms)]}


DATASET_LOADERS: Registry[Callable[[DatasetRef, str], LatencySamples]] = Registry("dataset scheme")


def _split(ref: DatasetRef) -> tuple[str, str]:
    scheme, _, rest = ref.dataset.partition(":")
    return scheme, rest


@DATASET_LOADERS.register("shipped")
def _load_shipped(ref: DatasetRef, arg: str) -> LatencySamples:
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    ds = load_latency_dataset(arg)
    if ref.column is None:
        raise ConfigError("datasets.column", "a shipped dataset reference needs a device column", ds.devices)
    lat = np.asarray(ds.device(ref.column), dtype=np.float64)
    return LatencySamples(ref.space, ds.archs(), lat, ref.provenance.text)


def resolve_data_path(arg: str) -> Path:
    """A ``jsonl:`` path: absolute, or relative to the package data folder."""
    p = Path(arg)
    return p if p.is_absolute() else package_data("hw_profiles", "data", arg)


@DATASET_LOADERS.register("jsonl")
def _load_jsonl(ref: DatasetRef, arg: str) -> LatencySamples:
    from fitplan.hw_profiles.measure import ok_records, read_measurements

    path = resolve_data_path(arg)
    if not path.is_file():
        raise ConfigError("datasets.dataset", f"measured dataset {path} does not exist (not measured yet?)")
    _, records = read_measurements(path)
    ok = ok_records(records)
    return LatencySamples(ref.space, [r["config"] for r in ok],
                          np.asarray([r["median_ms"] for r in ok], dtype=np.float64),
                          ref.provenance.text, records=ok)


@DATASET_LOADERS.register("inline")
def _load_inline(ref: DatasetRef, arg: str) -> LatencySamples:
    samples = ref.samples or []
    return LatencySamples(ref.space, [s["arch"] for s in samples],
                          np.asarray([s["latency_ms"] for s in samples], dtype=np.float64), ref.provenance.text)


def load_dataset(ref: DatasetRef) -> LatencySamples:
    """Load the data behind one reference (scheme from ``ref.dataset``)."""
    scheme, arg = _split(ref)
    return DATASET_LOADERS.get(scheme)(ref, arg)


def profile_samples(profile: HardwareProfile, space: str, variant: str | None = None) -> LatencySamples | None:
    """The measured data of ``profile`` in ``space`` (first matching reference), ``None`` if it has none
    or its file is missing (e.g. the shipped local dataset has not been measured yet)."""
    for ref in profile.datasets:
        if ref.space == space and (variant is None or ref.variant == variant):
            try:
                return load_dataset(ref)
            except ConfigError:
                if ref.dataset.startswith("jsonl:"):
                    return None
                raise
    return None
