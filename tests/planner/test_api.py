"""plan(), the stage API and the CLI, end to end on the tiny space (stand-in latency predictor)."""
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from _spaces import PLAN_FAST as FAST, make_fake_profile
from fitplan.errors import DeliveredOverBudgetError, InfeasibleBudgetError
from fitplan.planner import Plan, PlanRequest, finish, load_model, plan, prepare, run_search


def test_plan_non_local_device_no_data(tmp_path, fake_latency):
    prof = make_fake_profile()
    p = plan("planner_tiny", prof, {"latency_ms": 0.04}, out_dir=str(tmp_path), n_trials=150, **FAST)
    assert p.predicted["latency_ms"] <= 0.04
    assert p.measured == {}  # nothing measured on a device we do not have
    assert any("not local" in n for n in p.notes)
    assert any("not trained" in n for n in p.notes)
    assert p.predicted_by["accuracy"].startswith("proxy")
    for key in ("model_onnx", "model_safetensors", "report_html", "pareto_json", "plan_json", "summary_txt"):
        assert Path(p.artifacts[key]).is_file(), key
    assert p.checks["onnx_max_abs_diff"] < 1e-4
    assert Plan.load(tmp_path / "plan.json") == p
    assert all(e["predicted"]["latency_ms"] <= 0.04 for e in p.pareto)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "budget" in html


def test_infeasible_budget_fails_before_search(tmp_path, fake_latency):
    with pytest.raises(InfeasibleBudgetError, match=r"smallest subnet: 0\.0198 ms predicted > budget 0\.005 ms"):
        prepare(PlanRequest("planner_tiny", make_fake_profile(), {"latency_ms": 0.005}, out_dir=str(tmp_path),
                            **FAST))
    assert not (tmp_path / "plan.json").exists()


def test_size_budget_compresses_exports_int8_and_reloads(tmp_path, fake_latency):
    prof = make_fake_profile()
    ctx = prepare(PlanRequest("planner_tiny", prof, {"latency_ms": 0.08, "size_mb": 0.0025},
                              out_dir=str(tmp_path), **FAST))
    assert "size_mb" in [n for n, _ in ctx.problem.objectives]
    assert any("bits" in n and "size" in n for n in ctx.notes)  # unknown int8 speed-up told to the user
    storage = optuna.storages.InMemoryStorage()
    run_search(ctx, storage, "s", 200)
    study = optuna.load_study(study_name="s", storage=storage)
    p = finish(ctx, study)
    assert p.predicted["size_mb"] <= 0.0025
    assert any(b < 32 for b in p.config["bits"])
    assert Path(p.artifacts["model_int8_onnx"]).is_file()
    m = load_model(tmp_path)
    x = torch.randn(2, *ctx.space.input_shape(p.config))
    from fitplan.onnx_utils import run_onnx

    np.testing.assert_allclose(run_onnx(p.artifacts["model_int8_onnx"], x), m(x).detach().numpy(), atol=1e-3)


