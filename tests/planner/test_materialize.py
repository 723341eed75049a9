"""Materialisation and export: the delivered int8 file is the one ONNX Runtime runs with integer kernels."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fitplan.onnx_utils import run_onnx
from fitplan.planner.materialize import build_model, save_and_export
from fitplan.search_spaces import create_space


def _optimized_ops(path, tmp_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


@pytest.mark.parametrize("mixed", [False, True])
def test_8bit_export_fuses_every_int8_conv_and_tracks_fake_quant(tmp_path, mixed):
    space = create_space("ofa_mbv3", width_mult=0.25, num_classes=10, in_chans=1, resolutions=[32],
                         kernel_choices=[3], expand_choices=[3], depth_choices=[2])
    torch.manual_seed(0)
    supernet = space.build_supernet().eval()
    units = len(space.units())
    bits = [8 if (i % 2 == 0 or not mixed) else 32 for i in range(units)]
    cfg = space.validate({**space.largest(), "bits": bits})
    calib = [torch.randn(16, *space.input_shape(cfg))]
    model = build_model(space, supernet, cfg, calib).eval()
    x = calib[0][:8]
    with torch.no_grad():
        fake_quant = model(x).numpy()
    arts, checks = save_and_export(model, space, cfg, tmp_path, x)
    ops = _optimized_ops(arts["model_int8_onnx"], tmp_path)
    n_conv = sum(1 for n in onnx.load(arts["model_onnx"]).graph.node if n.op_type == "Conv")
    if mixed:
        assert 0 < ops["QLinearConv"] < n_conv
    else:  # every conv runs as an integer kernel: no float conv left between Dequantize/Quantize nodes
        assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0 and ops["FusedConv"] == 0
    out = run_onnx(arts["model_int8_onnx"], x)
    assert checks["int8_onnx_max_abs_diff_vs_fake_quant_torch"] == pytest.approx(float(np.abs(out - fake_quant).max()))
    # same function up to activation-range calibration (on this random, untrained net quantization noise is
    # large relative to its tiny logits; on a trained MNIST subnet top-1 matched the fake-quant model)
    assert np.corrcoef(out.ravel(), fake_quant.ravel())[0, 1] > 0.7
