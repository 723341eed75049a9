"""Elastic ResNet space (OFA-ResNet style): validation, supernet/extraction equivalence, analytic
parameter counts, ONNX export and timm (resnet18/34/50) weight inheritance."""
import numpy as np
import pytest
import timm
import torch

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.onnx_utils import export_onnx, max_abs_diff_vs_torch
from fitplan.search_spaces import SPACES, create_space
from fitplan.search_spaces.elastic_resnet import ElasticResNetSpace, ElasticResNetSupernet, resnet_from_timm
from fitplan.search_spaces.timm_import import from_timm

SMALL = {"basic": dict(block="basic", base_width=16, stem="small", num_classes=10, channel_divisor=4,
                       resolutions=[28, 32]),
         "bottleneck": dict(block="bottleneck", layers=[2, 3, 3, 2], base_width=8, stem="small", num_classes=10,
                            in_chans=1, channel_divisor=4, resolutions=[28])}


def _warm(space, seed=0):
    """A supernet whose BN statistics were moved by train-mode forwards over random subnets."""
    torch.manual_seed(seed)
    sn = space.build_supernet().train()
    with torch.no_grad():
        for s in range(5):
            cfg = sn.set_active(space.sample(s, compression=False))
            sn(torch.randn(6, *space.input_shape(cfg)) * 1.5 + 0.3)
        cfg = sn.set_largest()
        sn(torch.randn(6, *space.input_shape(cfg)))
    return sn.eval()


@pytest.fixture(scope="module", params=["basic", "bottleneck"])
def warm(request):
    space = ElasticResNetSpace(**SMALL[request.param])
    return space, _warm(space)


def test_registered_and_defaults():
    assert SPACES.get("elastic_resnet") is ElasticResNetSpace
    sp = create_space("elastic_resnet")
    assert sp.layers == (3, 4, 6, 3) and sp.block == "bottleneck"
    dims = sp.dimensions
    assert dims["d"].length == 4 and dims["d"].choices == (0, 1, 2)
    assert dims["e"].length == 16 and dims["w"].length == 5 and dims["r"].kind == "resolution"
    assert len(sp.units()) == 1 + 16 + 1
    sp18 = create_space("elastic_resnet", block="basic")
    assert sp18.dimensions["d"].choices == (0, 1)  # keeps >= 1 block of the 2 per stage
    assert create_space(sp18.spec()).spec() == sp18.spec()


@pytest.mark.parametrize("patch,field", [
    ({"depth": [1]}, "depth"),
    ({"e": [0.5] * 7}, "e"),
    ({"e": [0.5] * 7 + [0.3]}, "e.7"),
    ({"d": [0, 0, 0, 2]}, "d.3"),
    ({"r": 64}, "r"),
    ({"w": [0.65, 0.8, 0.8, 0.8, 0.8]}, "w.1"),  # stage 1 has an identity shortcut: ties w.1 to w.0
    ({"bits": [32] * 9 + [5]}, "bits.9"),
])
def test_bad_configs_name_the_field(patch, field):
    sp = ElasticResNetSpace(**SMALL["basic"])
    cfg = {**sp.smallest(), **patch}
    with pytest.raises(ConfigError) as e:
        sp.validate(cfg)
    assert e.value.field == field and str(e.value).startswith(field)


def test_missing_key_and_allowed_listed():
    sp = ElasticResNetSpace(**SMALL["basic"])
    cfg = sp.smallest()
    del cfg["r"]
    with pytest.raises(ConfigError, match="^r: missing"):
        sp.validate(cfg)
    with pytest.raises(ConfigError, match=r"allowed: 0.5, 0.75, 1.0"):
        sp.validate({**sp.smallest(), "e": [0.1] * 8})


@pytest.mark.parametrize("kw,field", [({"block": "dense"}, "block"), ({"stem": "deep"}, "stem"),
                                      ({"layers": [2, 0]}, "layers"), ({"max_depth_drop": 2, "block": "basic"},
                                                                      "max_depth_drop"),
                                      ({"width_mults": []}, "width_mults"), ({"base_width": 0}, "base_width")])
def test_bad_spec(kw, field):
    with pytest.raises(ConfigError) as e:
        ElasticResNetSpace(**kw)
    assert e.value.field == field


def test_sample_determinism_encode_params():
    sp = ElasticResNetSpace(**SMALL["bottleneck"])
    a = sp.sample(5)
    assert a == sp.sample(5) and a != sp.sample(6)
    lens = {sp.encode(c).shape for c in (sp.smallest(), sp.largest(), a, sp.sample(9))}
    assert len(lens) == 1 and lens.pop()[0] == len(sp.feature_names())
    assert np.isfinite(sp.encode(a)).all()
    assert sp.from_params(sp.to_params(a)) == a
    basic = ElasticResNetSpace(**SMALL["basic"])
    for s in range(20):
        w = basic.sample(s)["w"]
        assert w[1] == w[0]


