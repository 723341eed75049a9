"""FBNet space (HW-NAS-Bench / HELP): archs.json compatibility, validation errors, single-path supernet,
extraction equivalence, analytic parameter counts and ONNX export."""
import numpy as np
import pytest
import torch

from fitplan.errors import ConfigError
from fitplan.hw_profiles.latency_data import FBNET_OPS, load_latency_dataset
from fitplan.onnx_utils import export_onnx, max_abs_diff_vs_torch
from fitplan.search_spaces import SPACES, create_space
from fitplan.search_spaces.fbnet import (FBNetBlock, FBNetSkipConv, FBNetSpace, arch_str_to_op_idx,
                                         op_idx_to_arch_str)


@pytest.fixture(scope="module")
def space():
    return FBNetSpace()


@pytest.fixture(scope="module")
def small():
    """MNIST-sized variant that runs fast on CPU."""
    return FBNetSpace(num_classes=10, in_chans=1, input_size=28, width_mult=0.25)


@pytest.fixture(scope="module")
def trained_supernet(small):
    """Supernet whose BN statistics were moved by a few train-mode forwards over random paths."""
    torch.manual_seed(0)
    sn = small.build_supernet()
    sn.train()
    with torch.no_grad():
        for seed in range(6):
            sn.set_active(small.sample(seed, compression=False))
            sn(torch.randn(8, *small.input_shape()) * 2 + 0.5)
        sn.set_largest()
        sn(torch.randn(8, *small.input_shape()))
    return sn.eval()


def test_registered():
    assert SPACES.get("fbnet") is FBNetSpace
    assert create_space("fbnet").spec() == {"space": "fbnet", "variant": "cifar100", "num_classes": 100,
                                            "in_chans": 3, "input_size": 32, "width_mult": 1.0}


def test_all_archs_json_validate_unchanged(space):
    archs = load_latency_dataset("fbnet").archs()
    assert len(archs) == 5000
    for a in archs:
        cfg = space.validate(a)
        assert cfg["op_idx_list"] == a["op_idx_list"] and cfg["arch_str"] == a["arch_str"]


def test_archs_json_file_matches_if_present(space):
    from fitplan.paths import shared_latency_dir

    d = shared_latency_dir()
    if d is None:
        pytest.skip("shared latency data not present")
    import json

    archs = json.loads((d / "fbnet" / "archs.json").read_text())
    for a in archs[:500]:
        cfg = space.validate(a)
        assert {k: cfg[k] for k in a} == a


def test_arch_str_derived_and_op_names(space):
    cfg = space.validate({"op_idx_list": list(range(9)) * 2 + [0, 1, 2, 3]})
    assert cfg["arch_str"][:9] == list(FBNET_OPS)
    assert list(cfg)[:2] == ["op_idx_list", "arch_str"]
    assert cfg["bits"] == [32] * len(space.units())
    only_str = space.validate({"arch_str": cfg["arch_str"]})
    assert only_str["op_idx_list"] == cfg["op_idx_list"]
    assert arch_str_to_op_idx(op_idx_to_arch_str(cfg["op_idx_list"])) == cfg["op_idx_list"]


@pytest.mark.parametrize("cfg,field", [
    ({"op_idx_list": [0] * 22, "depth": 3}, "depth"),
    ({"op_idx_list": [0] * 21}, "op_idx_list"),
    ({"op_idx_list": [0] * 21 + [9]}, "op_idx_list.21"),
    ({"op_idx_list": [0] * 22, "arch_str": ["k3_e1"] * 21 + ["k3_e6"]}, "arch_str.21"),
    ({"op_idx_list": [0] * 22, "arch_str": ["k3_e1"] * 21 + ["k7_e6"]}, "arch_str.21"),
    ({"op_idx_list": [0] * 22, "arch_str": ["k3_e1"] * 20}, "arch_str"),
    ({"op_idx_list": [0] * 22, "bits": [32] * 3}, "bits"),
    ({}, "op_idx_list"),
])
def test_bad_configs_name_the_field(space, cfg, field):
    with pytest.raises(ConfigError) as e:
        space.validate(cfg)
    assert e.value.field == field
    assert str(e.value).startswith(field)


def test_errors_list_allowed_values(space):
    with pytest.raises(ConfigError, match="allowed: 'op_idx_list', 'arch_str'"):
        space.validate({"op_idx_list": [0] * 22, "ks": 1})
    with pytest.raises(ConfigError, match="'k3_e1', 'k3_e1_g2'"):
        space.validate({"arch_str": ["bad"] * 22})


def test_bad_spec():
    with pytest.raises(ConfigError, match="variant"):
        FBNetSpace(variant="cifar10x")
    with pytest.raises(ConfigError, match="width_mult"):
        FBNetSpace(width_mult=0)


def test_sample_determinism_encode_and_params(space):
    a, b = space.sample(7), space.sample(7)
    assert a == b and a != space.sample(8)
    feats = {space.encode(c).shape for c in (space.smallest(), space.largest(), a)}
    assert len(feats) == 1 and len(space.feature_names()) == feats.pop()[0]
    assert np.isfinite(space.encode(a)).all()
    params = space.to_params(a)
    assert "op_idx_list.21" in params and not any(k.startswith("arch_str") for k in params)
    assert space.from_params(params) == a


