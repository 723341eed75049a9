"""elastic_vit: validation, supernet == extracted subnet, token pruning, ONNX export, analytic costs, timm."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.onnx_utils import export_onnx, max_abs_diff_vs_torch
from fitplan.search_spaces import create_space, list_spaces
from fitplan.search_spaces.elastic_vit import (
    MNIST_VIT_SPEC,
    ElasticViTSpace,
    ElasticViTSupernet,
    ViTSubnet,
    elastic_vit_from_timm,
    kept_tokens,
    prune_tokens,
)
from fitplan.search_spaces.timm_import import from_timm

# 32x32 input, 4x4 patches -> 64 patch tokens; small widths keep every test fast.
SMALL = dict(img_size=32, patch_size=4, in_chans=3, num_classes=7, embed_dims=[24, 32, 48], max_depth=4,
             depths=[2, 3, 4], num_heads=[1, 2, 3], head_dim=8, mlp_ratios=[1.5, 2.0, 3.0],
             token_layers=[0, 2], keep_ratios=[1.0, 0.7, 0.5])


def make(**kw) -> tuple[ElasticViTSpace, ElasticViTSupernet]:
    space = create_space("elastic_vit", **{**SMALL, **kw})
    torch.manual_seed(0)
    net = space.build_supernet().eval()
    # sharper attention than the 0.02-std init so top-k ranks are far from ties
    with torch.no_grad():
        for blk in net.blocks:
            blk.attn.qkv.weight.normal_(0, 0.3)
    return space, net


def configs(space, n=4):
    out = [space.smallest(), space.largest()]
    out += [space.sample(seed, compression=False) for seed in range(n)]
    if "tokens" in space.dimensions:
        out.append(dict(space.largest(), tokens=[min(space.keep_ratios)] * len(space.token_layers)))
    return out


def real_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_and_spec_roundtrip():
    assert "elastic_vit" in list_spaces()
    space = create_space("elastic_vit", **SMALL)
    spec = json.loads(json.dumps(space.spec()))
    again = create_space(spec)
    assert again.spec() == space.spec() and again.dimensions == space.dimensions
    d = space.dimensions
    assert d["tokens"].kind == "tokens" and d["tokens"].length == 2
    assert d["num_heads"].length == 4 and d["mlp_ratio"].length == 4
    assert space.input_shape(space.largest()) == (3, 32, 32)
    assert ElasticViTSpace().token_layers == (3, 7)  # 1/3 and 2/3 of DeiT-Tiny's 12 blocks


@pytest.mark.parametrize("kw", [{}, {"fuse_tokens": True}, {"class_token": False}, {"qkv_bias": False}])
def test_extracted_matches_supernet(kw):
    space, net = make(**kw)
    x = torch.randn(2, 3, 32, 32)
    for cfg in configs(space):
        net.set_active(cfg)
        sub = net.extract(cfg).eval()
        assert isinstance(sub, ViTSubnet)
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff < 1e-4, (cfg, diff)
        assert real_params(sub) == space.count_params(cfg), cfg


def test_extract_keeps_active_config():
    space, net = make()
    small, large = space.smallest(), space.largest()
    net.set_active(large)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        net.extract(small)
        assert torch.equal(before, net(x))


def test_units_cover_every_parameter_once():
    space, net = make()
    for cfg in configs(space, 2):
        sub = net.extract(cfg)
        units = sub.fitplan_units
        assert len(units) == len(space.units())
        owner: dict[str, int] = {}
        for u, names in enumerate(units):
            for name in names:
                for pname, _ in sub.get_submodule(name).named_parameters(prefix=name):
                    assert pname not in owner, pname
                    owner[pname] = u
        assert set(owner) == {n for n, _ in sub.named_parameters()}
        costs = space.unit_costs(cfg)
        for u, (uc, names) in enumerate(zip(costs, units)):
            got = sum(p.numel() for n, p in sub.named_parameters() if owner[n] == u)
            assert got == uc.params and uc.active == bool(names), uc.name
        for i in range(cfg["depth"], space.max_depth):
            assert units[1 + 2 * i] == [] and units[2 + 2 * i] == []


def test_token_pruning_reduces_tokens_and_keeps_cls():
    space, net = make()
    cfg = dict(space.largest(), tokens=[0.5, 0.7])
    sub = net.extract(cfg).eval()
    assert space.token_counts(cfg) == [65, 33, 33, 24, 24]  # ceil(.5*64)=32, ceil(.7*32)=23, + CLS
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in sub.blocks]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sub(x)
        for h in hooks:
            h.remove()
        assert [o.shape[1] for _, o in seen] == [33, 33, 24, 24]
        # the CLS token after a pruning block equals the unpruned block's CLS output
        blk = sub.blocks[0]
        keep, blk.keep = blk.keep, None
        full = blk(seen[0][0])
        blk.keep = keep
    assert torch.allclose(full[:, 0], seen[0][1][:, 0])
    # the kept patch tokens are exactly the 32 unpruned ones with the highest head-averaged CLS attention
    with torch.no_grad():
        _, scores = blk.attn(blk.norm1(seen[0][0]), "cls")
    top = scores.topk(32, dim=1).indices
    for b in range(2):
        assert torch.allclose(seen[0][1][b, 1:], full[b, 1:][top[b]])
    # analytic MACs drop with fewer tokens
    full_macs = space.costs(space.largest())["macs"]
    assert space.costs(cfg)["macs"] < 0.75 * full_macs


@pytest.mark.parametrize("kw", [{}, {"fuse_tokens": True}, {"class_token": False}])
def test_analytic_macs_match_flop_counter(kw):
    """Analytic MACs (incl. QK^T, AV and fewer tokens after pruning) == torch's counted matmul/conv FLOPs / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    space, net = make(**kw)
    for cfg in configs(space, 2):
        sub = net.extract(cfg).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            sub(torch.randn(1, 3, 32, 32))
        assert fc.get_total_flops() // 2 == space.costs(cfg)["macs"], cfg


