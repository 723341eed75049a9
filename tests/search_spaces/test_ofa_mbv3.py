"""ofa_mbv3: HELP arch dicts validate, supernet == extracted subnet, kernel transform, analytic costs,
ONNX export, config errors, timm mobilenetv3_large_100 equivalence."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.search_spaces import create_space
from fitplan.search_spaces.mbconv import ElasticDepthwiseConv2d
from fitplan.search_spaces.ofa_mbv3 import (
    OFAMobileNetV3Space,
    OFAMobileNetV3Supernet,
    mbv3_space_from_timm,
    ofa_mbv3_from_timm,
)
from fitplan.search_spaces.timm_import import from_timm



def small_space(**kw) -> OFAMobileNetV3Space:
    spec = dict(width_mult=0.35, num_classes=10, in_chans=1, resolutions=(24, 28, 32))
    spec.update(kw)
    return create_space("ofa_mbv3", **spec)


def perturb(net: nn.Module, seed: int = 0) -> None:
    """Make every tensor non-trivial: BN affine params and the kernel-transform matrices."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        for p in net.transform_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def trained_small():
    """A small supernet whose BN statistics were updated by a few train-mode passes of random subnets."""
    torch.manual_seed(0)
    space = small_space()
    net = space.build_supernet()
    perturb(net)
    net.train()
    for i in range(4):
        cfg = space.sample(i, compression=False) if i else space.largest()
        net.set_active(cfg)
        net(torch.randn(4, 1, cfg["r"], cfg["r"]))
    return space, net.eval()


def _archs():
    from fitplan.paths import shared_latency_dir

    d = shared_latency_dir()
    if d is not None:
        return json.loads((d / "ofa_mbv3" / "archs.json").read_text())
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    return load_latency_dataset("ofa_mbv3").archs()


# --------------------------------------------------------------------------------------------- configs
def test_help_archs_validate_unchanged():
    space = create_space("ofa_mbv3")
    archs = _archs()
    assert len(archs) == 5000
    assert sorted({a["r"] for a in archs}) == list(space.dimensions["r"].choices)
    for a in archs:  # all 5000: ~0.4 s
        cfg = space.validate(a)
        assert {k: cfg[k] for k in a} == a
    costs = [space.costs(a)["macs"] for a in archs[:300]]
    assert min(costs) > 0
    # the smallest / largest HELP archs by analytic MACs are valid and encode to the same length
    lo, hi = archs[int(np.argmin(costs))], archs[int(np.argmax(costs))]
    assert len(space.encode(lo)) == len(space.encode(hi)) == len(space.feature_names())


def test_dimensions_units_and_extremes():
    space = create_space("ofa_mbv3")
    dims = space.dimensions
    assert (dims["ks"].choices, dims["ks"].length) == ((3, 5, 7), 20)
    assert (dims["e"].choices, dims["e"].length) == ((3, 4, 6), 20)
    assert (dims["d"].choices, dims["d"].length) == ((2, 3, 4), 5)
    assert dims["r"].kind == "resolution" and dims["r"].choices == tuple(range(128, 225, 4))
    assert space.units()[:3] == ["first_conv", "first_block", "blocks.0"] and len(space.units()) == 25
    lo, hi = space.smallest(), space.largest()
    assert lo["ks"] == [3] * 20 and lo["d"] == [2] * 5 and lo["r"] == 128
    assert hi["ks"] == [7] * 20 and hi["e"] == [6] * 20 and hi["r"] == 224
    assert space.input_shape(hi) == (3, 224, 224)
    assert space.costs(lo)["macs"] < space.costs(hi)["macs"]


def test_spec_round_trip():
    space = small_space()
    spec = json.loads(json.dumps(space.spec()))
    again = create_space(spec)
    assert again.spec() == space.spec() and again.units() == space.units()


@pytest.mark.parametrize("bad,field", [
    ({"depth": 3}, "depth"),
    ({"ks": [3] * 19 + [4]}, "ks.19"),
    ({"e": [3] * 19}, "e"),
    ({"d": [2, 3, 4, 5, 2]}, "d.3"),
    ({"r": 127}, "r"),
])
def test_config_errors_name_the_field(bad, field):
    space = create_space("ofa_mbv3")
    cfg = {**space.largest(), **bad}
    with pytest.raises(ConfigError) as e:
        space.validate(cfg)
    assert e.value.field == field and field in str(e.value)


