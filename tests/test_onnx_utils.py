"""ONNX helpers: shared initializers are split and unnamed nodes named before partial (mixed-precision)
quantization, which quantizes every op of the 8-bit units."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from onnx import helper

from fitplan.hw_profiles.measure import (UnmappedModulesError, int8_module_names, nodes_for_modules, quantize_int8,
                                         scope_qualname, unit_scope)
from fitplan.onnx_utils import export_onnx, name_unnamed_nodes, run_onnx, unshare_initializers


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


def test_name_unnamed_nodes_takes_the_producers_scope():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/blocks.4/conv/Relu"),
             helper.make_node("HardSigmoid", ["a"], ["b"]), helper.make_node("Mul", ["a", "b"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert name_unnamed_nodes(model) == 2 and name_unnamed_nodes(model) == 0
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == 3 and all(scope_qualname(n) == "blocks.4.conv" for n in names)


class Block(nn.Module):
    """An MBConv-like unit: conv + HardSwish, squeeze-excite gate (a Mul no leaf module owns), residual Add."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.Hardswish()
        self.se = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        return x + h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.u1, self.u2 = Block(), Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u2(self.u1(x))


def test_mixed_precision_quantizes_every_op_of_the_8bit_units(tmp_path):
    """With ``u1`` 8-bit and ``u2`` float, every op of ``u1`` the quantizer handles -- the squeeze-excite Mul and
    residual Add no leaf module owns, the Mul the pre-processing splits off HardSwish -- reads quantized
    inputs (left float, each would wrap the int8 convs in Dequantize/Quantize); no op of ``u2`` does."""
    assert unit_scope(["u1.conv", "u1.se"]) == ["u1"] and unit_scope(["classifier"]) == ["classifier"]
    assert unit_scope(["a.x", "b.y"]) == ["a.x", "b.y"] and unit_scope([]) == []
    assert int8_module_names([(8, ["u1.conv", "u1.se"]), (32, ["u2.conv", "u2.se"])]) == ["u1"]
    assert int8_module_names([(8, ["u1.conv"]), (8, ["u2.conv"])]) is None  # all 8-bit: the whole graph
    torch.manual_seed(0)
    path = export_onnx(TwoBlocks().eval(), (8, 6, 6), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, 8, 6, 6)).astype(np.float32)
    q = onnx.load(str(quantize_int8(path, tmp_path / "q.onnx", x, modules=["u1"])))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    unit = {o: scope_qualname(n.name).split(".")[0] for n in q.graph.node for o in n.output}
    by_unit = collections.defaultdict(list)
    for n in q.graph.node:
        if n.op_type in ("Mul", "Add", "Conv"):  # do its inputs from its own unit (and weights) come quantized?
            own = [i for i in n.input if i in producers and unit.get(i) in (scope_qualname(n.name).split(".")[0], "")]
            by_unit[scope_qualname(n.name).split(".")[0]].append(bool(own) and all(producers[i] == "DequantizeLinear"
                                                                                    for i in own))
    assert len(by_unit["u1"]) >= 5 and all(by_unit["u1"]), by_unit  # convs, SE Mul, HardSwish Mul, Add
    assert len(by_unit["u2"]) >= 5 and not any(by_unit["u2"]), by_unit
    np.testing.assert_allclose(run_onnx(tmp_path / "q.onnx", x[:1]),
                               run_onnx(path, x[:1]), atol=0.2)


def test_quantize_int8_refuses_modules_that_select_no_node(tmp_path):
    """onnxruntime reads an empty node selection as "quantize everything": a unit scope that maps to no node
    must fail loudly instead of delivering an all-int8 model."""
    torch.manual_seed(0)
    path = export_onnx(TwoBlocks().eval(), (8, 6, 6), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    with pytest.raises(UnmappedModulesError, match="no_such_unit"):
        quantize_int8(path, tmp_path / "q.onnx", x, modules=["no_such_unit"])
    assert not (tmp_path / "q.onnx").exists()
