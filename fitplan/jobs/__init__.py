"""Search jobs: a team submits job specs, workers on one laptop or many machines run them.

``submit(spec, storage) -> job_id``, ``run_worker(storage, max_jobs)``, ``status``, ``result``,
``cancel``. Jobs and their Optuna studies share one storage (SQLite file by default, an Optuna journal
file, or PostgreSQL); stages ``prepare -> search -> finish`` are claimed with leases, the search is shared
by any number of workers with an exact trial target, and a killed worker's stage and trials are resumed
by the others. See :mod:`fitplan.jobs.store`, :mod:`fitplan.jobs.gate` and :mod:`fitplan.jobs.worker`.
"""
from fitplan.jobs.api import cancel, result, status, submit
from fitplan.jobs.backends import BACKENDS, DEFAULT_STORAGE, resolve_storage
from fitplan.jobs.spec import JobSpec, load_spec, parse_spec
from fitplan.jobs.stages import PIPELINES, Pipeline, StageContext
from fitplan.jobs.store import JobStore
from fitplan.jobs.worker import STAGE_RUNNERS, Worker, WorkerOptions, run_worker

__all__ = ["BACKENDS", "DEFAULT_STORAGE", "JobSpec", "JobStore", "PIPELINES", "Pipeline", "STAGE_RUNNERS",
           "StageContext", "Worker", "WorkerOptions", "cancel", "load_spec", "parse_spec", "resolve_storage",
           "result", "run_worker", "status", "submit"]