def test_missing_key_and_spec_errors():
    space = create_space("ofa_mbv3")
    cfg = space.largest()
    del cfg["r"]
    with pytest.raises(ConfigError, match="^r:"):
        space.validate(cfg)
    for kw, field in [({"width_mult": -1}, "width_mult"), ({"num_classes": 0}, "num_classes"),
                      ({"resolutions": []}, "resolutions"), ({"kernel_choices": [3, 4]}, "kernel_choices"),
                      ({"stage_depths": [2, 3, 4, 5, 2]}, "stage_depths.3")]:
        with pytest.raises(ConfigError) as e:
            create_space("ofa_mbv3", **kw)
        assert e.value.field == field


def test_sample_deterministic_and_encode_fixed_length():
    space = small_space()
    assert space.sample(7) == space.sample(7)
    assert space.sample(7) != space.sample(8)
    rng = np.random.default_rng(0)
    lengths = {len(space.encode(space.sample(rng))) for _ in range(20)}
    assert lengths == {len(space.feature_names())}
    assert np.all(np.isfinite(space.encode(space.sample(3))))


# --------------------------------------------------------------------------------------------- supernet
def test_kernel_transform_matches_ofa_definition():
    torch.manual_seed(0)
    conv = ElasticDepthwiseConv2d(6, 7, (3, 5, 7))
    assert [tuple(p.shape) for p in conv.transform_parameters()] == [(9, 9), (25, 25)]
    with torch.no_grad():
        for p in conv.transform_parameters():
            p.add_(0.3 * torch.randn(p.shape))
    w = conv.weight.detach()
    m75, m53 = conv.matrix_7to5.detach(), conv.matrix_5to3.detach()
    w5 = torch.einsum("ij,cj->ci", m75, w[:, 0, 1:6, 1:6].reshape(6, 25)).reshape(6, 1, 5, 5)
    w3 = torch.einsum("ij,cj->ci", m53, w5[:, 0, 1:4, 1:4].reshape(6, 9)).reshape(6, 1, 3, 3)
    for k, ref in [(7, w), (5, w5), (3, w3)]:
        conv.active_kernel = k
        assert torch.allclose(conv.active_weight(6), ref, atol=1e-6)
        assert torch.allclose(conv.to_static(6).weight, ref, atol=1e-6)
    # the transform is trainable: a loss on the 3x3 kernel reaches both matrices
    conv.active_kernel = 3
    conv(torch.randn(1, 6, 8, 8)).sum().backward()
    assert conv.matrix_7to5.grad is not None and conv.matrix_5to3.grad.abs().sum() > 0
    # identity matrices (initial state) reproduce the plain centre crop
    plain = ElasticDepthwiseConv2d(4, 7, (3, 5, 7))
    plain.active_kernel = 3
    assert torch.equal(plain.active_weight(4), plain.weight[:, :, 2:5, 2:5])


def _configs(space, n):
    return [space.smallest(), space.largest()] + [space.sample(100 + i, compression=False) for i in range(n)]


def test_extracted_equals_supernet(trained_small):
    space, net = trained_small
    for cfg in _configs(space, 4):
        net.set_active(cfg)
        x = torch.randn(2, 1, cfg["r"], cfg["r"])
        sub = net.extract(cfg)
        assert not any(isinstance(m, (ElasticDepthwiseConv2d,)) for m in sub.modules())
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff < 1e-4, (cfg["d"], diff)
        assert sub(x).shape == (2, 10)
    # extracting another config leaves the active subnet unchanged
    net.set_active(space.smallest())
    net.extract(space.largest())
    assert net.active_slots == space.active_slots(space.smallest())


def test_extracted_has_smaller_real_tensors(trained_small):
    space, net = trained_small
    lo, hi = net.extract(space.smallest()), net.extract(space.largest())
    n_lo, n_hi = (sum(p.numel() for p in m.parameters()) for m in (lo, hi))
    assert n_lo < n_hi < sum(p.numel() for p in net.parameters())
    assert len(lo.blocks) == 10 and len(hi.blocks) == 20
    assert all(type(m).__module__.startswith("torch.nn") for m in lo.modules()
               if not list(m.children()) and list(m.parameters()))


