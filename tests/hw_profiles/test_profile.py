"""HardwareProfile JSON, the profile store, built-in profiles and `fitplan profiles`."""
from __future__ import annotations

import json

import pytest

from fitplan.cli import main
from fitplan.errors import ConfigError, UnknownNameError
from fitplan.hw_profiles import (Capabilities, DatasetRef, HardwareProfile, Provenance, Runtime, get_profile,
                                 list_profiles, profile_samples, save_profile)
from fitplan.hw_profiles.latency_data import load_latency_dataset
from fitplan.hw_profiles.profile import PROFILE_FORMAT


def _profile(name: str = "my-pi") -> HardwareProfile:
    return HardwareProfile(
        name=name, kind="cpu", description="test",
        runtime=Runtime(engine="onnxruntime", provider="CPUExecutionProvider", threads=4, batch=1),
        capabilities=Capabilities(int8_speedup="yes"),
        memory_limit_mb=512.0,
        datasets=[DatasetRef(space="fbnet", dataset="inline", variant="fp32",
                             samples=[{"arch": {"op_idx_list": [0] * 22}, "latency_ms": 3.5}],
                             provenance=Provenance("measured", "bench.py on a pi", where="pi", when="2026-01-01"))],
        predictors={"fbnet": {"kind": "x", "w": [1.0, 2.0]}},
        provenance={"kind": Provenance("user", "said so"), "runtime": Provenance("user", "said so"),
                    "capabilities.int8_speedup": Provenance("measured", "kit"),
                    "memory_limit_mb": Provenance("user", "datasheet"),
                    "predictors.fbnet": Provenance("measured", "fit")})


def test_json_round_trip_and_version(tmp_path):
    p = _profile()
    path = tmp_path / "p.json"
    p.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == PROFILE_FORMAT and doc["format_version"] == 1
    q = HardwareProfile.load(path)
    assert q.to_dict() == p.to_dict()
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="format_version"):
        HardwareProfile.load(path)


def test_validation_names_field():
    d = _profile().to_dict()
    with pytest.raises(ConfigError, match="kind.*allowed.*'cpu'"):
        HardwareProfile.from_dict({**d, "kind": "toaster"})
    with pytest.raises(ConfigError, match="capabilities.int8_speedup"):
        HardwareProfile.from_dict({**d, "capabilities": {"int8_speedup": "maybe"}})
    with pytest.raises(ConfigError, match="provenance.memory_limit_mb"):
        HardwareProfile.from_dict({**d, "provenance": {k: v for k, v in d["provenance"].items()
                                                       if k != "memory_limit_mb"}})
    bad = json.loads(json.dumps(d))
    bad["datasets"][0]["samples"][0]["latency_ms"] = -1
    with pytest.raises(ConfigError, match="latency_ms"):
        HardwareProfile.from_dict(bad)


def test_unknown_name_closest_match():
    with pytest.raises(UnknownNameError) as e:
        get_profile("pixel_3")
    assert "Did you mean 'pixel3'" in str(e.value) and "gold_6240" in str(e.value)


def test_builtin_profiles_cover_shipped_devices():
    names = set(list_profiles())
    for space in ("fbnet", "ofa_mbv3"):
        ds = load_latency_dataset(space)
        for dev in ds.devices:
            assert dev in names
            p = get_profile(dev)
            assert p.builtin and not p.measurable
            gpu = p.kind == "gpu"
            assert p.runtime.batch == (int(dev.rsplit("_", 1)[1]) if gpu else 1)
            ref = p.dataset_for(space)
            assert ref is not None and ref.column == dev and "HELP" in (ref.provenance.citation or "")
            assert p.capabilities.int8_speedup == "unknown"
            assert "kind" in p.provenance and p.provenance["kind"].citation
    assert get_profile("pixel3").kind == "phone"
    assert get_profile("gold_6240").kind == "cpu" and get_profile("gold_6240").runtime.batch == 1
    assert get_profile("1080ti_32").kind == "gpu" and get_profile("1080ti_32").runtime.batch == 32
    assert get_profile("essential_ph_1").runtime.batch == 1
    s = profile_samples(get_profile("v100_64"), "ofa_mbv3")
    assert len(s) == 5000 and set(s.configs[0]) == {"ks", "e", "d", "r"} and (s.latency_ms > 0).all()
    assert profile_samples(get_profile("pixel3"), "ofa_mbv3") is None


def test_local_profiles_measurable():
    p1, pa = get_profile("local-cpu-1t"), get_profile("local-cpu")
    assert p1.measurable and pa.measurable and p1.runtime.threads == 1 and pa.runtime.threads >= 1
    assert p1.capabilities.sparse_kernels == "no" and p1.capabilities.int4_speedup == "no"
    assert "capabilities.sparse_kernels" in p1.provenance
    # the shipped local dataset may not be measured yet: absence is not an error
    s = profile_samples(p1, "ofa_mbv3")
    assert s is None or len(s) > 0


def test_user_profiles(home):
    p = _profile("my-pi")
    path = save_profile(p)
    assert path.parent == home / "profiles"
    assert "my-pi" in list_profiles()
    q = get_profile("my-pi")
    assert not q.builtin and q.predictors["fbnet"]["w"] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="already exists"):
        save_profile(p, overwrite=False)
    # a user profile with a built-in's name overrides it (how calibrating pixel3 is stored)
    override = get_profile("pixel3").copy()
    override.predictors["fbnet"] = {"a": 1}
    override.provenance["predictors.fbnet"] = Provenance("measured", "fit")
    save_profile(override)
    assert get_profile("pixel3").predictors == {"fbnet": {"a": 1}}
    with pytest.raises(ConfigError, match="name"):
        save_profile(_profile("../evil"))


def test_cli_profiles(home, capsys):
    assert main(["profiles", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"pixel3", "local-cpu-1t", "1080ti_32", "v100_64"} <= {d["name"] for d in doc}
    assert main(["profiles"]) == 0
    assert "pixel3" in capsys.readouterr().out
    assert main(["profiles", "local-cpu-1t"]) == 0
    assert "provenance" in capsys.readouterr().out
    assert main(["profiles", "pixl3"]) == 2
    assert "Did you mean 'pixel3'" in capsys.readouterr().err
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "broken.json").write_text("{not json")
    assert main(["profiles"]) == 0
    captured = capsys.readouterr()
    assert "pixel3" in captured.out and "'broken' is unreadable" in captured.err
    assert main(["profiles", "broken"]) == 2
