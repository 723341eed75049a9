"""The examples, run in their --quick form."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fbnet_pixel3_quick(tmp_path, capsys):
    assert _load("fbnet_pixel3").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fbnet on pixel3" in out and "not local" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["predicted"]["latency_ms"] <= plan["budget"]["latency_ms"]
    assert plan["measured"] == {}


@pytest.mark.slow
def test_mnist_local_quick(tmp_path, capsys):
    assert _load("mnist_local").main(["--quick", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(last)
    assert res["measured_ms"] <= res["budget_ms"]
    assert res["accuracy"] is not None