def test_analytic_params_macs_and_units(trained_small):
    space, net = trained_small
    for cfg in _configs(space, 5):
        sub = net.extract(cfg).eval()
        costs = space.unit_costs(cfg)
        assert sum(u.params for u in costs) == sum(p.numel() for p in sub.parameters())
        # every parameter belongs to exactly one unit; the per-unit params match the analytic ones
        names = [n for n, _ in sub.named_parameters()]
        owner = {}
        for ui, mods in enumerate(sub.fitplan_units):
            for mname in mods:
                for pname, _ in sub.get_submodule(mname).named_parameters(recurse=False):
                    assert f"{mname}.{pname}" not in owner
                    owner[f"{mname}.{pname}"] = ui
        assert sorted(owner) == sorted(names)
        for ui, u in enumerate(costs):
            n_real = sum(p.numel() for n, p in sub.named_parameters() if owner[n] == ui)
            assert n_real == u.params, u.name
            assert u.active == bool(sub.fitplan_units[ui])
        # MACs and output activations, measured with hooks
        macs = {i: 0 for i in range(len(costs))}
        dw_macs = {i: 0 for i in range(len(costs))}
        acts = {}
        hooks = []

        def conv_hook(mod, i, o, ui):
            n = o.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] ** 2
            macs[ui] += n
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
                dw_macs[ui] += n

        for ui, mods in enumerate(sub.fitplan_units):
            for mname in mods:
                m = sub.get_submodule(mname)
                if isinstance(m, nn.Conv2d):
                    hooks.append(m.register_forward_hook(lambda mod, i, o, ui=ui: conv_hook(mod, i, o, ui)))
                elif isinstance(m, nn.Linear):
                    hooks.append(m.register_forward_hook(
                        lambda mod, i, o, ui=ui: macs.__setitem__(ui, macs[ui] + o.numel() * mod.in_features)))
        for ui, unit in enumerate(space.units()):
            if sub.fitplan_units[ui]:
                hooks.append(sub.get_submodule(unit).register_forward_hook(
                    lambda mod, i, o, ui=ui: acts.__setitem__(ui, o.numel())))
        with torch.no_grad():
            sub(torch.randn(1, *space.input_shape(cfg)))
        for h in hooks:
            h.remove()
        assert [macs[i] for i in range(len(costs))] == [u.macs for u in costs]
        assert [dw_macs[i] for i in range(len(costs))] == [u.dw_macs for u in costs]
        assert [acts.get(i, 0) for i in range(len(costs))] == [u.act_elems for u in costs]


def test_dw_macs_part_of_macs():
    """``dw_macs`` (depthwise convs) is within ``macs``, > 0 exactly for the units with a depthwise conv (the
    first block and active MBConv blocks), 0 for stem / head / classifier and inactive slots."""
    space = create_space("ofa_mbv3")
    for cfg in (space.smallest(), space.largest(), space.sample(1), space.sample(2)):
        costs = space.unit_costs(cfg)
        for u in costs:
            assert 0 <= u.dw_macs <= u.macs and u.dense_macs == u.macs - u.dw_macs
            has_dw = u.active and (u.name == "first_block" or u.name.startswith("blocks."))
            assert (u.dw_macs > 0) == has_dw, u.name
            if has_dw:
                assert u.dw_macs < u.macs  # the pointwise convs are dense
        assert space.costs(cfg)["macs"] == sum(u.macs for u in costs)
    # a larger kernel only adds depthwise MACs
    a = space.validate({**space.smallest(), "ks": [3] * 20})
    b = space.validate({**a, "ks": [7] + [3] * 19})
    ua, ub = space.unit_costs(a)[2], space.unit_costs(b)[2]
    assert ub.dw_macs == ua.dw_macs * 49 // 9 and ub.dense_macs == ua.dense_macs


def test_onnx_export_matches(trained_small, tmp_path):
    pytest.importorskip("onnxruntime")
    from fitplan.onnx_utils import export_onnx, max_abs_diff_vs_torch

    space, net = trained_small
    cfg = space.sample(5, compression=False)
    sub = net.extract(cfg).eval()
    path = export_onnx(sub, space.input_shape(cfg), tmp_path / "sub.onnx")
    x = torch.randn(1, *space.input_shape(cfg))
    assert max_abs_diff_vs_torch(sub, path, x) < 1e-4


