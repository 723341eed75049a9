"""Is the delivered int8 model really int8 on this CPU? Fused integer convs and latency vs fp32.

For one ofa_mbv3 subnet (8-bit on every unit): the float export, the ``model_int8.onnx`` fitplan delivers
(:func:`fitplan.planner.materialize.save_and_export`: onnxruntime static QDQ of the fine-tuned float model), and
the torch QAT export it replaced (fake quantisers exported as QuantizeLinear/DequantizeLinear, BatchNorm
unfolded). Per file: convs ONNX Runtime runs as ``QLinearConv`` vs as float ``Conv``/``FusedConv`` in its
optimized graph, and the latency from fitplan's harness (1 thread, anchored blocks).

    python benchmarks/int8_export.py [--r 160] [--seed 3]
"""
from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np


def fused_ops(path: Path) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3  # the "optimized model is hardware specific" warning is expected here
    so.optimized_model_filepath = str(path) + ".opt.onnx"
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {"QLinearConv": ops["QLinearConv"], "float conv": ops["Conv"] + ops["FusedConv"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r", type=int, default=160)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()

    import torch

    from fitplan.hw_profiles.measure import measure_onnx
    from fitplan.onnx_utils import export_onnx
    from fitplan.planner.materialize import build_model, save_and_export
    from fitplan.search_spaces import create_space
    from fitplan.search_spaces.compression import finalize

    space = create_space("ofa_mbv3")
    supernet = space.build_supernet().eval()
    arch = space.sample(np.random.default_rng(a.seed), compression=False)
    cfg = space.validate({**arch, "r": a.r, "bits": [8] * len(space.units())})
    shape = space.input_shape(cfg)
    torch.manual_seed(0)
    calib = [torch.randn(8, *shape)]
    out = Path(tempfile.mkdtemp(prefix="int8-export-"))
    qat = build_model(space, supernet, cfg, calib).eval()
    finalize(qat)
    files = {"torch QAT export (replaced)": export_onnx(qat, shape, out / "qat.onnx", batch=1)}
    arts, _ = save_and_export(build_model(space, supernet, cfg, calib), space, cfg, out, calib[0])
    files["fp32 (model.onnx)"] = Path(arts["model_onnx"])
    files["delivered int8 (model_int8.onnx)"] = Path(arts["model_int8_onnx"])
    print(f"ofa_mbv3 subnet r={a.r}, all units 8-bit; onnxruntime CPU, 1 thread")
    print(f"{'file':<34} {'QLinearConv':>11} {'float conv':>10} {'median ms':>10}")
    for name, path in files.items():
        ops = fused_ops(path)
        m = measure_onnx(path, shape, threads=1)
        print(f"{name:<34} {ops['QLinearConv']:>11} {ops['float conv']:>10} {m.median_ms:>10.3f}")


if __name__ == "__main__":
    main()