def test_depth_width_semantics():
    sp = ElasticResNetSpace(**SMALL["bottleneck"])  # layers 2,3,3,2, max drop 1
    cfg = sp.validate({**sp.largest(), "d": [0, 1, 0, 1], "w": [1.0, 0.65, 1.0, 0.8, 1.0]})
    a = sp.arch(cfg)
    assert a.depths == (1, 3, 2, 2)
    assert a.outs[0] == 20 and a.outs[1] == 64  # 32 * 0.65 = 20.8 -> 20 (divisor 4); 64 * 1.0
    active = [u.active for u in sp.unit_costs(cfg)]
    assert active == [True, True, False, True, True, True, True, True, False, True, True, True]
    assert sp.costs(sp.smallest())["macs"] < sp.costs(cfg)["macs"] < sp.costs(sp.largest())["macs"]


def test_extract_matches_supernet_and_param_count(warm):
    space, sn = warm
    cfgs = [space.smallest(), space.largest()] + [space.sample(s, compression=False) for s in (1, 2, 3)]
    for cfg in cfgs:
        torch.manual_seed(4)
        x = torch.randn(3, *space.input_shape(cfg))
        sn.set_active(cfg)
        with torch.no_grad():
            ref = sn(x)
            net = sn.extract(cfg).eval()
            out = net(x)
        assert (out - ref).abs().max().item() < 1e-4
        assert sum(p.numel() for p in net.parameters()) == space.count_params(cfg)
        # every parameter belongs to exactly one unit, inactive units are empty
        names = [n for unit in net.fitplan_units for n in unit]
        assert len(names) == len(set(names))
        owned = [n for n, _ in net.named_parameters() if any(n.startswith(u + ".") for u in names)]
        assert len(owned) == len(list(net.parameters()))
        assert [bool(u) for u in net.fitplan_units] == [c.active for c in space.unit_costs(cfg)]
        sn_ptrs = {p.data_ptr() for p in sn.parameters()}
        assert not any(p.data_ptr() in sn_ptrs for p in net.parameters())


def test_extract_keeps_active_subnet(warm):
    space, sn = warm
    sn.set_active(space.largest())
    sn.extract(space.smallest())
    x = torch.randn(1, *space.input_shape(space.largest()))
    with torch.no_grad():
        assert (sn(x) - sn.extract()(x)).abs().max().item() < 1e-4


def test_onnx_export_matches(warm, tmp_path):
    space, sn = warm
    cfg = space.sample(7, compression=False)
    net = sn.extract(cfg).eval()
    path = export_onnx(net, space.input_shape(cfg), tmp_path / "resnet.onnx")
    torch.manual_seed(5)
    assert max_abs_diff_vs_torch(net, path, torch.randn(1, *space.input_shape(cfg))) < 1e-4


def _randomised_timm(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics and affine params (timm zero-inits the last BN)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet34", marks=pytest.mark.slow), "resnet50"])
def test_from_timm_largest_equals_timm(name):
    model = _randomised_timm(name)
    sn = from_timm(model)
    assert isinstance(sn, ElasticResNetSupernet)
    assert sn.active_config == sn.space.largest()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert (sn(x) - ref).abs().max().item() < 1e-4
        net = sn.extract(sn.space.largest()).eval()
        assert (net(x) - ref).abs().max().item() < 1e-4
    assert sn.space.count_params(sn.space.largest()) == sum(p.numel() for p in model.parameters())
    # the largest subnet's state dict loads into the timm model (same parameter names)
    model.load_state_dict(net.state_dict(), strict=True)
    if name == "resnet18":  # a smaller subnet of the converted supernet: analytic == real params
        cfg = sn.space.sample(0)
        assert sn.space.count_params(cfg) == sum(p.numel() for p in sn.extract(cfg).parameters())


def test_from_timm_name_and_errors():
    sn = from_timm("resnet18")
    assert sn.space.block == "basic" and sn.space.layers == (2, 2, 2, 2)
    with pytest.raises(UnknownNameError, match="resnet50"):
        from_timm("resnet101x")
    with pytest.raises(ConfigError, match="stem"):
        resnet_from_timm(timm.create_model("resnet18d", pretrained=False))


def test_sort_middle_channels_preserves_largest():
    space = ElasticResNetSpace(**SMALL["bottleneck"])
    sn = _warm(space, seed=3)
    cfg = space.largest()
    x = torch.randn(2, *space.input_shape(cfg))
    sn.set_active(cfg)
    with torch.no_grad():
        before = sn(x)
        sn.sort_middle_channels()
        after = sn(x)
    assert (before - after).abs().max().item() < 1e-4
    blk = sn.layer2[0]
    imp = blk.conv3.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(imp[:-1] >= imp[1:])
