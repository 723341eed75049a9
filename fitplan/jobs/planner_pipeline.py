"""The ``planner`` pipeline: a job runs :mod:`fitplan.planner`'s stage API.

``prepare(request) -> ctx`` builds the space, supernet and predictors (training the supernet when data
is given) and caches them in ``request.out_dir``; workers joining the search later call it again and get
the cached context. ``run_search(ctx, storage, study_name, n_trials)`` adds trials to the shared study;
``finish(ctx, study) -> Plan`` verifies, materialises, fine-tunes (resumable from checkpoints in the
output directory), exports and reports. The planner is imported lazily, so job submission and workers for
other pipelines do not pay for torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from fitplan.errors import ConfigError, closest_name
from fitplan.jobs.stages import PIPELINES, Pipeline, StageContext


#: PlanRequest fields the job spec sets itself (not allowed under ``options``)
SPEC_FIELDS = ("model", "device", "budget", "data", "out_dir", "seed", "sampler", "n_trials", "engine",
               "finetune_epochs")


def _request_fields() -> list[str]:
    from fitplan.planner import PlanRequest

    return [f.name for f in dataclasses.fields(PlanRequest)]


def build_request(ctx: StageContext, seed: int | None = None) -> Any:
    """A :class:`fitplan.planner.PlanRequest` from the job spec.

    ``budget.batch`` becomes ``Budget.batch_size``; ``finetune.epochs`` -> ``finetune_epochs``;
    ``options`` pass other PlanRequest fields (``supernet_epochs``, ``max_train_steps``, ``quick``,
    ``top_k``, ``space_options``...). The engine is always ``optuna``: trials are admitted one grant at a
    time for an exact trial count (the ``evolve`` engine writes its archive past the admission gate).
    """
    from fitplan.planner import PlanRequest

    spec = ctx.spec
    budget = {("batch_size" if k == "batch" else k): v for k, v in spec.budget.items()}
    values: dict[str, Any] = {
        "model": spec.model, "device": spec.device, "budget": budget, "data": spec.data,
        "out_dir": str(ctx.out_dir), "seed": spec.search.seed if seed is None else seed,
        "sampler": spec.search.sampler, "n_trials": spec.search.trials, "engine": "optuna",
        "finetune_epochs": spec.finetune.epochs,
    }
    fields_ = _request_fields()
    if spec.finetune.lr is not None:
        if "finetune_lr" not in fields_:
            raise ConfigError("finetune.lr", "the planner does not take a fine-tuning learning rate; "
                                             "leave it out")
        values["finetune_lr"] = spec.finetune.lr
    values.update(spec.options)
    return PlanRequest(**values).validate()


class PlannerPipeline(Pipeline):
    name = "planner"

    def __init__(self) -> None:
        # the planner context (space, predictors, sampler state) is kept per job for the life of the
        # worker process: ``search`` is called once per trial grant
        self._ctxs: dict[str, Any] = {}
        self._calls = 0

    def validate(self, spec: Any) -> None:
        try:
            fields_ = _request_fields()
        except ImportError:  # planner not importable here: its own checks run in the worker
            fields_ = None
        for k in spec.options:
            if k in SPEC_FIELDS:
                raise ConfigError(f"options.{k}", "set by the job spec itself, not under options")
            if fields_ is not None and k not in fields_:
                allowed = [f for f in fields_ if f not in SPEC_FIELDS]
                close = closest_name(k, allowed, cutoff=0.6)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ConfigError(f"options.{k}", f"not a planner option{hint}", allowed)
        if fields_ is not None and spec.finetune.lr is not None and "finetune_lr" not in fields_:
            raise ConfigError("finetune.lr", "the planner does not take a fine-tuning learning rate; leave "
                                             "it out")
        if not spec.model:
            raise ConfigError("model", "required: a search-space name, a timm model name or a supernet path")
        if not spec.device:
            raise ConfigError("device", "required: a hardware profile name, or 'local'")
        if not any(k != "batch" for k in spec.budget):
            raise ConfigError("budget", "give at least one limit",
                              ["latency_ms", "memory_mb", "size_mb", "energy_mj", "max_accuracy_drop"])

    def grant_chunk(self, ctx: StageContext) -> int:
        return 50  # the planner scores trials in batches; one grant = one batch

    def _ctx(self, ctx: StageContext) -> Any:
        from fitplan import planner

        key = f"{ctx.job_id}:{ctx.out_dir}"
        if key not in self._ctxs:
            self._ctxs.clear()  # one job at a time per worker: keep memory bounded
            self._ctxs[key] = planner.prepare(build_request(ctx))
        return self._ctxs[key]

    def prepare(self, ctx: StageContext, storage: Any) -> None:
        from fitplan import planner

        pctx = self._ctx(ctx)
        # create the study now (exclusive stage), so that workers joining the search only load it
        planner.run_search(pctx, storage, ctx.study_name, 0)

    def search(self, ctx: StageContext, storage: Any, n_trials: int) -> None:
        from fitplan import planner

        pctx = self._ctx(ctx)
        # run_search builds a sampler from request.seed on every call; a worker calls it once per grant,
        # so vary the seed per worker and call (else every grant would propose the same points again)
        self._calls += 1
        h = int(hashlib.sha1(f"{ctx.worker_id}:{self._calls}".encode()).hexdigest()[:8], 16)
        seed = (ctx.spec.search.seed * 1_000_003 + h) % 2**31
        search_ctx = dataclasses.replace(pctx, request=dataclasses.replace(pctx.request, seed=seed))
        planner.run_search(search_ctx, storage, ctx.study_name, n_trials)

    def finish(self, ctx: StageContext, study: Any) -> dict[str, Any]:
        from fitplan import planner

        plan = planner.finish(self._ctx(ctx), study)
        plan_path = Path(ctx.out_dir) / "plan.json"
        if not plan_path.exists():
            plan.save(plan_path)
        doc = json.loads(plan.to_json())
        report = doc.get("artifacts", {}).get("report_html") or next(
            (str(p) for p in sorted(Path(ctx.out_dir).glob("*.html"))), None)
        return {"plan": doc, "plan_path": str(plan_path), "report": report}


PIPELINES.register("planner", PlannerPipeline())
