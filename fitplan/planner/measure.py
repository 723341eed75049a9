"""Local latency measurement with ONNX Runtime, for verifying candidates on the machine fitplan runs on.

Method (recorded with every number): export the subnet (random or trained weights; latency does not
depend on weight values for dense kernels) to ONNX, open an ORT CPU session with pinned threads, run
``warmup`` untimed inferences, then ``repeats`` timed ones; report median, p10 and p90 in ms for one batch.
Compressed configs are measured as they would be deployed: units with bits = 8 run as static int8 QDQ
(the exported fake-quant graph), bits = 32 as float; sparsity is not exploited by ORT's dense kernels.
"""
from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fitplan.onnx_utils import export_onnx, ort_session


def machine_fingerprint() -> str:
    try:
        from fitplan.hw_profiles.builtin import cpu_model

        cpu = cpu_model()
    except Exception:  # noqa: BLE001 - hw_profiles optional here
        cpu = platform.processor() or platform.machine()
    import onnxruntime

    return f"{platform.node()} / {cpu} / onnxruntime {onnxruntime.__version__}"


def time_onnx(path: str | Path, input_shape: Sequence[int], *, batch: int = 1, threads: int = 1,
              warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0) -> dict[str, Any]:
    """Median / p10 / p90 latency (ms) of one batch of an ONNX model on the ORT CPU EP."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start) < min_time_s:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) > 10 * repeats:
            break
    t = np.asarray(times)
    return {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)), "repeats": int(len(t)), "warmup": warmup,
            "threads": threads, "batch": batch}


def build_for_measurement(space: Any, supernet: nn.Module | None, config: Mapping[str, Any],
                          calib: Sequence[torch.Tensor] | None = None) -> nn.Module:
    """The deployable module of a config: extracted subnet with its compression applied (fake quant ->
    QDQ at export). Uses random calibration inputs when no real batches are given (ranges then only
    matter for numerics, not for timing)."""
    from fitplan.search_spaces.compression import apply_compression

    supernet = supernet if supernet is not None else space.build_supernet()
    module = supernet.extract(config).eval()
    if any(b < 32 for b in config.get("bits", [])) or any(s > 0 for s in config.get("sparsity", [])):
        shape = space.input_shape(config)
        batches = list(calib) if calib else [torch.randn(8, *shape)]
        apply_compression(module, config, batches)
    return module.eval()


def measure_config(space: Any, config: Mapping[str, Any], *, supernet: nn.Module | None = None,
                   batch: int = 1, threads: int = 1, repeats: int = 30, warmup: int = 5,
                   calib: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Measure one config on this machine; returns the timing dict plus a ``method`` sentence."""
    cfg = space.validate(config)
    module = build_for_measurement(space, supernet, cfg, calib)
    shape = space.input_shape(cfg)
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(module, shape, Path(d) / "m.onnx", batch=batch)
        res = time_onnx(path, shape, batch=batch, threads=threads, warmup=warmup, repeats=repeats)
    int8 = any(b == 8 for b in cfg.get("bits", []))
    res["method"] = (f"measured: onnxruntime CPU EP, {threads} thread(s), batch {batch}, median of "
                     f"{res['repeats']} runs after {warmup} warm-up"
                     + (", int8 units as static QDQ" if int8 else ", fp32") + f", on {machine_fingerprint()}")
    res["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return res
