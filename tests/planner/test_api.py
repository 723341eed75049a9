"""plan(), the stage API and the CLI, end to end on the tiny space (stand-in latency predictor)."""
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from _spaces import make_fake_profile
from fitplan.errors import InfeasibleBudgetError
from fitplan.planner import Plan, PlanRequest, finish, load_model, plan, prepare, run_search

FAST = dict(quick=True, top_k=1, supernet_epochs=1, finetune_epochs=1, max_train_steps=3, accuracy_subnets=6)


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
    assert (tmp_path / "finetune_ckpt").is_dir() and (tmp_path / "supernet" / "supernet.safetensors").is_file()
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


def test_verify_skips_budget_breakers_and_retightens(tmp_path, fake_latency, monkeypatch):
    """Measured latency 2x the prediction: every first candidate breaks the budget on the 'real runtime';
    the planner re-searches with a tightened predicted limit and returns a measured-feasible plan."""
    import fitplan.planner.predict as P

    def fake_measure(space, config, profile, **kw):
        from _spaces import analytic_latency

        v = 2.0 * float(analytic_latency(space)([space.validate(config)])[0])
        return {"value": v, "status": "ok", "method": "measured: fake runtime (test)"}

    monkeypatch.setattr(P, "measure_latency", fake_measure)
    req = PlanRequest("planner_tiny", make_fake_profile(local=True), {"latency_ms": 0.06},
                      out_dir=str(tmp_path), engine="optuna", **FAST)
    import fitplan.planner.api as api

    monkeypatch.setattr(api, "_measure_int8_factor", lambda *a, **k: (None, "skipped in test"))
    monkeypatch.setattr(api, "_measure_artifact", lambda ctx, path, shape: {"value": 0.0, "method": "test"})
    ctx = prepare(req)
    storage = optuna.storages.InMemoryStorage()
    run_search(ctx, storage, "s", 100)
    p = finish(ctx, optuna.load_study(study_name="s", storage=storage))
    assert p.measured["latency_ms"]["value"] <= 0.06
    assert any("tightened" in n for n in p.notes)
    assert p.predicted["latency_ms"] <= 0.03 + 1e-9