def test_stage_api_two_workers_share_journal_study(tmp_path, fake_latency):
    req = PlanRequest("planner_tiny", make_fake_profile(), {"latency_ms": 0.04}, out_dir=str(tmp_path),
                      engine="optuna", **FAST)
    storage = str(tmp_path / "study.journal")
    for _ in range(2):  # two workers, each with its own prepare()
        run_search(prepare(req), storage, "job-1", 40)
    study = optuna.load_study(study_name="job-1", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    assert len(study.trials) == 80 and study.metric_names == ["accuracy", "latency_ms"]
    assert study.user_attrs["fitplan"]["space"]["space"] == "planner_tiny"
    p = finish(prepare(req), study)
    assert p.search["n_trials"] == 80


def test_local_plan_with_data_verifies_and_finetunes(tmp_path, fake_latency):
    p = plan("planner_tiny", "local", {"latency_ms": 0.06}, "digits", out_dir=str(tmp_path), n_trials=100, **FAST)
    lat = p.measured["latency_ms"]
    assert lat["value"] <= 0.06 and "measured" in lat["method"] and "onnxruntime" in lat["method"]
    assert "accuracy" in p.measured and "test images of digits" in p.measured["accuracy"]["method"]
    assert p.checks["budget_met_measured_latency"] is True
    assert any(e["measured"] for e in p.pareto)  # predicted and measured side by side
    # uniformly scaled architectures were measured beside the searched ones; the verified candidates were
    # ranked by measured validation top-1, and the best of them raced (short fine-tunes, val cross-entropy)
    assert any("uniformly scaled architecture" in n for n in p.notes)
    validated = [e for e in p.pareto if "val_accuracy" in e["measured"]]
    chosen = next(e for e in p.pareto if e.get("chosen"))
    assert chosen in validated and "validation images" in chosen["measured"]["val_accuracy"]["method"]
    raced = [e for e in p.pareto if "race_val_nll" in e["measured"]]
    if len(raced) > 1:  # the lowest cross-entropy, or a slower network within race_tolerance SEs of it
        lead = min(raced, key=lambda e: e["measured"]["race_val_nll"]["value"])
        assert chosen is lead or (
            chosen["measured"]["latency_ms"]["value"] > lead["measured"]["latency_ms"]["value"]
            and any("standard error(s) of the lowest validation cross-entropy won" in n for n in p.notes))
    elif not any(n.startswith("gate:") for n in p.notes):
        assert chosen["measured"]["val_accuracy"]["value"] == max(e["measured"]["val_accuracy"]["value"]
                                                                  for e in validated)
    assert (tmp_path / "finetune_ckpt").is_dir() and (tmp_path / "supernet" / "supernet.safetensors").is_file()
    # digits' small train split: the 1-epoch request was stretched towards supernet_min_steps (capped here)
    assert any("supernet_min_steps 600" in n and "stopped at max_train_steps 3" in n for n in p.notes), p.notes
    # a saved supernet dir is an accepted model
    p2 = plan(str(tmp_path / "supernet"), make_fake_profile(), {"latency_ms": 0.06}, out_dir=str(tmp_path / "b"),
              n_trials=50, **FAST)
    assert p2.space == p.space


def test_cli_json_stdout_only(tmp_path, fake_latency, capsys, monkeypatch):
    from fitplan.cli import main
    import fitplan.planner.api as api

    monkeypatch.setattr(api, "resolve_profile", lambda d: make_fake_profile(name=str(d)))
    rc = main(["plan", "planner_tiny", "--device", "phone", "--latency-ms", "0.04", "--trials", "60", "--quick",
               "--out", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert doc["format"] == "fitplan-plan" and doc["format_version"] == 1
    rc = main(["plan", "planner_tiny", "--device", "phone", "--latency-ms", "0.001", "--quick",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "smallest subnet" in err


def test_final_retiming_over_budget_returns_no_plan_and_next_run_moves_on(tmp_path, local_stage, monkeypatch):
    # gate passes (call 0), the fine-tuned file then measures over budget three times (calls 1-3)
    ctx, study, calls = local_stage(lambda i: 0.01 if i == 0 else 0.5, deliver_attempts=1)
    with pytest.raises(DeliveredOverBudgetError, match="no plan is returned"):
        finish(ctx, study)
    assert len(calls) == 4
    doc = json.loads((tmp_path / "chosen.json").read_text())
    assert len(doc["rejected"]) == 1 and "config" not in doc
    first = doc["rejected"][0]
    calls.clear()
    import fitplan.planner.gate as gate

    monkeypatch.setattr(gate, "measure_artifact", lambda ctx, path, shape: {"value": 0.01, "method": "test"})
    p = finish(ctx, study)
    assert p.config != first and p.checks["budget_met_measured_exported"]
    assert any("rejected by an earlier run" in n for n in p.notes)


def test_supernet_epochs_reach_min_steps_on_small_data():
    from fitplan.planner.api import supernet_epochs

    assert supernet_epochs(4, 600, 55) == 11  # MNIST-5k: 55 steps per epoch
    assert supernet_epochs(3, 600, 1000) == 3  # a large dataset keeps the requested epochs
    assert supernet_epochs(4, 0, 55) == 4 and supernet_epochs(0, 600, 55) == 0  # off / training skipped


def test_final_retiming_over_budget_moves_on_to_the_next_candidate_in_one_call(tmp_path, local_stage, monkeypatch):
    """Default deliver_attempts=2: the first delivered file re-times over the budget (calls 1-3), finish()
    records it as rejected and materialises the next candidate itself, which is returned."""
    ctx, study, calls = local_stage(lambda i: 0.5 if i in (1, 2, 3) else 0.01)
    p = finish(ctx, study)
    doc = json.loads((tmp_path / "chosen.json").read_text())
    assert len(doc["rejected"]) == 1 and p.config != doc["rejected"][0] and doc["config"] == p.config
    assert p.checks["budget_met_measured_exported"] and len(calls) == 6
    assert any(n.startswith("deliver: attempt 1 rejected") for n in p.notes)


