"""ONNX helpers: shared initializers are split before partial (mixed-precision) quantization."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import torch
import torch.nn as nn

from fitplan.hw_profiles.measure import nodes_for_modules, quantize_int8
from fitplan.onnx_utils import export_onnx, run_onnx, unshare_initializers


class TwoConvs(nn.Module):
    """Two convs whose biases are equal (zero), as in an untrained network: the exporter merges them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        for conv in (self.a, self.b):
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _consumers(model: onnx.ModelProto) -> collections.Counter:
    inits = {t.name for t in model.graph.initializer}
    return collections.Counter(i for n in model.graph.node for i in n.input if i in inits)


def test_unshare_initializers_copies_shared_tensors_and_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(TwoConvs().eval(), (8, 6, 6), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert max(_consumers(model).values()) > 1, "the exporter no longer shares equal biases: test is moot"
    made = unshare_initializers(model, ("Conv",))
    assert made >= 1 and max(_consumers(model).values()) == 1
    onnx.checker.check_model(model)
    out = tmp_path / "u.onnx"
    onnx.save(model, str(out))
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_onnx(path, x), run_onnx(out, x))
    assert unshare_initializers(model) == 0  # idempotent


def test_partial_quantization_leaves_float_conv_with_constant_bias(tmp_path):
    """Quantizing conv ``a`` only must not turn conv ``b``'s bias into a DequantizeLinear output (that kept
    ``b`` off ONNX Runtime's NCHWc kernels and made mixed-precision nets measure slower than both pure ones)."""
    torch.manual_seed(0)
    path = export_onnx(TwoConvs().eval(), (8, 6, 6), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, 8, 6, 6)).astype(np.float32)
    q = onnx.load(str(quantize_int8(path, tmp_path / "q.onnx", x, nodes_to_quantize=nodes_for_modules(path, ["a"]))))
    inits = {t.name for t in q.graph.initializer}
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    float_conv = [n for n in convs if producers.get(n.input[1]) != "DequantizeLinear"]
    assert len(convs) == 2 and len(float_conv) == 1
    assert all(i in inits for i in float_conv[0].input[1:]), "float conv's weight/bias must stay initializers"