def test_smallest_largest_costs(space):
    small, large = space.costs(space.smallest()), space.costs(space.largest())
    assert small["macs"] < large["macs"] and small["params"] < large["params"]
    for _ in range(3):
        c = space.costs(space.sample(_))
        assert small["macs"] <= c["macs"] <= large["macs"]


def test_skip_follows_hw_nas_bench(space):
    sn = space.build_supernet()
    # layer 0: 16 -> 16, stride 1 (CIFAR): identity; layer 1: 16 -> 24: 1x1 conv + BN + ReLU
    assert isinstance(sn.layers[0].candidates[8], torch.nn.Identity)
    assert isinstance(sn.layers[1].candidates[8], FBNetSkipConv)
    blk = sn.layers[5].candidates[FBNET_OPS.index("k5_e1_g2")]
    assert isinstance(blk, FBNetBlock) and blk.conv1.groups == 2 and blk.conv3.groups == 2
    assert blk.conv2.kernel_size == (5, 5) and blk.conv2.groups == blk.conv2.in_channels
    out = sn(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 100)


def test_unit_names_cover_every_weight(small, trained_supernet):
    cfg = small.sample(3)
    net = trained_supernet.extract(cfg)
    names = [n for unit in net.fitplan_units for n in unit]
    owned = [p for n, p in net.named_parameters() if any(n == u or n.startswith(u + ".") for u in names)]
    assert len(owned) == len(list(net.parameters()))
    assert len(net.fitplan_units) == len(small.units())
    costs = small.unit_costs(cfg)
    for unit, cost in zip(net.fitplan_units, costs):
        assert bool(unit) == cost.active


@pytest.mark.parametrize("which", ["smallest", "largest", "random0", "random1"])
def test_extract_matches_supernet_and_param_count(small, trained_supernet, which):
    cfg = small.sample(int(which[-1]), compression=False) if which.startswith("random") else getattr(small, which)()
    torch.manual_seed(1)
    x = torch.randn(4, *small.input_shape(cfg))
    trained_supernet.set_active(cfg)
    with torch.no_grad():
        ref = trained_supernet(x)
        net = trained_supernet.extract(cfg).eval()
        out = net(x)
    assert (out - ref).abs().max().item() < 1e-4
    assert sum(p.numel() for p in net.parameters()) == small.count_params(cfg)
    # real copies, not views of supernet weights
    sn_ptrs = {p.data_ptr() for p in trained_supernet.parameters()}
    assert not any(p.data_ptr() in sn_ptrs for p in net.parameters())


def test_macs_and_dw_macs_match_hooks(small, trained_supernet):
    """Per-unit MACs and their depthwise part (``UnitCost.dw_macs``) equal the counts of the extracted net's
    convs and linears, for every op (the ``_g2`` 2-group 1x1 convs count as dense)."""
    from torch import nn

    for cfg in [small.validate({"op_idx_list": [op] * 22}) for op in range(9)] + [small.sample(4)]:
        net = trained_supernet.extract(cfg).eval()
        costs = small.unit_costs(cfg)
        macs = [0] * len(costs)
        dw = [0] * len(costs)
        hooks = []

        def hook(mod, i, o, ui, macs=macs, dw=dw):
            if isinstance(mod, nn.Linear):
                macs[ui] += o.numel() * mod.in_features
                return
            n = o.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            macs[ui] += n
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
                dw[ui] += n

        for ui, mods in enumerate(net.fitplan_units):
            for mname in mods:
                for m in net.get_submodule(mname).modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        hooks.append(m.register_forward_hook(lambda mod, i, o, ui=ui: hook(mod, i, o, ui)))
        with torch.no_grad():
            net(torch.randn(1, *small.input_shape(cfg)))
        for h in hooks:
            h.remove()
        assert macs == [u.macs for u in costs]
        assert dw == [u.dw_macs for u in costs]
        assert all(0 <= u.dw_macs <= u.macs for u in costs)


def test_full_size_param_count_all_ops(space):
    sn = space.build_supernet()
    for op in range(9):
        cfg = space.validate({"op_idx_list": [op] * 22})
        net = sn.extract(cfg)
        assert sum(p.numel() for p in net.parameters()) == space.count_params(cfg)


def test_onnx_export_matches(small, trained_supernet, tmp_path):
    cfg = small.validate({"op_idx_list": [1, 5, 8, 0, 2, 3, 4, 6, 7, 8, 1, 5, 8, 8, 0, 1, 2, 3, 4, 5, 6, 8]})
    net = trained_supernet.extract(cfg).eval()
    path = export_onnx(net, small.input_shape(cfg), tmp_path / "fbnet.onnx")
    torch.manual_seed(2)
    assert max_abs_diff_vs_torch(net, path, torch.randn(1, *small.input_shape(cfg))) < 1e-4


def test_imagenet_variant_shapes():
    sp = FBNetSpace(variant="imagenet", width_mult=0.25, input_size=64, num_classes=7)
    assert sp.head_channels == 496 and sp.stem_stride == 2
    sn = sp.build_supernet()
    sn.set_active(sp.sample(0))
    assert sn(torch.randn(1, 3, 64, 64)).shape == (1, 7)
