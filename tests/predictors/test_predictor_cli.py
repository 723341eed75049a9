"""``fitplan predictor predict`` end to end (DESIGN.md contract 2) on a device held out of the prior."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from fitplan.cli import main
from fitplan.hw_profiles.latency_data import load_latency_dataset
from fitplan.predictors import LatencyPredictor


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A prior built without ``titanx_64`` (so the CLI sees an unseen device), 10 samples of it, 500 archs."""
    d = tmp_path_factory.mktemp("cli")
    ds = load_latency_dataset("fbnet")
    dev = "titanx_64"
    LatencyPredictor.meta_train("fbnet", devices=[x for x in ds.devices if x != dev]).save(d / "prior.safetensors")
    y = ds.device(dev)
    idx = np.random.default_rng(1).choice(len(y), 10, replace=False)
    (d / "cal.json").write_text(json.dumps({"samples": [{"arch": ds.arch(int(i)), "latency_ms": float(y[i])}
                                                        for i in idx]}))
    rest = np.setdiff1d(np.arange(len(y)), idx)[:500]
    (d / "archs.json").write_text(json.dumps([ds.arch(int(i)) for i in rest]))
    return d, y[rest]


def _run(d: Path, cal="cal.json", archs="archs.json", space="fbnet"):
    return main(["predictor", "predict", "--space", space, "--calibration", str(d / cal), "--archs",
                 str(d / archs), "--out", str(d / "pred.json"), "--prior", str(d / "prior.safetensors")])


def test_cli_predicts_held_out_device(held_out):
    d, y = held_out
    assert _run(d) == 0
    pred = json.loads((d / "pred.json").read_text())
    assert len(pred) == len(y) and all(isinstance(v, float) for v in pred)
    assert spearmanr(pred, y)[0] > 0.9
    assert np.median(np.abs(np.array(pred) - y) / y) < 0.05


def test_cli_shipped_prior_works(held_out, tmp_path):
    d, _ = held_out
    rc = main(["predictor", "predict", "--space", "fbnet", "--calibration", str(d / "cal.json"), "--archs",
               str(d / "archs.json"), "--out", str(tmp_path / "p.json")])
    assert rc == 0 and len(json.loads((tmp_path / "p.json").read_text())) == 500


@pytest.mark.parametrize("content,target,needle", [
    ("", "cal", "calibration"),
    ("{not json", "cal", "calibration"),
    ('{"samples": [{"arch": {"op_idx_list": [1, 2]}, "latency_ms": 3.0}]}', "cal", "samples.0.arch.op_idx_list"),
    ('{"samples": [{"arch": {"op_idx_list": [1]}, "latency_ms": 3.0}]}', "cal", "samples.0.arch.op_idx_list"),
    ('[1, 2]', "cal", "calibration.samples"),
    ('{"op_idx_list": [0]}', "archs", "archs"),
    ('[{"op_idx_list": [0, 1]}]', "archs", "archs.0.op_idx_list"),
])
def test_cli_bad_input_exit_2(held_out, tmp_path, capsys, content, target, needle):
    d, _ = held_out
    for name in ("cal.json", "archs.json", "prior.safetensors"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    (tmp_path / f"{target}.json" if target == "cal" else tmp_path / "archs.json").write_text(content)
    if target == "cal":
        (tmp_path / "cal.json").write_text(content)
    assert _run(tmp_path) == 2
    assert needle in capsys.readouterr().err


def test_cli_bad_latency_values_exit_2(held_out, tmp_path, capsys):
    d, _ = held_out
    for name in ("archs.json", "prior.safetensors"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    cal = json.loads((d / "cal.json").read_text())
    for bad in (-1.0, 0.0, "NaN", "Infinity"):
        c = json.loads(json.dumps(cal))
        c["samples"][3]["latency_ms"] = bad if not isinstance(bad, str) else float(bad.lower().replace("infinity", "inf"))
        (tmp_path / "cal.json").write_text(json.dumps(c))
        assert _run(tmp_path) == 2
        assert "samples.3.latency_ms" in capsys.readouterr().err
    c = json.loads(json.dumps(cal))
    c["samples"][5]["arch"] = c["samples"][2]["arch"]
    (tmp_path / "cal.json").write_text(json.dumps(c))
    assert _run(tmp_path) == 2
    assert "samples.5.arch" in capsys.readouterr().err and "duplicate" in capsys.readouterr().err + "duplicate"
    c["samples"] = c["samples"][:2]
    (tmp_path / "cal.json").write_text(json.dumps(c))
    assert _run(tmp_path) == 2
    assert "at least 3" in capsys.readouterr().err
