"""Local onnxruntime measurement and resumable JSONL datasets (structure and positivity, not timings)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import fitplan.hw_profiles.measure as measure_mod
from fitplan.cli import main
from fitplan.errors import ConfigError
from fitplan.hw_profiles import (DatasetRef, Provenance, get_profile, load_dataset, profile_samples, measure_config, measure_configs, measure_module,
                                 read_measurements, sample_measure_configs)
from fitplan.hw_profiles.builtin import int8_speedup_from_records
from fitplan.hw_profiles.measure import nodes_for_modules, scope_qualname
from fitplan.onnx_utils import export_onnx

from hwtest_helpers import FAST


def _check_ok(m):
    assert m.status == "ok" and m.ok
    assert 0 < m.p10_ms <= m.median_ms <= m.p90_ms
    assert m.count >= FAST["min_repeats"]
    fp = m.fingerprint
    for k in ("cpu_model", "logical_cores", "onnxruntime", "torch", "threads", "batch"):
        assert k in fp
    assert "intra_op_num_threads=1" in m.method


def test_measure_module_fp32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    m = measure_module(net, (3, 16, 16), threads=1, **FAST)
    _check_ok(m)
    assert m.variant == "fp32" and m.fingerprint["batch"] == 1
    d = m.to_dict()
    assert json.loads(json.dumps(d))["median_ms"] == m.median_ms


def test_measure_config_variants(tiny_space):
    prof = get_profile("local-cpu-1t")
    big = tiny_space.largest()
    fp32 = measure_config(tiny_space, big, prof, **FAST)
    _check_ok(fp32)
    int8 = measure_config(tiny_space, {**big, "bits": [8] * 4}, prof, **FAST)
    _check_ok(int8)
    assert int8.variant == "int8" and "QDQ" in int8.method
    mixed = measure_config(tiny_space, {**big, "bits": [8, 32, 32, 8]}, prof, **FAST)
    _check_ok(mixed)
    assert mixed.variant == "mixed-int8" and "the nodes of the 8-bit units" in mixed.method
    # an inactive unit's bits do not matter: d=1 makes b2 inactive
    small = {**tiny_space.smallest(), "bits": [32, 32, 4, 32]}
    assert measure_config(tiny_space, small, prof, **FAST).variant == "fp32"
    sparse = measure_config(tiny_space, {**big, "sparsity": [0.5] * 4}, prof, **FAST)
    _check_ok(sparse)
    four = measure_config(tiny_space, {**big, "bits": [4, 32, 32, 32]}, prof, **FAST)
    assert four.status == "not_measurable" and "int4" in four.reason and four.median_ms is None


def test_not_measurable_profile(tiny_space):
    with pytest.raises(ConfigError, match="not measurable"):
        measure_config(tiny_space, tiny_space.smallest(), get_profile("pixel3"))


def test_scope_mapping(tiny_space, tmp_path):
    assert scope_qualname("/blocks/blocks.1/blocks.1.0/Conv") == "blocks.1.0"
    assert scope_qualname("/blocks/blocks.0/conv/Conv") == "blocks.0.conv"
    assert scope_qualname("/stem/Conv") == "stem"
    assert scope_qualname("/ReduceMean") == ""
    net = tiny_space.build_supernet().extract(tiny_space.largest())
    path = export_onnx(net, (3, 16, 16), tmp_path / "m.onnx")
    assert len(nodes_for_modules(path, ["b1"])) == 1
    assert len(nodes_for_modules(path, ["stem", "b2", "head"])) == 3


def test_measure_configs_resume(tiny_space, tmp_path, monkeypatch):
    prof = get_profile("local-cpu-1t")
    configs = sample_measure_configs(tiny_space, 4, seed=1)
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 4
    assert configs[0]["bits"] == [32] * 4 and configs[1]["bits"] == [8] * 4
    out = tmp_path / "m.jsonl"
    calls = []
    real = measure_mod.measure_config

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(measure_mod, "measure_config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_configs(tiny_space, configs, prof, out, progress=False, retries=0, **FAST)
    header, recs = read_measurements(out)
    assert header["profile"] == "local-cpu-1t" and len(recs) == 2
    with open(out, "a") as f:  # a torn line, as if killed mid-write
        f.write('{"key": "abc", "conf')
    calls.clear()
    monkeypatch.setattr(measure_mod, "measure_config", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    recs = measure_configs(tiny_space, configs, prof, out, progress=False, retries=0, **FAST)
    assert len(calls) == 2 and len(recs) == 4
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["fingerprint"]["threads"] == 1 for r in recs)
    _, all_recs = read_measurements(out)
    assert len(all_recs) == 4  # the torn line was skipped, nothing measured was lost
    assert {r["variant"] for r in recs} >= {"fp32", "int8"}
    verdict = int8_speedup_from_records(out)  # smallest arch is measured in fp32 and int8
    assert verdict is not None and verdict[0] in ("yes", "no", "unknown") and "1 pairs" in verdict[1]
    # once a shipped local dataset exists, local-cpu-1t references it and takes int8 capability from it
    import fitplan.hw_profiles.builtin as builtin_mod
    monkeypatch.setattr(builtin_mod, "LOCAL_DATASETS", {("local-cpu-1t", tiny_space.name): str(out)})
    local = get_profile("local-cpu-1t")
    assert local.capabilities.int8_speedup == verdict[0] and "capabilities.int8_speedup" in local.provenance
    assert len(profile_samples(local, tiny_space.name)) == 4
    # the file is a dataset a profile can reference; a missing file is reported, not crashed on
    ref = DatasetRef(space=tiny_space.name, dataset=f"jsonl:{out}", variant="config",
                     provenance=Provenance("measured", "this test"))
    data = load_dataset(ref)
    assert len(data) == 4 and (data.latency_ms > 0).all() and data.configs[0] == configs[0]
    prof2 = get_profile("local-cpu-1t").copy()
    prof2.datasets = [DatasetRef(space="x", dataset=f"jsonl:{tmp_path / 'none.jsonl'}", variant="config",
                                 provenance=Provenance("measured", "this test"))]
    assert profile_samples(prof2, "x") is None
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(prof2.datasets[0])
    # a file of another space / profile is refused
    with pytest.raises(ConfigError, match="profile"):
        measure_configs(tiny_space, configs, _other_profile(), out, progress=False)


def test_measure_configs_retries_unstable(tiny_space, tmp_path, monkeypatch):
    """An unstable measurement is repeated after the other configs, every attempt is kept in the file, the
    geometric mean of a config's attempts is returned and read back; a resumed run continues the attempt count
    from the file; ``passes`` measures every config again after all others."""
    prof = get_profile("local-cpu-1t")
    configs = sample_measure_configs(tiny_space, 3, seed=2)
    keys = [measure_mod.config_key(tiny_space.validate(c)) for c in configs]
    script = {keys[0]: [(5.0, 0.2, False), (4.0, 0.004, True)],   # unstable, then stable: retried once
              keys[1]: [(2.0, 0.003, True)],                       # stable: measured once
              keys[2]: [(9.0, 0.05, False), (7.0, 0.09, False), (6.0, 0.004, True)]}
    seen = []

    def fake(space, cfg, profile, **_):
        k = measure_mod.config_key(cfg)
        seen.append(k)
        ms, ci, stable = script[k][sum(1 for s in seen if s == k) - 1]
        return measure_mod.Measurement(status="ok", variant="fp32", median_ms=ms, rel_ci=ci, stable=stable)

    monkeypatch.setattr(measure_mod, "measure_config", fake)
    out = tmp_path / "r.jsonl"
    with pytest.raises(ConfigError, match="retries"):
        measure_configs(tiny_space, configs, prof, out, progress=False, retries=-1)
    recs = measure_configs(tiny_space, configs, prof, out, progress=False, retries=1)
    assert seen == [keys[0], keys[1], keys[2], keys[0], keys[2]]  # retries come after every first attempt
    combined = [math.sqrt(5.0 * 4.0), 2.0, math.sqrt(9.0 * 7.0)]  # geometric mean of the ok attempts
    assert [r["median_ms"] for r in recs] == pytest.approx(combined)
    assert [r["attempts"] for r in recs] == [2, 1, 2]
    assert recs[0]["attempt_median_ms"] == [5.0, 4.0] and recs[0]["best_attempt_median_ms"] == 4.0
    assert "attempt_median_ms" not in recs[1]  # a single attempt is returned as measured
    _, lines = read_measurements(out)
    assert len(lines) == 5  # every attempt is in the file
    # the best attempt (stable first, then the tighter CI) as measured, and the combined records
    assert [r["median_ms"] for r in measure_mod.best_records(lines)] == [4.0, 2.0, 9.0]
    assert [r["median_ms"] for r in measure_mod.ok_records(lines)] == pytest.approx(combined)
    data = load_dataset(DatasetRef(space=tiny_space.name, dataset=f"jsonl:{out}", variant="config",
                                   provenance=Provenance("measured", "this test")))
    assert list(data.latency_ms) == pytest.approx(combined)  # readers: one per config, attempts combined
    # resuming with more retries measures only the still-unstable config, once more
    recs = measure_configs(tiny_space, configs, prof, out, progress=False, retries=2)
    assert seen[5:] == [keys[2]] and recs[2]["attempts"] == 3
    assert recs[2]["median_ms"] == pytest.approx((9.0 * 7.0 * 6.0) ** (1 / 3))
    # a second pass: every config with fewer than 2 attempts once more, after the others; bad values refused
    with pytest.raises(ConfigError, match="passes"):
        measure_configs(tiny_space, configs, prof, out, progress=False, passes=0)
    script[keys[1]].append((2.2, 0.003, True))
    recs = measure_configs(tiny_space, configs, prof, out, progress=False, retries=2, passes=2)
    assert seen[6:] == [keys[1]] and recs[1]["median_ms"] == pytest.approx(math.sqrt(2.0 * 2.2))


def _other_profile():
    p = get_profile("local-cpu-1t").copy()
    p.name = "local-other"
    return p


def test_cli_measure(registered_tiny, home, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    rc = main(["measure", "--space", registered_tiny, "--n", "2", "--out", str(out), "--max-seconds", "0.3"])
    assert rc == 0
    assert "2/2 configs measured" in capsys.readouterr().out
    _, recs = read_measurements(out)
    assert len(measure_mod.best_records(recs)) == 2 and len(recs) <= 4  # unstable ones measured once more
    assert main(["measure", "--space", registered_tiny, "--device", "pixel3", "--n", "1"]) == 2
    assert "not measurable" in capsys.readouterr().err
    assert main(["measure", "--space", registered_tiny, "--n", "1", "--retries", "-1", "--out", str(out)]) == 2
    assert "retries" in capsys.readouterr().err
    before = out.read_bytes()
    assert main(["measure", "--space", registered_tiny, "--n", "1", "--passes", "0", "--out", str(out)]) == 2
    assert "passes" in capsys.readouterr().err and out.read_bytes() == before  # refused before touching the file
    assert main(["measure", "--space", registered_tiny, "--bits", "8,16", "--n", "1"]) == 2


def test_sample_measure_configs_mixes_scattered_and_split_precisions():
    """The mixed member of each group alternates a coin flip per unit and a split (float-first or int8-first)."""
    from fitplan.search_spaces import create_space

    space = create_space("ofa_mbv3")
    configs = sample_measure_configs(space, 24, seed=0)
    changes = [measure_mod.precision_changes(space, c) for c in configs if len(set(c["bits"])) > 1]
    assert len(changes) == 8 and changes.count(1) >= 3 and max(changes) > 3, changes



def test_cli_calibrate_fit_reads_a_measurements_file(registered_tiny, home, tmp_path, capsys):
    """``fitplan measure`` output is a calibration-sample file: ``calibrate fit`` uses its best attempt per
    config; a file without a successful measurement is refused with exit code 2."""
    out = tmp_path / "cal.jsonl"
    assert main(["measure", "--space", registered_tiny, "--n", "5", "--out", str(out), "--max-seconds", "0.2",
                 "--retries", "0"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "fit", "--profile", "local-cpu-1t", "--samples", str(out)]) == 0
    assert "on 5 samples" in capsys.readouterr().out
    assert registered_tiny in get_profile("local-cpu-1t").predictors
    assert main(["calibrate", "fit", "--profile", "local-cpu-1t", "--samples", str(tmp_path / "none.jsonl")]) == 2
    assert "samples" in capsys.readouterr().err
