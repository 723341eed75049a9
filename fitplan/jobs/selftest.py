"""The ``selftest`` pipeline: a real, cheap job for checking a storage and a worker fleet end to end.

Search: a two-objective constrained problem (ZDT1 on ``dims`` variables in [0, 1]) whose objectives
are *Gaussian-smoothed* and estimated by Monte Carlo with ``samples`` draws per trial, so a trial costs
real CPU time proportional to ``samples`` (no sleeping). Constraint (``trial.set_constraint``):
``f1 + f2 <= 5``. Finish: takes the feasible Pareto trial nearest the knee and refines it by
``finish_steps`` rounds of coordinate search with ``finish_samples`` draws each, checkpointing after every
round to ``finish_checkpoint.json`` (a worker killed mid-finish is resumed from the last round by the
next one); writes ``plan.json`` (format ``fitplan-selftest-result``) and ``report.html``.

Options (``options:`` in the job spec): ``dims`` (2..30, default 4), ``samples`` (1..10^7, default
20000), ``finish_steps`` (0..1000, default 3), ``finish_samples`` (default 100000).
"""
from __future__ import annotations

import hashlib
import html
import json
import time
from typing import Any

import numpy as np

from fitplan.errors import ConfigError
from fitplan.jobs.stages import PIPELINES, Pipeline, StageContext
from fitplan.jsonio import atomic_write_text, load_versioned, save_versioned

OPTIONS = {"dims": (2, 30, 4), "samples": (1, 10_000_000, 20_000), "finish_steps": (0, 1000, 3),
           "finish_samples": (1, 10_000_000, 100_000)}
SIGMA = 0.02
CONSTRAINT = 5.0


def smoothed_zdt1(x: np.ndarray, samples: int, seed: int) -> tuple[float, float]:
    """Monte-Carlo estimate of ZDT1 smoothed by N(0, SIGMA^2) input noise (clipped to [0, 1])."""
    rng = np.random.default_rng(seed)
    z = np.clip(x[None, :] + rng.normal(0.0, SIGMA, size=(samples, x.size)), 0.0, 1.0)
    f1 = z[:, 0]
    g = 1.0 + 9.0 * z[:, 1:].mean(axis=1)
    f2 = g * (1.0 - np.sqrt(f1 / g))
    return float(f1.mean()), float(f2.mean())


def _seed_of(x: np.ndarray) -> int:
    return int.from_bytes(hashlib.sha1(np.round(x, 12).tobytes()).digest()[:4], "little")


def _sampler(name: str, seed: int) -> Any:
    import optuna

    # Optuna 5 samplers read constraints recorded with trial.set_constraint
    factories = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=20),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    return factories[name]()