def test_pruning_sites_beyond_depth_are_ignored():
    space, net = make()
    cfg = dict(space.smallest(), depth=2, tokens=[1.0, 0.5])  # site after block 2 does not run
    assert space.token_counts(cfg) == [65, 65, 65]
    assert space.costs(cfg) == space.costs(dict(cfg, tokens=[1.0, 1.0]))


def test_prune_tokens_picks_top_scores():
    x = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0], [0.3, 0.2, 0.1, 0.0, 0.4]])
    out = prune_tokens(x, scores, 2, 1, False)
    assert out.shape == (2, 3, 2)
    assert torch.equal(out[0], x[0, [0, 4, 2]]) and torch.equal(out[1], x[1, [0, 5, 1]])
    fused = prune_tokens(x, scores, 2, 1, True)
    w = torch.tensor([0.2, 0.1, 0.0])
    expect = (x[0, [3, 1, 5]] * w[:, None]).sum(0) / w.sum()
    assert fused.shape == (2, 4, 2) and torch.allclose(fused[0, -1], expect)
    assert kept_tokens(10, 0.7) == 7 and kept_tokens(64, 0.5) == 32 and kept_tokens(3, 0.01) == 1


def test_onnx_export_with_token_pruning(tmp_path):
    import onnx

    space, net = make(fuse_tokens=True)
    cfg = dict(space.sample(3, compression=False), depth=4, tokens=[0.7, 0.5])
    sub = net.extract(cfg)
    path = export_onnx(sub, space.input_shape(cfg), tmp_path / "vit.onnx", dynamic_batch=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"TopK", "GatherElements"} <= ops
    torch.manual_seed(1)
    assert max_abs_diff_vs_torch(sub, path, torch.randn(3, 3, 32, 32)) < 1e-4


def test_unknown_key_and_value_errors_name_field():
    space = create_space("elastic_vit", **SMALL)
    good = space.largest()
    cases = [
        (dict(good, width=3), "width"),
        (dict(good, embed_dim=40), "embed_dim"),
        (dict(good, num_heads=[3, 3, 5, 3]), "num_heads.2"),
        (dict(good, mlp_ratio=[2.0] * 3), "mlp_ratio"),
        (dict(good, tokens=[1.0, 0.3]), "tokens.1"),
        ({k: v for k, v in good.items() if k != "depth"}, "depth"),
    ]
    for cfg, field in cases:
        with pytest.raises(ConfigError) as e:
            space.validate(cfg)
        assert e.value.field == field, (field, str(e.value))
    with pytest.raises(ConfigError, match=r"tokens.1: invalid value 0.3 \(allowed: 0.5, 0.7, 1.0\)"):
        space.validate(dict(good, tokens=[1.0, 0.3]))


