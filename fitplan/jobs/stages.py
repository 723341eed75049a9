"""Stage handlers: what a job *does* in each stage, registered per pipeline.

A job runs the stages ``prepare -> search -> finish`` (see :mod:`fitplan.jobs.store` for who may run
which). A *pipeline* supplies one handler per stage and is registered by name in :data:`PIPELINES`;
the job spec's ``pipeline`` field picks it. Two ship with fitplan:

- ``planner`` (default): :func:`fitplan.planner.prepare` / :func:`~fitplan.planner.run_search` /
  :func:`~fitplan.planner.finish` — the real compression search (:mod:`fitplan.jobs.planner_pipeline`).
- ``selftest``: a small multi-objective study on an analytic, Monte-Carlo-evaluated objective with a
  checkpointed finish (:mod:`fitplan.jobs.selftest`); used to check a worker fleet and a storage end to
  end, and by the throughput benchmark.

Handlers must be resumable: ``prepare`` and ``finish`` can be re-run by another worker after a crash,
so they keep their progress in ``ctx.out_dir`` (caches, checkpoints) and pick it up again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitplan.registry import Registry

if TYPE_CHECKING:
    import optuna

    from fitplan.jobs.spec import JobSpec


@dataclass
class StageContext:
    """What a stage handler gets: the job, where to write, and a flag to stop early."""

    job_id: str
    spec: "JobSpec"
    out_dir: Path
    study_name: str
    trials_target: int
    worker_id: str
    storage_url: str
    #: set when the job was cancelled or this worker lost its claim; long handlers should check it.
    stop: threading.Event = field(default_factory=threading.Event)


class Pipeline:
    """Base class of the stage handlers of one pipeline."""

    name: str = ""

    def validate(self, spec: "JobSpec") -> None:
        """Check the spec fields this pipeline needs; raise ConfigError naming the field."""

    def prepare(self, ctx: StageContext, storage: "optuna.storages.BaseStorage") -> None:
        """Exclusive. Build what the search needs, cache it in ``ctx.out_dir``, create the study."""
        raise NotImplementedError

    def search(self, ctx: StageContext, storage: "optuna.storages.BaseStorage", n_trials: int) -> None:
        """Shared. Ask up to ``n_trials`` trials of ``ctx.study_name`` (queued ones first) and tell their
        results. ``storage`` admits only the new trials granted to this worker and raises
        :class:`fitplan.jobs.gate.TrialTargetReached` beyond them; let it propagate. Many workers run
        this at once, each with its own grant."""
        raise NotImplementedError

    def grant_chunk(self, ctx: StageContext) -> int:
        """New trials a worker takes per grant: small keeps workers balanced, large saves round trips."""
        return 4

    def finish(self, ctx: StageContext, study: "optuna.Study") -> dict[str, Any]:
        """Exclusive. Turn the study into the result; JSON-able dict with ``plan`` and ``report``."""
        raise NotImplementedError


PIPELINES: Registry[Pipeline] = Registry("pipeline")


def _register_builtin() -> None:
    from fitplan.jobs import planner_pipeline, selftest  # noqa: F401  (they register themselves)


_register_builtin()
