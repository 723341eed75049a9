"""Built-in hardware profiles.

* One profile per device column of the shipped latency datasets
  (:func:`fitplan.hw_profiles.latency_data.load_latency_dataset`): HELP's FBNet devices (phones, Xeon CPUs,
  GPUs at batch 1/32/64) and OFA-MobileNetV3 GPUs x batch. The profile name is the data's own column name
  (``pixel3``, ``gold_6240``, ``1080ti_32``); a device present in several spaces gets one profile with one
  dataset reference per space. These data hold fp32 latencies only, so every compression capability is
  ``unknown`` for them, and the runtime engine is ``unknown`` (the data does not record it).
* ``local-cpu-1t`` / ``local-cpu``: this machine, ONNX Runtime CPU execution provider, 1 thread / all
  cores. They are *measurable* (``fitplan measure``); ``local-cpu-1t`` references the shipped local
  dataset ``data/local_cpu_1t_ofa_mbv3.jsonl`` when that file exists.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fitplan.hw_profiles.latency_data import SHIPPED_SPACES, load_latency_dataset
from fitplan.hw_profiles.profile import (Capabilities, DatasetRef, HardwareProfile, Provenance, Runtime,
                                         utc_now)
from fitplan.hw_profiles.store import BUILTIN_PROFILES
from fitplan.paths import package_data

HELP_CITATION = ("Lee, Lee, Chong, Hwang: HELP: Hardware-Adaptive Efficient Latency Prediction for NAS via "
                 "Meta-Learning, NeurIPS 2021 (data MIT-licensed); FBNet edge-device values originate in "
                 "HW-NAS-Bench (Li et al., ICLR 2021, MIT)")

#: Shipped local dataset per (profile, space): file name under ``fitplan/hw_profiles/data``.
LOCAL_DATASETS: dict[tuple[str, str], str] = {("local-cpu-1t", "ofa_mbv3"): "local_cpu_1t_ofa_mbv3.jsonl"}


@dataclass(frozen=True)
class DeviceInfo:
    """What a dataset column name means: device kind and model (from the device's public name)."""

    kind: str
    model: str


#: Device model behind each column stem of the shipped data (batch suffix removed).
DEVICE_INFO: dict[str, DeviceInfo] = {
    "1080ti": DeviceInfo("gpu", "NVIDIA GeForce GTX 1080 Ti"),
    "titanx": DeviceInfo("gpu", "NVIDIA Titan X"),
    "2080ti": DeviceInfo("gpu", "NVIDIA GeForce RTX 2080 Ti"),
    "titan_rtx": DeviceInfo("gpu", "NVIDIA Titan RTX"),
    "titan_xp": DeviceInfo("gpu", "NVIDIA Titan Xp"),
    "v100": DeviceInfo("gpu", "NVIDIA Tesla V100"),
    "gold_6240": DeviceInfo("cpu", "Intel Xeon Gold 6240"),
    "silver_4114": DeviceInfo("cpu", "Intel Xeon Silver 4114"),
    "silver_4210r": DeviceInfo("cpu", "Intel Xeon Silver 4210R"),
    "pixel3": DeviceInfo("phone", "Google Pixel 3"),
    "samsung_a50": DeviceInfo("phone", "Samsung Galaxy A50"),
    "samsung_s7": DeviceInfo("phone", "Samsung Galaxy S7"),
    "essential_ph_1": DeviceInfo("phone", "Essential PH-1"),
}


def device_info(column: str) -> tuple[DeviceInfo, int]:
    """Device model and batch size of a data column (GPU columns end in ``_<batch>``; ``essential_ph_1``
    is a phone name, not batch 1 of ``essential_ph``)."""
    if column in DEVICE_INFO:
        return DEVICE_INFO[column], 1
    head, _, tail = column.rpartition("_")
    if head in DEVICE_INFO and tail.isdigit():
        return DEVICE_INFO[head], int(tail)
    raise KeyError(f"no device information for data column {column!r}; add it to DEVICE_INFO")


@lru_cache(maxsize=None)
def shipped_devices() -> dict[str, tuple[tuple[str, int], ...]]:
    """Device column -> ``((space, batch), ...)`` over the shipped datasets."""
    out: dict[str, list[tuple[str, int]]] = {}
    for space in SHIPPED_SPACES:
        ds = load_latency_dataset(space)
        for col in ds.devices:
            # not ds.batch_size(): it reads the model number of "gold_6240" as a batch size
            out.setdefault(col, []).append((space, device_info(col)[1]))
    return {k: tuple(v) for k, v in out.items()}


def shipped_profile(column: str) -> HardwareProfile:
    """The built-in profile of one device column of the shipped data."""
    entries = shipped_devices()[column]
    info, batch = device_info(column)
    spaces = [s for s, _ in entries]
    src = f"device column {column!r} of HELP's latency data ({', '.join(spaces)} space)"
    datasets = []
    for space, _ in entries:
        ds = load_latency_dataset(space)
        datasets.append(DatasetRef(
            space=space, dataset=f"shipped:{space}", column=column, variant="fp32",
            provenance=Provenance("dataset", f"{len(ds)} measured {space} architectures, column {column!r}; "
                                             + ds.source, citation=HELP_CITATION,
                                  how="per-architecture latency in ms as published; batch from the column "
                                      "name suffix")))
    prov = {
        "kind": Provenance("dataset", f"{info.model} ({info.kind}), from the {src}", citation=HELP_CITATION),
        "runtime": Provenance("dataset", f"batch {batch} from the column name suffix; the data does not record "
                                         "the inference engine or thread count", citation=HELP_CITATION),
        "capabilities": Provenance("dataset", "the data holds fp32 latencies only: int8/int4/fp16 and "
                                              "sparse-kernel speed-ups are unknown", citation=HELP_CITATION),
    }
    return HardwareProfile(
        name=column, kind=info.kind, description=f"{info.model}, batch {batch} (HELP data)",
        runtime=Runtime(engine="unknown", batch=batch, local=False),
        capabilities=Capabilities(),
        datasets=datasets, provenance=prov)


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    val = line.split(":", 1)[1].strip()
                    if val and not val.isdigit():
                        return val
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def total_memory_mb() -> float | None:
    """``MemTotal`` from ``/proc/meminfo`` in MiB, or ``None`` where unavailable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def local_profile(name: str, threads: int | None) -> HardwareProfile:
    """A measurable profile of this machine with ONNX Runtime's CPU EP (``threads=None``: all cores)."""
    ncpu = os.cpu_count() or 1
    try:  # cores this process may run on (containers / taskset), not the host's count
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = ncpu
    thr = usable if threads is None else threads
    host = platform.node() or "this machine"
    now = utc_now()
    where = f"{host} ({cpu_model()}, {ncpu} logical cores)"
    ort_doc = "ONNX Runtime CPU execution provider kernels (documented behaviour of onnxruntime)"
    prov = {
        "kind": Provenance("measured", f"the machine fitplan runs on: {cpu_model()}", where=where, when=now,
                           how="/proc/cpuinfo"),
        "runtime": Provenance("user", f"onnxruntime CPUExecutionProvider, intra_op_num_threads={thr}"
                              + (" (all usable cores: os.sched_getaffinity)" if threads is None else ""),
                              where=where, when=now),
        "capabilities.int4_speedup": Provenance(
            "documented", "onnxruntime's CPU EP has no int4 Conv kernels (int4 exists only as weight-only "
                          "MatMulNBits); 4-bit configs are not measurable here", how=ort_doc),
        "capabilities.sparse_kernels": Provenance(
            "documented", "onnxruntime's CPU EP runs dense Conv/Gemm kernels whatever the zero pattern of the "
                          "weights, so weight sparsity does not change measured latency", how=ort_doc),
        "capabilities": Provenance(
            "assumed", "int8 (static QDQ) speed-up depends on the CPU's integer dot-product support "
                       "(e.g. AVX-512 VNNI) and is left unknown: measure configs with bits=8 to find out; "
                       "dynamic int8 quantization of convolutions is slower than static QDQ on CPU"),
    }
    mem = total_memory_mb()
    if mem is not None:
        prov["memory_limit_mb"] = Provenance("measured", f"MemTotal {mem:.0f} MiB", where=where, when=now,
                                             how="/proc/meminfo MemTotal")
    datasets = []
    caps = Capabilities(int4_speedup="no", sparse_kernels="no")
    for (pname, space), fname in LOCAL_DATASETS.items():
        path = package_data("hw_profiles", "data", fname)
        if pname == name and path.is_file():
            speedup = int8_speedup_from_records(path)
            if speedup is not None:
                caps.int8_speedup = speedup[0]
                prov["capabilities.int8_speedup"] = Provenance(
                    "measured", f"{speedup[1]} in the shipped dataset {fname}", how="fitplan measure")
            datasets.append(DatasetRef(
                space=space, dataset=f"jsonl:{fname}", variant="config",
                provenance=Provenance("measured", f"configs of {space} measured with fitplan measure on the "
                                                  "machine recorded in each line's fingerprint",
                                      how="onnxruntime CPU EP, 1 thread, warm-up then repeats until the "
                                          "median is stable; see each record's 'method'")))
    return HardwareProfile(
        name=name, kind="cpu",
        description=f"this machine, onnxruntime CPU EP, {'1 thread' if threads == 1 else f'{thr} threads'}",
        runtime=Runtime(engine="onnxruntime", provider="CPUExecutionProvider", threads=thr, batch=1, local=True),
        capabilities=caps, memory_limit_mb=mem, datasets=datasets, provenance=prov)


def int8_speedup_from_records(path: Any) -> tuple[str, str] | None:
    """``("yes" | "no" | "unknown", why)`` from fp32 / int8 pairs of the same architecture in a measured
    JSONL file (median fp32/int8 latency ratio: >= 1.1 yes, <= 1.0 no), ``None`` without pairs."""
    from fitplan.hw_profiles.kit import speedup_verdict
    from fitplan.hw_profiles.measure import ok_records, read_measurements

    try:
        _, recs = read_measurements(path)
    except Exception:  # noqa: BLE001 - a broken data file must not make the profile unusable
        return None
    rows = [{"arch": {k: v for k, v in r["config"].items() if k not in ("bits", "sparsity", "sparsity_pattern")},
             "variant": r["variant"], "median_ms": r["median_ms"]} for r in ok_records(recs)]
    return speedup_verdict(rows)


def _register() -> None:
    for column in shipped_devices():
        BUILTIN_PROFILES.register(column, lambda c=column: shipped_profile(c), overwrite=True)
    BUILTIN_PROFILES.register("local-cpu-1t", lambda: local_profile("local-cpu-1t", 1), overwrite=True)
    BUILTIN_PROFILES.register("local-cpu", lambda: local_profile("local-cpu", None), overwrite=True)


_register()
