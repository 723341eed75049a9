"""The reference workload that anchors latency measurements on a shared, noisy machine.

Why: on a virtual machine with co-tenants the speed of one core drifts by 10-20 % over seconds, so two
back-to-back medians of the same model can differ by that much. The drift hits every model run in the same
moments about equally, so the *ratio* of a model's latency to a fixed reference model timed interleaved
with it (blocks of the model, then blocks of the reference for the same wall time) is stable to a few
percent. fitplan reports ``ratio x anchor``, where the anchor is the reference's latency on this machine,
measured once (spread over a few seconds, lower quartile of window medians: the quiet-machine speed) and
cached per machine, thread count and runtime in ``anchors.json`` of :func:`fitplan.paths.fitplan_cache`. Every record keeps the raw
median beside it, and the method string says how the number was obtained.

The reference is a small MobileNet-style network (a strided 3x3 stem, three inverted-residual blocks with
depthwise convolutions, pooling, a classifier) built with ``onnx.helper`` from seeded weights, so its bytes
are the same everywhere (its sha256 is part of the anchor's key) and it runs the same kernels as the
searched subnets. Calibration kits ship a copy, so ``bench.py`` anchors without fitplan or torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fitplan.hw_profiles import bench_script
from fitplan.jsonio import atomic_write_text, dumps
from fitplan.paths import fitplan_cache

REFERENCE_ID = "fitplan-ref-mbconv-v1"
REFERENCE_INPUT = [1, 3, 128, 128]
ANCHORS_FORMAT = "fitplan-anchors"
ANCHORS_VERSION = 1


def build_reference_onnx(path: str | os.PathLike) -> Path:
    """Write the reference model (deterministic bytes) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261123)
    inits: list[Any] = []
    nodes: list[Any] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             act: bool = True) -> str:
        w = weight(f"{name}.w", (cout, cin // group, k, k))
        b = weight(f"{name}.b", (cout,))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}.y"], name=name, kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4, group=group))
        if not act:
            return f"{name}.y"
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.a"], name=f"{name}.relu"))
        return f"{name}.a"

    x = conv("input", "stem", 3, 24, 3, stride=2)
    c = 24
    for i, (cout, stride) in enumerate([(32, 2), (32, 1), (48, 2), (48, 1), (64, 1)]):
        h = conv(x, f"b{i}.expand", c, 4 * c, 1)
        h = conv(h, f"b{i}.dw", 4 * c, 4 * c, 3, stride=stride, group=4 * c)
        h = conv(h, f"b{i}.project", 4 * c, cout, 1, act=False)
        if stride == 1 and cout == c:
            nodes.append(helper.make_node("Add", [x, h], [f"b{i}.out"], name=f"b{i}.add"))
            h = f"b{i}.out"
        x, c = h, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    w = weight("fc.w", (10, c))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", w, "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, REFERENCE_ID, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  REFERENCE_INPUT)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, producer_name="fitplan", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


def reference_path() -> Path:
    """The reference model in :func:`fitplan.paths.fitplan_cache` (built on first use)."""
    path = fitplan_cache() / f"{REFERENCE_ID}.onnx"
    if not path.is_file():
        build_reference_onnx(path)
    return path


def _anchor_key(threads: int, provider: str, sha: str) -> str:
    info = bench_script.machine_info()
    return "|".join([REFERENCE_ID, sha[:16], str(info.get("host")), str(info.get("cpu_model")),
                     str(info.get("logical_cores")), str(info.get("onnxruntime")), f"threads={threads}", provider])


def _anchors_file() -> Path:
    return fitplan_cache() / "anchors.json"


#: anchors already looked up in this process, by (cache dir, threads, provider): every measurement asks.
_LOOKED_UP: dict[tuple[str, int, str], dict[str, Any]] = {}


def get_anchor(threads: int = 1, provider: str = "CPUExecutionProvider", *, refresh: bool = False) -> dict[str, Any]:
    """The cached anchor of this machine for ``threads`` / ``provider`` (measured on first use).

    Returns ``{"reference": REFERENCE_ID, "sha256", "anchor_ms", "window_medians_ms", "measured_at",
    "method", ...}`` (see :func:`fitplan.hw_profiles.bench_script.measure_anchor`). ``refresh`` re-measures it.
    """
    memo = (str(fitplan_cache()), int(threads), provider)
    if not refresh and memo in _LOOKED_UP:
        return _LOOKED_UP[memo]
    path = reference_path()
    sha = bench_script.sha256_file(str(path))
    key = _anchor_key(threads, provider, sha)
    f = _anchors_file()
    doc: dict[str, Any] = {"format": ANCHORS_FORMAT, "format_version": ANCHORS_VERSION, "anchors": {}}
    if f.is_file():
        try:
            loaded = json.loads(f.read_text())
            if loaded.get("format") == ANCHORS_FORMAT and loaded.get("format_version") == ANCHORS_VERSION:
                doc = loaded
        except (OSError, ValueError):
            pass  # a damaged cache is re-measured, never trusted
    if not refresh and key in doc["anchors"]:
        _LOOKED_UP[memo] = doc["anchors"][key]
        return _LOOKED_UP[memo]
    anchor = bench_script.measure_anchor(str(path), REFERENCE_INPUT, threads, provider)
    anchor.update({"reference": REFERENCE_ID, "sha256": sha})
    doc["anchors"][key] = anchor
    atomic_write_text(f, dumps(doc) + "\n")
    _LOOKED_UP[memo] = anchor
    return anchor
