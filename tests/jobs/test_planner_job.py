"""One real planner job end to end through the job system (FBNet space, shipped Pixel 3 profile)."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fitplan.cli import main
from fitplan.jobs import JobStore, run_worker, status


@pytest.mark.slow  # ~30 s, mostly the planner itself (prepare + ONNX export); run with -m slow
def test_planner_job_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("fitplan.planner")
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: fbnet-pixel3
model: fbnet
device: pixel3
budget: {{latency_ms: 40, batch: 1}}
search: {{trials: 60, sampler: nsga2, seed: 0}}
finetune: {{epochs: 0}}
options: {{quick: true, top_k: 1}}
output: {tmp_path / 'out'}
""")
    storage = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert main(["submit", str(spec), "--storage", storage]) == 0
    job = capsys.readouterr().out.strip()
    assert run_worker(storage, max_jobs=1, poll=0.05, lease_s=30, heartbeat_s=5) == 1
    st = status(job, storage)[0]
    assert st["state"] == "done", st["error"]
    assert main(["result", job, "--json", "--storage", storage]) == 0
    res = json.loads(capsys.readouterr().out)
    plan = res["plan"]
    assert plan["format"] and plan["predicted"]["latency_ms"] <= 40
    assert plan["search"]["study_name"] == st["study"]
    assert Path(res["report"]).is_file() and Path(res["plan_path"]).is_file()
    store = JobStore(storage)
    study = optuna.load_study(study_name=st["study"], storage=store.backend.optuna_storage())
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 60
    assert study.metric_names and "latency_ms" in study.metric_names