def test_supernet_trains_including_transform():
    torch.manual_seed(0)
    space = small_space()
    net = space.build_supernet().train()
    cfg = space.smallest()
    net.set_active(cfg)
    loss = nn.functional.cross_entropy(net(torch.randn(4, 1, 24, 24)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    active = [net.blocks[str(s)].depth_conv.conv for s in space.active_slots(cfg)]
    grads = [p.grad for conv in active for p in conv.transform_parameters()]
    assert len(grads) == 2 * len(active) and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert net.first_conv.conv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- timm
@pytest.fixture(scope="module")
def timm_pair():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_large_100", pretrained=False).eval()
    with torch.no_grad():  # non-trivial BN statistics so the copy of running stats is tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model, from_timm(model).eval()


def test_timm_largest_subnet_reproduces_model(timm_pair):
    model, net = timm_pair
    assert isinstance(net, OFAMobileNetV3Supernet)
    space = net.space
    assert space.stage_depths == [2, 3, 4, 2, 3]
    hi = space.largest()
    assert hi["d"] == [2, 3, 4, 2, 3] and hi["ks"][4] == 5 and hi["ks"][0] == 3
    assert space.count_params(hi) == sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 224, 224)
    sub = net.extract(hi).eval()
    with torch.no_grad():
        ref = model(x)
        assert (net(x) - ref).abs().max().item() < 1e-4
        assert (sub(x) - ref).abs().max().item() < 1e-4


def test_timm_variant_configs(timm_pair):
    model, net = timm_pair
    space = net.space
    # same keys and lengths as the HELP dicts; e is relative to each block's max width
    assert set(space.largest()) == set(create_space("ofa_mbv3").largest())
    assert space.mid_channels(0, 6) == 64 and space.mid_channels(0, 3) == 32
    spec = json.loads(json.dumps(space.spec()))
    assert create_space(spec).spec() == space.spec()
    for seed in range(20):
        cfg = space.sample(seed, compression=False)
        assert all(d <= m for d, m in zip(cfg["d"], space.stage_depths))
        assert all(cfg["ks"][s] <= space.block_kernels[s] for s in space.active_slots(cfg))
    bad = space.largest()
    bad["ks"] = list(bad["ks"])
    bad["ks"][0] = 5  # timm's block 0 is 3x3
    with pytest.raises(ConfigError) as e:
        space.validate(bad)
    assert e.value.field == "ks.0" and e.value.allowed == [3]
    with pytest.raises(ConfigError) as e:
        space.validate({**space.largest(), "d": [3, 3, 4, 2, 3]})
    assert e.value.field == "d.0"
    cfg = space.sample(3, compression=False)
    cfg["r"] = 128
    net.set_active(cfg)
    x = torch.randn(1, 3, 128, 128)
    sub = net.extract(cfg)
    with torch.no_grad():
        assert (net(x) - sub(x)).abs().max().item() < 1e-4
    assert sum(p.numel() for p in sub.parameters()) == space.count_params(cfg)


def test_timm_custom_classes_and_unsupported():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=7, in_chans=1).eval()
    net = ofa_mbv3_from_timm(model, resolutions=[64, 96])
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() < 1e-4
    assert net.space.input_shape(net.space.largest()) == (1, 96, 96)
    m075 = timm.create_model("mobilenetv3_large_075", pretrained=False).eval()
    net = from_timm(m075)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (net.eval()(x) - m075(x)).abs().max().item() < 1e-4
    small = timm.create_model("mobilenetv3_small_100", pretrained=False)
    with pytest.raises(ConfigError):
        mbv3_space_from_timm(small)
    with pytest.raises(UnknownNameError, match="mobilenetv3_large_100"):
        from_timm("not_a_timm_model_name")


def test_network_key_ignores_choices_of_unused_blocks():
    space = create_space("ofa_mbv3", width_mult=0.5, num_classes=10, in_chans=1, resolutions=[24, 28])
    cfg = space.validate({**space.smallest(), "d": [2] * 5})
    other = dict(cfg, ks=list(cfg["ks"]))
    other["ks"][3] = 7  # the 4th block of stage 1 is beyond depth 2: the same network
    assert space.network_key(other) == space.network_key(cfg)
    used = dict(cfg, ks=list(cfg["ks"]))
    used["ks"][0] = 7
    assert space.network_key(used) != space.network_key(cfg)
    assert space.network_key(dict(cfg, r=28)) != space.network_key(cfg)
    assert space.network_key(dict(cfg, bits=[8] * len(cfg["bits"]))) != space.network_key(cfg)
