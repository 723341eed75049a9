"""SearchSpace base behaviour on a minimal space defined here (validation, sampling, params, encode)."""
import numpy as np
import pytest
import torch.nn as nn

from fitplan.errors import ConfigError
from fitplan.search_spaces.base import Dimension, SearchSpace, UnitCost


class TinySpace(SearchSpace):
    name = "tiny_test"

    def arch_dimensions(self):
        return [Dimension("w", (4, 8), 2), Dimension("r", (8, 12, 16), None, "resolution")]

    def units(self):
        return ["l0", "l1"]

    def unit_costs(self, cfg):
        r = cfg["r"]
        return [UnitCost("l0", macs=cfg["w"][0] * 9 * r * r, params=cfg["w"][0] * 9, act_elems=cfg["w"][0] * r * r),
                UnitCost("l1", macs=cfg["w"][1] * cfg["w"][0], params=cfg["w"][1] * cfg["w"][0])]

    def input_shape(self, cfg):
        return (1, cfg["r"], cfg["r"])

    def build_supernet(self):
        return nn.Identity()


@pytest.fixture
def space():
    return TinySpace()


def test_validate_fills_compression_defaults(space):
    cfg = space.validate({"w": [4, 8], "r": 12})
    assert cfg["bits"] == [32, 32] and cfg["sparsity"] == [0.0, 0.0] and cfg["sparsity_pattern"] == "unstructured"


@pytest.mark.parametrize("cfg,field", [
    ({"w": [4, 8], "r": 12, "depth": 3}, "depth"),
    ({"w": [4, 5], "r": 12}, "w.1"),
    ({"w": [4], "r": 12}, "w"),
    ({"w": [4, 8]}, "r"),
    ({"w": [4, 8], "r": 12, "bits": [8, 7]}, "bits.1"),
    ({"w": [4, 8], "r": 12, "sparsity": [0.25, 0.5], "sparsity_pattern": "2:4"}, "sparsity.0"),
])
def test_validate_names_bad_field(space, cfg, field):
    with pytest.raises(ConfigError) as e:
        space.validate(cfg)
    assert e.value.field == field
    assert str(e.value).startswith(field)


def test_unknown_key_lists_allowed(space):
    with pytest.raises(ConfigError, match=r"allowed: 'w', 'r', 'bits'"):
        space.validate({"w": [4, 8], "r": 12, "x": 1})


def test_sample_deterministic_and_valid(space):
    a, b = space.sample(3), space.sample(3)
    assert a == b and space.is_valid(a)
    assert space.sample(4, compression=False)["bits"] == [32, 32]


def test_two_four_samples_respect_pattern(space):
    for seed in range(30):
        cfg = space.sample(seed)
        if cfg["sparsity_pattern"] == "2:4":
            assert set(cfg["sparsity"]) <= {0.0, 0.5}


def test_params_roundtrip(space):
    cfg = space.sample(1)
    params = space.to_params(cfg)
    assert "w.1" in params and "bits.0" in params
    assert space.from_params(params) == cfg


def test_extremes_and_costs(space):
    small, large = space.smallest(), space.largest()
    assert small["w"] == [4, 4] and large["r"] == 16
    assert space.costs(small)["macs"] < space.costs(large)["macs"]
    cfg = dict(large, bits=[8, 8], sparsity=[0.5, 0.0])
    assert space.costs(cfg)["weight_bytes"] == pytest.approx(8 * 9 * 0.5 + 8 * 8)


def test_encode_fixed_length(space):
    names = space.feature_names()
    for seed in range(5):
        f = space.encode(space.sample(seed))
        assert f.shape == (len(names),) and np.isfinite(f).all()


def test_uniform_configs_repeat_one_choice_per_list():
    space = TinySpace()
    uni = space.uniform_configs()
    assert len(uni) == 2 * 3  # w in {4, 8} everywhere x 3 resolutions
    assert all(len(set(c["w"])) == 1 and space.is_valid(c) for c in uni)
    assert space.smallest() in uni and space.largest() in uni
    with pytest.raises(ConfigError, match="limit"):
        space.uniform_configs(limit=5)
