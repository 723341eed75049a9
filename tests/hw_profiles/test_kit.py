"""Calibration kit: write, run its standalone bench.py here, import; bad results are refused untouched."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import fitplan.predictors
from fitplan.cli import main
from fitplan.errors import ConfigError
from fitplan.hw_profiles import get_profile, import_results, profile_samples, write_kit
from fitplan.hw_profiles.kit import choose_kit_configs, read_samples

BENCH_ARGS = ["--warmup-s", "0", "--min-repeats", "5", "--max-repeats", "30", "--max-seconds", "0.3"]


@pytest.fixture(scope="module")
def kit_run(tmp_path_factory):
    """A 3-model kit (fp32 + int8) of the tiny space, benchmarked once with its own bench.py."""
    from hwtest_helpers import TinySpace

    d = tmp_path_factory.mktemp("kit") / "kit"
    manifest = write_kit(TinySpace(), 3, d, variants=("fp32", "int8"), progress=False)
    proc = subprocess.run([sys.executable, str(d / "bench.py"), "--threads", "1", *BENCH_ARGS],
                          capture_output=True, text=True, timeout=300, cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d, manifest


def test_kit_contents(kit_run):
    d, manifest = kit_run
    m = json.loads(manifest.read_text())
    assert m["format"] == "fitplan-calibration-kit" and m["format_version"] == 1
    assert m["space"]["space"] == "hwtest_tiny" and len(m["models"]) == 6
    roles = [x["role"] for x in m["models"] if x["variant"] == "fp32"]
    assert roles[:2] == ["smallest", "largest"]
    for x in m["models"]:
        assert (d / x["file"]).is_file() and len(x["sha256"]) == 64 and x["input_shape"][0] == 1
    bench = (d / "bench.py").read_text()
    assert "import torch" not in bench and "fitplan." not in bench.split('"""', 2)[2].split("def ")[0]
    res = json.loads((d / "results.json").read_text())
    assert res["complete"] and len(res["results"]) == 6 and res["settings"]["threads"] == 1
    assert all(0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in res["results"])


def test_import_creates_profile(kit_run, home, capsys):
    d, _ = kit_run
    assert main(["calibrate", "import", str(d / "results.json"), "--name", "my-pi", "--kind", "cpu"]) == 0
    p = get_profile("my-pi")
    assert not p.builtin and p.kind == "cpu" and p.runtime.threads == 1 and not p.measurable
    s = profile_samples(p, "hwtest_tiny", "fp32")
    assert len(s) == 3 and (s.latency_ms > 0).all()
    assert p.dataset_for("hwtest_tiny", "int8") is not None
    assert p.capabilities.int8_speedup in ("yes", "no", "unknown")
    assert "bench.py" in p.dataset_for("hwtest_tiny").provenance.text
    assert (home / "calibrations" / "my-pi" / "results.json").is_file()
    # same name again: refused without --force, kept intact
    assert main(["calibrate", "import", str(d / "results.json"), "--name", "my-pi"]) == 2
    assert main(["calibrate", "import", str(d / "results.json"), "--name", "pixel3"]) == 2
    assert main(["calibrate", "import", str(d / "results.json"), "--name", "x", "--kind", "toaster"]) == 2


def _corrupt(doc):
    doc = json.loads(json.dumps(doc))
    yield "partial", {**doc, "complete": False}
    yield "missing model", {**doc, "results": doc["results"][:-1]}
    bad = json.loads(json.dumps(doc)); bad["results"][0]["median_ms"] = -3.0
    yield "negative", bad
    bad = json.loads(json.dumps(doc)); bad["results"][1]["p90_ms"] = "NaN"
    yield "not a number", bad
    bad = json.loads(json.dumps(doc)); bad["results"][0]["sha256"] = "0" * 64
    yield "hash", bad
    bad = json.loads(json.dumps(doc)); bad["kit_id"] = "other"
    yield "kit id", bad
    bad = json.loads(json.dumps(doc)); bad["results"].append(bad["results"][0])
    yield "duplicate", bad


