"""ONNX export and ONNX Runtime sessions shared by measurement, planning and tests.

Export uses the TorchScript-based exporter (``dynamo=False``): it handles every op our subnets use,
takes ~0.1 s per model instead of seconds, and keeps measurement loops fast.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:
    import onnx

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(module: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, *, batch: int = 1,
                dynamic_batch: bool = False, opset: int = OPSET) -> Path:
    """Export ``module`` (put in eval mode) for inputs of ``(batch, *input_shape)`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    x = torch.randn(batch, *input_shape, device=next(module.parameters()).device)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dyn,
                              do_constant_folding=True)
    finally:
        module.train(was_training)
    return path


def unshare_initializers(model: "onnx.ModelProto", op_types: Sequence[str] | None = None) -> int:
    """Give every node its own copy of an initializer that several nodes consume; returns the copies made.

    Why: the TorchScript exporter merges parameters with equal values into one initializer (an untrained
    network's zero biases, equal folded-BN shifts), so one bias can feed a Conv that is quantized and one
    that stays float. Static QDQ quantization then rewrites the shared bias into int32 + DequantizeLinear
    for *every* consumer, and ONNX Runtime's NCHWc layout pass, which needs a constant bias, leaves those
    float convs on the plain NCHW kernels: in a mixed int8/fp32 network a depthwise conv measured ~10x
    slower than in the same network's fp32 export. ``op_types`` limits the copies to those nodes' inputs
    (``None``: every node).
    """
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    made = 0
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            if op_types is not None and node.op_type not in op_types:
                continue
            copy = type(inits[name])()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}__{node.name or 'node'}_{k}"
            model.graph.initializer.append(copy)
            node.input[k] = copy.name
            made += 1
    return made


def name_unnamed_nodes(model: "onnx.ModelProto") -> int:
    """Name every unnamed node after the scope of the node producing its first input; returns how many.

    Why: ONNX Runtime's quantization pre-processing decomposes some ops into new, unnamed nodes (HardSwish
    into HardSigmoid + Mul), and the scope names of the TorchScript exporter (``/blocks.4/conv/Conv``) are
    how fitplan selects the nodes of the 8-bit units of a mixed-precision graph; unnamed nodes would stay
    float inside an int8 unit. The new name ``<producer's scope>/<op type>_fitplan<k>`` keeps the producer's
    scope (the graph is topologically sorted, so producers are named first)."""
    producer: dict[str, str] = {}
    count = 0
    for node in model.graph.node:
        if not node.name:
            src = producer.get(node.input[0], "") if node.input else ""
            scope = src.rsplit("/", 1)[0] if "/" in src else ""
            node.name = f"{scope}/{node.op_type}_fitplan{count}"
            count += 1
        for out in node.output:
            producer[out] = node.name
    return count


def ort_session(path: str | os.PathLike, threads: int = 1, *, inter_op_threads: int = 1,
                providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session with pinned thread counts (timing is meaningless otherwise)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = int(inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


def run_onnx(path_or_session, x: np.ndarray | torch.Tensor, threads: int = 1) -> np.ndarray:
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session, threads)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def max_abs_diff_vs_torch(module: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between the torch module and its ONNX export on input ``x``."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        ref = module(x).detach().cpu().numpy()
    module.train(was_training)
    return float(np.abs(run_onnx(path, x) - ref).max())
