"""ONNX export and ONNX Runtime sessions shared by measurement, planning and tests.

Export uses the TorchScript-based exporter (``dynamo=False``): it handles every op our subnets use,
takes ~0.1 s per model instead of seconds, and keeps measurement loops fast.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

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