def test_corrupted_results_rejected(kit_run, home, tmp_path, capsys):
    d, _ = kit_run
    good = json.loads((d / "results.json").read_text())
    work = tmp_path / "kit"
    shutil.copytree(d, work)
    cases = list(_corrupt(good))
    for label, doc in cases:
        (work / "results.json").write_text(json.dumps(doc))
        assert main(["calibrate", "import", str(work / "results.json"), "--name", "bad-dev"]) == 2, label
        assert "error" in capsys.readouterr().err
    text = json.dumps(good)
    (work / "results.json").write_text(text[: len(text) // 2])  # truncated file
    assert main(["calibrate", "import", str(work / "results.json"), "--name", "bad-dev"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (work / "manifest.json").unlink()
    (work / "results.json").write_text(text)
    assert main(["calibrate", "import", str(work / "results.json"), "--name", "bad-dev"]) == 2
    assert not (home / "profiles" / "bad-dev.json").exists()
    assert not (home / "calibrations" / "bad-dev").exists()


def test_bench_resumes_partial_run(kit_run, tmp_path, home):
    d, _ = kit_run
    work = tmp_path / "kit"
    shutil.copytree(d, work)
    res = json.loads((work / "results.json").read_text())
    res["complete"] = False
    res["results"] = res["results"][:4]
    (work / "results.json").write_text(json.dumps(res))
    proc = subprocess.run([sys.executable, "bench.py", *BENCH_ARGS], capture_output=True, text=True,
                          timeout=300, cwd=work)
    assert proc.returncode == 0 and "resuming: 4 model(s)" in proc.stdout
    assert proc.stdout.count("median") == 2
    done = json.loads((work / "results.json").read_text())
    assert done["complete"] and len(done["results"]) == 6
    assert import_results(work / "results.json", "resumed").name == "resumed"


def test_choose_configs_and_read_samples(tiny_space, kit_run, tmp_path):
    picks = choose_kit_configs(tiny_space, 5, seed=0)
    assert [r for r, _ in picks[:2]] == ["smallest", "largest"] and len(picks) == 5
    assert len({json.dumps(c, sort_keys=True) for _, c in picks}) == 5
    with pytest.raises(ConfigError, match="not empty"):
        write_kit(tiny_space, 2, kit_run[0], progress=False)
    space, samples = read_samples(kit_run[0] / "results.json")
    assert space == "hwtest_tiny" and len(samples) == 3
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"samples": [{"arch": {"w": [4, 4]}, "latency_ms": 0}]}))
    with pytest.raises(ConfigError, match="latency_ms"):
        read_samples(cal)


def test_calibrate_fit(kit_run, home, monkeypatch, capsys):
    d, _ = kit_run
    seen = {}

    def fake_calibrate(profile, samples, space):
        seen.update(profile=profile.name, n=len(samples), space=space)
        return {"format": "test-state", "scale": 1.5}

    monkeypatch.setattr(fitplan.predictors, "calibrate_profile", fake_calibrate, raising=False)
    assert main(["calibrate", "fit", "--profile", "local-cpu-1t", "--samples", str(d / "results.json")]) == 0
    assert seen == {"profile": "local-cpu-1t", "n": 3, "space": "hwtest_tiny"}
    p = get_profile("local-cpu-1t")
    assert p.predictors["hwtest_tiny"] == {"format": "test-state", "scale": 1.5}
    assert "predictors.hwtest_tiny" in p.provenance
    assert main(["calibrate", "fit", "--profile", "local-cpu-1t", "--samples", str(d / "results.json"),
                 "--space", "fbnet"]) == 2
    monkeypatch.delattr(fitplan.predictors, "calibrate_profile")
    capsys.readouterr()
    assert main(["calibrate", "fit", "--profile", "pixel3", "--samples", str(d / "results.json")]) == 2
    assert "calibrate_profile is not available" in capsys.readouterr().err
