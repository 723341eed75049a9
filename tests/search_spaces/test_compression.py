"""Compression materialisation: measured sparsity, quantisation levels, 2:4 pattern, QAT, ONNX QDQ export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from _spaces import ToySpace  # tests/_spaces.py (tests/conftest.py puts tests/ on sys.path)

from fitplan.errors import ConfigError
from fitplan.onnx_utils import export_onnx, run_onnx
from fitplan.search_spaces.compression import (
    ActivationFakeQuant,
    apply_compression,
    check_2to4,
    compression_report,
    finalize,
    mask_2to4,
    max_levels_per_channel,
    weight_sparsity,
)



@pytest.fixture
def toy():
    torch.manual_seed(0)
    space = ToySpace()
    sn = space.build_supernet().eval()
    return space, sn


def _calib(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 1, 16, 16, generator=g) for _ in range(n)]


def test_unstructured_sparsity_matches_config(toy):
    space, sn = toy
    cfg = space.validate({**space.largest(), "sparsity": [0.25, 0.5, 0.75, 0.0, 0.5, 0.25]})
    m = apply_compression(sn.extract(cfg), cfg)
    rows = compression_report(m, space.units())
    for row, s in zip(rows, cfg["sparsity"]):
        n = row["weights"]
        # per layer round(ratio * n) weights are removed: the unit ratio is exact up to rounding
        assert abs(row["measured_sparsity"] - s) <= len(row["layers"]) / n, row
        assert row["mask_sparsity"] == pytest.approx(row["measured_sparsity"])
    # the pruned weights are the smallest-magnitude ones
    conv = m.s0b1[0]
    w, orig = conv.weight.detach(), conv.parametrizations.weight.original.detach()
    kept, pruned = orig[w != 0].abs(), orig[w == 0].abs()
    assert pruned.max() <= kept.min()
    assert 0 < weight_sparsity(m) < 1


def test_quantised_levels_per_channel(toy):
    space, sn = toy
    cfg = space.validate({**space.largest(), "bits": [4, 8, 4, 8, 32, 4]})
    m = apply_compression(sn.extract(cfg), cfg, _calib())
    for row, b in zip(compression_report(m, space.units()), cfg["bits"]):
        if b < 32:
            assert row["max_levels"] <= 2 ** b, row
    assert compression_report(m)[4]["max_levels"] > 2 ** 4  # the float unit keeps (almost) all 144 values
    # activation ranges were calibrated and produce <= 2^bits levels
    fq = m.stem[0].act_fq
    assert isinstance(fq, ActivationFakeQuant) and int(fq.observed) == 3
    xq = fq.eval()(torch.randn(4, 1, 16, 16))
    assert torch.unique(xq).numel() <= 16


def test_sparsity_survives_quantisation_and_gradients_are_masked(toy):
    space, sn = toy
    cfg = space.validate({**space.largest(), "bits": [8] * 6, "sparsity": [0.5] * 6})
    m = apply_compression(sn.extract(cfg).train(), cfg, _calib())
    m(torch.randn(4, 1, 16, 16)).sum().backward()
    conv = m.s0b0[0]
    mask = conv.parametrizations.weight[0].mask
    grad = conv.parametrizations.weight.original.grad
    assert torch.all(grad[mask == 0] == 0) and grad[mask == 1].abs().sum() > 0  # STE passes the rest
    assert torch.all(conv.weight[mask == 0] == 0)


def test_2to4_pattern(toy):
    space, sn = toy
    cfg = space.validate({**space.largest(), "sparsity": [0.5] * 6, "sparsity_pattern": "2:4"})
    m = apply_compression(sn.extract(cfg), cfg)
    rows = compression_report(m, space.units())
    assert all(r["is_2to4"] for r in rows)
    for r in rows[1:5]:  # 16 input channels: reduction dim divisible by 4 -> exactly 50%
        assert r["measured_sparsity"] == 0.5
    w = torch.randn(6, 8, 3, 3)
    mk = mask_2to4(w)
    assert check_2to4(w * mk) and not check_2to4(w)
    # per group of 4 consecutive input channels (kernel position fixed) the 2 largest |w| are kept
    g = (w.abs() * mk).permute(0, 2, 3, 1).reshape(-1, 4)
    full = w.abs().permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(g.ne(0).sum(1), torch.full((g.shape[0],), 2))
    assert torch.equal(torch.sort(g, dim=1).values[:, 2:], torch.sort(full, dim=1).values[:, 2:])


def test_bad_compression_config(toy):
    space, sn = toy
    m = sn.extract(space.largest())
    with pytest.raises(ConfigError, match="bits.1"):
        apply_compression(m, {"bits": [32, 6, 32, 32, 32, 32]})
    with pytest.raises(ConfigError, match="sparsity_pattern"):
        apply_compression(sn.extract(space.largest()), {"sparsity_pattern": "1:8"})
    with pytest.raises(ConfigError, match="sparsity"):
        apply_compression(sn.extract(space.largest()), {"sparsity": [0.5]})


def test_onnx_export_qdq_matches_torch(toy, tmp_path):
    space, sn = toy
    cfg = space.validate({**space.sample(3, compression=False), "r": 16, "bits": [8, 4, 8, 4, 8, 8],
                          "sparsity": [0.0, 0.5, 0.25, 0.75, 0.5, 0.0]})
    m = apply_compression(sn.extract(cfg), cfg, _calib()).eval()
    path = export_onnx(m, space.input_shape(cfg), tmp_path / "q.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 2
    x = torch.randn(1, *space.input_shape(cfg))
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(run_onnx(path, x) - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_finalize(toy, tmp_path):
    space, sn = toy
    cfg = space.validate({**space.largest(), "bits": [8] * 6, "sparsity": [0.5] * 6})
    m = apply_compression(sn.extract(cfg), cfg, _calib()).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = m(x)
        finalize(m)
        assert torch.allclose(m(x), y, atol=1e-6)
        assert not any("mask" in k for k in m.state_dict())
        finalize(m, remove_fake_quant=True)
        assert not any("act_fq" in k or "parametrizations" in k for k in m.state_dict())
    assert max_levels_per_channel(m.s0b0[0].weight) <= 256
    assert weight_sparsity(m) >= 0.5
    export_onnx(m, (1, 16, 16), tmp_path / "f.onnx")  # plain float export still works


def test_real_space_ofa_mbv3(tmp_path):
    """The same guarantees on a real space (multi-layer units: expand / depthwise / project convs)."""
    from fitplan.search_spaces import list_spaces

    if "ofa_mbv3" not in list_spaces():
        pytest.skip("ofa_mbv3 not available")
    from fitplan.search_spaces import create_space

    torch.manual_seed(0)
    space = create_space("ofa_mbv3", width_mult=0.35, num_classes=10, in_chans=1, resolutions=(24,))
    sn = space.build_supernet().eval()
    cfg = space.sample(np.random.default_rng(0), compression=False)
    n = len(space.units())
    rng = np.random.default_rng(1)
    cfg = space.validate({**cfg, "bits": [int(b) for b in rng.choice([4, 8, 32], n)],
                          "sparsity": [float(s) for s in rng.choice([0.0, 0.25, 0.5, 0.75], n)]})
    g = torch.Generator().manual_seed(0)
    m = apply_compression(sn.extract(cfg), cfg, [torch.randn(4, 1, 24, 24, generator=g)]).eval()
    for row in compression_report(m, space.units()):
        if not row["layers"]:
            continue
        assert abs(row["mask_sparsity"] - row["sparsity"]) <= len(row["layers"]) / row["weights"], row
        if row["bits"] < 32:
            assert row["max_levels"] <= 2 ** row["bits"], row
    path = export_onnx(m, space.input_shape(cfg), tmp_path / "ofa.onnx")
    x = torch.randn(1, 1, 24, 24, generator=g)
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.abs(run_onnx(path, x) - ref).max() < 1e-3 * max(1.0, float(np.abs(ref).max()))