class SelftestPipeline(Pipeline):
    name = "selftest"

    def __init__(self) -> None:
        # one sampler per (job, worker) for the life of the process: a worker calls ``search`` once per
        # grant, and a sampler re-seeded on every call would propose the same points again
        self._samplers: dict[tuple[str, str], Any] = {}

    def validate(self, spec: Any) -> None:
        for k, v in spec.options.items():
            if k not in OPTIONS:
                raise ConfigError(f"options.{k}", "unknown option of the selftest pipeline", sorted(OPTIONS))
            lo, hi, _ = OPTIONS[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"options.{k}", f"expected an integer in [{lo}, {hi}], got {v!r}")

    def opt(self, ctx: StageContext, key: str) -> int:
        return int(ctx.spec.options.get(key, OPTIONS[key][2]))

    def prepare(self, ctx: StageContext, storage: Any) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=storage, study_name=ctx.study_name, load_if_exists=True,
                                    directions=["minimize", "minimize"])
        if study.metric_names != ["f1", "f2"]:
            study.set_metric_names(["f1", "f2"])
        if "fitplan" not in study.user_attrs:
            study.set_user_attr("fitplan", {"job_id": ctx.job_id, "pipeline": self.name,
                                            "trials_target": ctx.trials_target})
        dims = self.opt(ctx, "dims")
        if not study.trials:  # seed with the centre point (counts towards the target)
            study.enqueue_trial({f"x{i}": 0.5 for i in range(dims)})
        save_versioned(ctx.out_dir / "prepare.json", "fitplan-selftest-prepare", 1,
                       {"dims": dims, "sigma": SIGMA, "constraint": CONSTRAINT, "study": ctx.study_name})

    def search(self, ctx: StageContext, storage: Any, n_trials: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        load_versioned(ctx.out_dir / "prepare.json", "fitplan-selftest-prepare", (1,))
        dims, samples = self.opt(ctx, "dims"), self.opt(ctx, "samples")
        key = (ctx.job_id, ctx.worker_id)
        if key not in self._samplers:
            # each worker its own seed; the same seed everywhere would propose the same points
            h = int(hashlib.sha1(ctx.worker_id.encode()).hexdigest()[:8], 16)
            self._samplers[key] = _sampler(ctx.spec.search.sampler, (ctx.spec.search.seed * 1_000_003 + h) % 2**31)
        study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=self._samplers[key])

        def objective(trial: optuna.Trial) -> tuple[float, float]:
            x = np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(dims)])
            f1, f2 = smoothed_zdt1(x, samples, _seed_of(x))
            trial.set_constraint("f1_plus_f2", f1 + f2 - CONSTRAINT)
            return f1, f2

        study.optimize(objective, n_trials=n_trials)

    def finish(self, ctx: StageContext, study: Any) -> dict[str, Any]:
        from optuna.trial import TrialState

        dims, fs = self.opt(ctx, "dims"), self.opt(ctx, "finish_samples")
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if all(v <= 0 for v in t.constraints.values())]
        if not trials:
            raise ConfigError("search.trials", "no feasible trial found; raise the trial count")
        front = [t for t in study.best_trials if t in trials] or trials
        ckpt_path = ctx.out_dir / "finish_checkpoint.json"
        resumed_from = 0
        if ckpt_path.exists():
            ck = load_versioned(ckpt_path, "fitplan-selftest-finish", (1,))
            x, best, step, resumed_from = np.array(ck["x"]), tuple(ck["best"]), ck["step"], ck["step"]
        else:
            knee = min(front, key=lambda t: t.values[0] + t.values[1])
            x = np.array([knee.params[f"x{i}"] for i in range(dims)])
            best, step = tuple(knee.values), 0
        steps = self.opt(ctx, "finish_steps")
        delta = 0.05
        while step < steps:
            if ctx.stop.is_set():
                raise RuntimeError("stopped: claim lost or job cancelled")
            cur = smoothed_zdt1(x, fs, _seed_of(x))
            best = cur
            for i in range(dims):  # coordinate search on the scalarised knee objective f1 + f2
                for d in (-delta / (step + 1), delta / (step + 1)):
                    y = x.copy()
                    y[i] = min(1.0, max(0.0, y[i] + d))
                    v = smoothed_zdt1(y, fs, _seed_of(y))
                    if v[0] + v[1] < best[0] + best[1] and v[0] + v[1] <= CONSTRAINT:
                        x, best = y, v
            step += 1
            save_versioned(ckpt_path, "fitplan-selftest-finish", 1,
                           {"x": x.tolist(), "best": list(best), "step": step, "saved_at": time.time()})
        workers = sorted({t.system_attrs.get("fitplan:worker", "?") for t in trials})
        plan = {"pipeline": self.name, "job_id": ctx.job_id, "study": ctx.study_name,
                "config": {f"x{i}": float(v) for i, v in enumerate(x)},
                "metrics": {"f1": best[0], "f2": best[1], "method": f"monte-carlo, {fs} samples"},
                "pareto_front": [{"number": t.number, "values": list(t.values)} for t in front],
                "trials_complete": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                "workers": workers, "finish_steps": steps, "finish_resumed_from_step": resumed_from}
        plan_path = ctx.out_dir / "plan.json"
        save_versioned(plan_path, "fitplan-selftest-result", 1, plan)
        report = ctx.out_dir / "report.html"
        rows = "".join(f"<tr><td>{t['number']}</td><td>{t['values'][0]:.4f}</td><td>{t['values'][1]:.4f}</td></tr>"
                       for t in plan["pareto_front"])
        atomic_write_text(report, f"<html><head><title>fitplan selftest {html.escape(ctx.job_id)}</title></head>"
                                  f"<body><h1>selftest job {html.escape(ctx.job_id)}</h1>"
                                  f"<p>chosen: {html.escape(json.dumps(plan['config']))}; f1={best[0]:.4f} "
                                  f"f2={best[1]:.4f}</p><table><tr><th>trial</th><th>f1</th><th>f2</th></tr>"
                                  f"{rows}</table></body></html>\n")
        return {"plan": plan, "plan_path": str(plan_path), "report": str(report)}


PIPELINES.register("selftest", SelftestPipeline())