@pytest.mark.parametrize("kw,field", [
    ({"patch_size": 5}, "patch_size"),
    ({"token_layers": [0, 4]}, "token_layers"),
    ({"depths": [2, 5]}, "depths"),
    ({"keep_ratios": [1.0, 0.0]}, "keep_ratios"),
    ({"embed_dims": []}, "embed_dims"),
    ({"class_token": "yes"}, "class_token"),
])
def test_bad_spec_names_field(kw, field):
    with pytest.raises(ConfigError) as e:
        create_space("elastic_vit", **{**SMALL, **kw})
    assert e.value.field == field


def test_sample_deterministic_and_encode_fixed_length():
    space = create_space("elastic_vit", **SMALL)
    assert space.sample(7) == space.sample(7)
    names = space.feature_names()
    feats = [space.encode(space.sample(s)) for s in range(5)] + [space.encode(space.smallest())]
    for f in feats:
        assert f.shape == (len(names),) and np.isfinite(f).all()
    assert any("tokens.0=0.5" == n for n in names)


def test_no_token_layers_means_no_tokens_key():
    space = create_space("elastic_vit", **dict(SMALL, token_layers=[]))
    assert "tokens" not in space.dimensions
    cfg = space.largest()
    assert space.token_counts(cfg) == [65] * 5
    with pytest.raises(ConfigError):
        space.validate(dict(cfg, tokens=[1.0]))


def test_mnist_variant_trains():
    """The small spec runs on MNIST-shaped data; a few sandwich steps fit a fixed batch."""
    space = create_space("elastic_vit", **MNIST_VIT_SPEC)
    torch.manual_seed(0)
    net = space.build_supernet().train()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sub_cfg = dict(space.smallest(), tokens=[0.5, 0.7])

    def loss_of(cfg):
        net.set_active(cfg)
        return nn.functional.cross_entropy(net(x), y)

    with torch.no_grad():
        start = loss_of(space.largest()).item()
    for _ in range(15):
        opt.zero_grad()
        (loss_of(space.largest()) + loss_of(sub_cfg)).backward()
        opt.step()
    with torch.no_grad():
        assert loss_of(space.largest()).item() < 0.5 * start
    assert net.extract(sub_cfg)(x).shape == (16, 10)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_tiny_patch16_224"])
def test_timm_largest_subnet_equivalence(name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=64).eval()
    net = from_timm(model).eval()
    assert isinstance(net, ElasticViTSupernet)
    space = net.space
    assert max(space.embed_dims) == 192 and space.max_depth == 12 and max(space.num_heads_choices) == 3
    assert space.head_dim == 64 and space.img_size == 64
    large = space.largest()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        net.set_active(large)
        assert (net(x) - ref).abs().max().item() < 1e-4
        sub = net.extract(large).eval()
        assert (sub(x) - ref).abs().max().item() < 1e-4
    assert real_params(model) == space.count_params(large) == real_params(sub)
    # a smaller subnet of the imported supernet still runs and matches its extraction
    cfg = space.sample(0, compression=False)
    net.set_active(cfg)
    with torch.no_grad():
        assert (net(x) - net.extract(cfg).eval()(x)).abs().max().item() < 1e-4


def test_timm_avgpool_and_unsupported_variants():
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          class_token=False, global_pool="avg").eval()
    net = elastic_vit_from_timm(m).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - m(x)).abs().max().item() < 1e-4
    ls = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                           init_values=1e-5)
    with pytest.raises(ConfigError, match="layer scale"):
        elastic_vit_from_timm(ls)
    with pytest.raises(UnknownNameError, match="deit_tiny_patch16_224"):
        from_timm(timm.create_model("deit3_small_patch16_224", pretrained=False, img_size=32, depth=1))


@pytest.mark.slow
def test_deit_tiny_224_pruned_subnet_exports(tmp_path):
    """Full-size DeiT-Tiny import at 224: equivalence, then a pruned subnet through ONNX Runtime."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    net = from_timm(model).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() < 1e-4
    cfg = dict(net.space.largest(), tokens=[0.7, 0.5])
    sub = net.extract(cfg)
    assert net.space.token_counts(cfg)[-1] == 1 + 69  # 196 -> 138 -> 69 patch tokens
    path = export_onnx(sub, net.space.input_shape(cfg), tmp_path / "deit.onnx")
    assert max_abs_diff_vs_torch(sub, path, x) < 1e-4
