"""Python API of the job system: submit / status / result / cancel (workers: :func:`run_worker`)."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from fitplan.errors import ConfigError
from fitplan.jobs.spec import JobSpec, load_spec, parse_spec
from fitplan.jobs.store import JobStore


def _store(storage: str | JobStore | None) -> JobStore:
    return storage if isinstance(storage, JobStore) else JobStore(storage)


def submit(spec: JobSpec | Mapping[str, Any] | str | Path, storage: str | JobStore | None = None) -> str:
    """Queue a job; returns its id. ``spec``: a :class:`JobSpec`, a spec mapping, or a YAML/JSON path.

    The job's Optuna study is named ``<name>-<id>`` and lives in the same storage as the jobs table.
    """
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    elif not isinstance(spec, JobSpec):
        spec = parse_spec(spec)
    store = _store(storage)
    job_id = uuid.uuid4().hex[:12]
    out = Path(spec.output_dir(job_id)).resolve()
    store.add_job(job_id=job_id, name=spec.name, pipeline=spec.pipeline, spec=spec.to_dict(),
                  study_name=f"{spec.name}-{job_id}", out_dir=str(out), trials_target=spec.search.trials)
    return job_id


def _trial_counts(store: JobStore, study_name: str) -> dict[str, int]:
    """Trial counts by state for a job's study (empty before the study exists)."""
    from optuna.trial import TrialState

    from fitplan.jobs.gate import count_trials

    st = store.backend.optuna_storage()
    try:
        sid = st.get_study_id_from_name(study_name)
    except KeyError:
        return {}
    return {s.name.lower(): n for s in TrialState if (n := count_trials(st, sid, (s,)))}


def status(job: str | None = None, storage: str | JobStore | None = None,
           with_trials: bool = True) -> list[dict[str, Any]]:
    """Status of one job (id or name) or of all jobs: state, stage, claimant, lease, trials, workers."""
    store = _store(storage)
    jobs = [store.get(job)] if job else store.list()
    workers = store.workers()
    now = time.time()
    out = []
    for j in jobs:
        d = {"id": j.id, "name": j.name, "pipeline": j.pipeline, "state": j.state, "stage": j.stage,
             "study": j.study_name, "out_dir": j.out_dir, "trials_target": j.trials_target,
             "claimed_by": j.claimed_by, "lease_left_s": round(j.lease_until - now, 1) if j.lease_until else None,
             "attempts": j.attempts, "error": j.error, "created_at": j.created_at,
             "started_at": j.started_at, "finished_at": j.finished_at,
             "workers": [w["id"] for w in workers if w["job_id"] == j.id and w["state"] == "running"]}
        if with_trials:
            d["trials"] = _trial_counts(store, j.study_name)
        out.append(d)
    return out


def result(job: str, storage: str | JobStore | None = None) -> dict[str, Any]:
    """The result of a finished job: ``{"plan": ..., "plan_path": ..., "report": ...}``."""
    store = _store(storage)
    j = store.get(job)
    if j.state != "done":
        why = f": {j.error.splitlines()[0]}" if j.error else ""
        raise ConfigError("job", f"job {j.id} ({j.name}) is {j.state} (stage {j.stage}), no result yet{why}",
                          ["done"])
    return {"job_id": j.id, "name": j.name, **(j.result or {})}


def cancel(job: str, storage: str | JobStore | None = None) -> bool:
    """Cancel a queued or running job; workers stop admitting its trials within a heartbeat.
    Returns False if it had already ended."""
    store = _store(storage)
    return store.cancel(store.get(job).id)
