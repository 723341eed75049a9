"""The measured latency datasets that ship with fitplan (HELP / HW-NAS-Bench devices).

``scripts/build_latency_data.py`` converts ``../shared/data/latency/<space>`` into
``fitplan/hw_profiles/data/<space>_latency.npz`` (plain arrays, no pickle): the architectures, one
latency column per device (milliseconds), HELP's reference-architecture indices and the meta-train /
meta-valid split. Loading is lossless: :meth:`LatencyDataset.arch` returns the exact dicts of
``archs.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fitplan.errors import UnknownNameError
from fitplan.paths import package_data

FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
SHIPPED_SPACES = ("fbnet", "ofa_mbv3")


@dataclass(frozen=True)
class LatencyDataset:
    """Measured latencies of one space's architectures on several devices.

    Attributes:
        space: space name.
        arrays: architecture arrays (``op_idx_list`` for fbnet; ``ks``, ``e``, ``d``, ``r`` for ofa_mbv3).
        devices: device names, column order of ``latency_ms``.
        latency_ms: ``[n_archs, n_devices]`` float64.
        reference: HELP's 10 reference-architecture indices.
        split: ``{"train": [...], "valid": [...]}`` device names.
        source: provenance text.
    """

    space: str
    arrays: dict[str, np.ndarray]
    devices: tuple[str, ...]
    latency_ms: np.ndarray
    reference: tuple[int, ...]
    split: dict[str, tuple[str, ...]]
    source: str

    def __len__(self) -> int:
        return self.latency_ms.shape[0]

    def arch(self, i: int) -> dict[str, Any]:
        """Architecture ``i`` exactly as in ``archs.json``."""
        if self.space == "fbnet":
            idx = [int(v) for v in self.arrays["op_idx_list"][i]]
            return {"op_idx_list": idx, "arch_str": [FBNET_OPS[j] for j in idx]}
        return {"ks": self.arrays["ks"][i].tolist(), "e": self.arrays["e"][i].tolist(),
                "d": self.arrays["d"][i].tolist(), "r": int(self.arrays["r"][i])}

    def archs(self) -> list[dict[str, Any]]:
        return [self.arch(i) for i in range(len(self))]

    def device(self, name: str) -> np.ndarray:
        """Latency column (ms) of one device."""
        if name not in self.devices:
            raise UnknownNameError(f"{self.space} device", name, self.devices)
        return self.latency_ms[:, self.devices.index(name)]


@lru_cache(maxsize=None)
def load_latency_dataset(space: str) -> LatencyDataset:
    """Load the shipped dataset of ``space`` (``fbnet`` or ``ofa_mbv3``)."""
    if space not in SHIPPED_SPACES:
        raise UnknownNameError("latency dataset", space, SHIPPED_SPACES)
    with np.load(package_data("hw_profiles", "data", f"{space}_latency.npz"), allow_pickle=False) as z:
        devices = tuple(str(s) for s in z["devices"])
        keys = ("op_idx_list",) if space == "fbnet" else ("ks", "e", "d", "r")
        return LatencyDataset(
            space=space,
            arrays={k: z[k] for k in keys},
            devices=devices,
            latency_ms=z["latency_ms"],
            reference=tuple(int(i) for i in z["reference"]),
            split={"train": tuple(str(s) for s in z["split_train"]),
                   "valid": tuple(str(s) for s in z["split_valid"])},
            source=str(z["source"]),
        )
