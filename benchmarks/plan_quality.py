"""Plan quality: search efficiency (hypervolume, trials/s) and budgets met on this CPU.

Part ``search`` (predictors only, seconds):
  * predicted-front hypervolume of fitplan's searches (vectorised NSGA-II ``evolve``, whose first generation
    is spread from the cheapest to the largest config, ``SearchProblem.spread_genotypes``, with its
    uniformly-random-init ablation; Optuna NSGA-II ask/tell) vs random search and an OFA-style constrained
    evolutionary search (Cai et al. 2020: population 100, top 25 % parents, half mutation (p = 0.1 per gene)
    / half crossover, maximise accuracy s.t. latency <= budget) at equal numbers of predictor evaluations,
    over seeds. HV is computed on (accuracy up, latency down) over all *feasible* evaluated configs, reference
    point (accuracy of the smallest subnet - 0.01, latency budget). Spaces/devices: fbnet on pixel3, ofa_mbv3
    on 2080ti_1 (shipped HELP data), budget = 60 % of the largest subnet's predicted latency. On ofa_mbv3
    only ~3 % of random configs fit that budget, so OFA's search spends all 2000 evaluations drawing random
    configs until its first population of 100 feasible ones is full, and its row equals random search.
  * throughput: predictor evaluations per second of ``evolve`` for 10 000 trials, and of Optuna ask/tell.

Part ``budgets`` (real training + measurement, minutes): the small ofa_mbv3 variant on MNIST-5k (``--data``:
or its rotated variant ``mnist5k-rot``, where top-1 is far from the ~0.97 every subnet reaches on MNIST-5k, so
what a plan's choices cost or buy is not hidden by saturation), supernet trained once; for 5 latency budgets
(fractions of the largest subnet's measured latency) the planner picks, verifies, fine-tunes and exports a
subnet; reported: measured latency of the verified candidate and of the exported, fine-tuned ONNX file <=
budget (x / 5), measured test accuracy, and a *uniform* baseline from the same supernet (all blocks the same
kernel / expand / depth / resolution, every such config measured: the slowest uniform config whose latency
is <= the plan's, both timed in one session -- the plan's delivered ONNX file and the uniform configs near its
latency re-timed in shuffled rounds, see ``UniformBaselines``; if every uniform config is slower than the
plan, as an int8 plan can be, the fastest one, marked ``*``; and, second, the slowest uniform config within
the budget less the planner's margin), fine-tuned as the planner fine-tunes the plan (same teacher, epochs,
batch size, seed). ``--repair RUN`` pairs an earlier run's plans again this way without planning again
(runs before session 16 paired the plan's latency measured while planning with the uniform configs'
latencies measured before it, up to an hour apart). The planner itself also verifies the uniform configs
best on validation among those predicted to use most of the budget (``uniform_candidates``) and searched
networks of the largest capacity predicted to use 80-100 % of it (``band_candidates``), ranks verified
candidates by measured validation top-1 and races the best few in short fine-tunes (``race_candidates``), so
column "plan from" says whether the plan is a searched network ("search": the predicted front; "band") or a
uniform config. Plan and baseline are scored on the same test images, so their difference is reported with its
*paired* standard error (per-image correct/incorrect differences), which is smaller than that of two
independent accuracies when the two models get mostly the same images right. When the baseline is the plan's
own network (the planner chose that uniform config), the plan's model is the baseline: a second fine-tune of
one network would only measure training noise. The summary counts each distinct (plan, baseline) pair of
networks once (neighbouring budgets often pick the same plan and baseline).
``--finetune-seeds K`` fine-tunes both networks of each distinct pair K times (seeds S .. S+K-1; the plan's
own model is the first) and compares, per test image, the share of the K fine-tunes that get it right: the
paired difference then measures the networks more than one fine-tune's luck.

    python benchmarks/plan_quality.py [--part search|budgets|all] [--quick] [--out DIR]
                                      [--race-candidates K] [--race-fraction F]
                                      [--race-tolerance T] [--band-candidates K] [--seed S]
                                      [--supernet-epochs E] [--supernet-min-steps N]
                                      [--data mnist5k|mnist5k-rot] [--finetune-seeds K]
    python benchmarks/plan_quality.py --part budgets --repair RUN --out DIR --seed S --data D --finetune-seeds K
    python benchmarks/plan_quality.py --summarize RUN1/results.json RUN2/results.json ...

Accuracy in part ``search`` is whatever :func:`fitplan.planner.predict.resolve_accuracy` gives without data
(the analytic proxy unless fitplan.predictors supplies a predictor): the table says which.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------------------- search part
def ofa_evolution(problem, n_evals: int, seed: int, pop: int = 100, parent_ratio: float = 0.25,
                  mutation_ratio: float = 0.5, p_mut: float = 0.1):
    """OFA's evolutionary search (constrained, single objective) on genotypes; returns (values, cons)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray([len(g.choices) for g in problem.genes])
    vals, cons, evals = [], [], 0

    def score(geno):
        nonlocal evals
        _, v, c = problem.score(problem.decode_genotypes(geno))
        vals.append(v)
        cons.append(c)
        evals += len(geno)
        return v, c

    population = np.zeros((0, len(sizes)), dtype=np.int64)
    pv = np.zeros((0, len(problem.objectives)))
    while len(population) < pop and evals < n_evals:
        g = problem.random_genotypes(pop, rng)
        v, c = score(g)
        ok = (c <= 0).all(axis=1)
        population = np.concatenate([population, g[ok]])[:pop]
        pv = np.concatenate([pv, v[ok]])[:pop]
    n_par = max(2, int(parent_ratio * pop))
    while evals < n_evals and len(population) >= 2:
        order = np.argsort(-pv[:, 0], kind="stable")[:n_par]
        parents, par_v = population[order], pv[order]
        n_mut = int(mutation_ratio * pop)
        k = min(pop - n_par, n_evals - evals)
        idx = rng.integers(len(parents), size=(k, 2))
        child = parents[idx[:, 0]].copy()
        mut_rows = np.arange(k) < n_mut
        mutate = (rng.random(child.shape) < p_mut) & mut_rows[:, None]
        child = np.where(mutate, (rng.random(child.shape) * sizes).astype(np.int64), child)
        cross = (rng.random(child.shape) < 0.5) & ~mut_rows[:, None]
        child = np.where(cross, parents[idx[:, 1]], child)
        v, c = score(child)
        ok = (c <= 0).all(axis=1)
        population = np.concatenate([parents, child[ok]])
        pv = np.concatenate([par_v, v[ok]])
    return np.concatenate(vals), np.concatenate(cons)


def feasible_hv(problem, values, cons, ref) -> float:
    from fitplan.planner.search import hypervolume_2d

    ok = (cons <= 0).all(axis=1)
    pts = np.stack([-values[ok, 0], values[ok, 1]], axis=1)
    return hypervolume_2d(pts, ref)


def search_part(quick: bool, out: Path) -> dict:

    from fitplan.planner.api import PlanRequest, prepare
    from fitplan.planner.budget import Budget
    from fitplan.planner.search import SearchProblem, create_study, evolve, run_optuna

    n = 600 if quick else 2000
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    results = {}
    for space, device in (("fbnet", "pixel3"), ("ofa_mbv3", "2080ti_1")):
        ctx = prepare(PlanRequest(space, device, {"latency_ms": 1e9}, out_dir=str(out / f"search_{space}"),
                                  quick=True))
        full = ctx.evaluator.evaluate_one(ctx.space.largest())
        small = ctx.evaluator.evaluate_one(ctx.space.smallest())
        budget = 0.6 * full["latency_ms"]
        problem = SearchProblem(ctx.space, ctx.evaluator, Budget(latency_ms=budget), ctx.problem.restrict)
        ref = (-(small["accuracy"] - 0.01), budget)
        rows = {}
        methods = ("evolve (fitplan)", "evolve, random init", "optuna nsga2 (fitplan)", "random", "ofa-evolution")
        for name in methods:
            hvs, secs = [], []
            for seed in seeds:
                t0 = time.perf_counter()
                if name.startswith("evolve"):
                    r = evolve(problem, n, seed=seed, population=50, progress=False,
                               spread=name == "evolve (fitplan)")
                    v, c = r.values, r.constraints
                elif name == "optuna nsga2 (fitplan)":
                    st = create_study(None, "b", problem, "nsga2", seed, population_size=50)
                    run_optuna(st, problem, n, batch=50, progress=False)
                    tr = [t for t in st.trials if t.values is not None]
                    v = np.asarray([t.values for t in tr])
                    c = np.asarray([[t.constraints[k] for k in problem.constraint_names] for t in tr])
                elif name == "random":
                    g = problem.random_genotypes(n, np.random.default_rng(seed))
                    _, v, c = problem.score(problem.decode_genotypes(g))
                else:
                    v, c = ofa_evolution(problem, n, seed)
                secs.append(time.perf_counter() - t0)
                hvs.append(feasible_hv(problem, v, c, ref))
            rows[name] = {"hv_mean": float(np.mean(hvs)), "hv_std": float(np.std(hvs)), "seconds": float(np.mean(secs))}
        rnd = rows["random"]["hv_mean"]
        for r in rows.values():
            r["hv_vs_random"] = r["hv_mean"] / rnd if rnd > 0 else float("nan")
        # throughput
        t0 = time.perf_counter()
        r = evolve(problem, 2000 if quick else 10000, seed=0, population=200, progress=False)
        evolve_rate = r.evaluations / (time.perf_counter() - t0)
        st = create_study(None, "tp", problem, "nsga2", 0, population_size=50)
        t0 = time.perf_counter()
        run_optuna(st, problem, 300 if quick else 1000, batch=50, progress=False)
        optuna_rate = (300 if quick else 1000) / (time.perf_counter() - t0)
        results[f"{space}@{device}"] = {
            "budget_ms": budget, "n_evals": n, "seeds": seeds, "rows": rows,
            "accuracy_by": ctx.evaluator.predicted_by["accuracy"][:60],
            "latency_by": ctx.evaluator.predicted_by["latency_ms"][:80],
            "evolve_trials_per_s": evolve_rate, "evolve_trials": r.evaluations,
            "evolve_seconds": r.seconds, "optuna_trials_per_s": optuna_rate}
    return results


def print_search(res: dict) -> None:
    for key, r in res.items():
        print(f"\n## Search quality: {key}, latency budget {r['budget_ms']:.2f} ms (predicted), "
              f"{r['n_evals']} evaluations, seeds {r['seeds']}")
        print(f"accuracy: {r['accuracy_by']}...; latency: {r['latency_by']}...")
        print("| method | HV (mean +- std) | HV / random | seconds |\n|---|---|---|---|")
        for name, row in r["rows"].items():
            print(f"| {name} | {row['hv_mean']:.5g} +- {row['hv_std']:.2g} | {row['hv_vs_random']:.3f} | "
                  f"{row['seconds']:.1f} |")
        print(f"throughput: evolve {r['evolve_trials']} trials in {r['evolve_seconds']:.1f} s = "
              f"{r['evolve_trials_per_s']:.0f} trials/s ({r['evolve_trials_per_s'] * 60:.0f} per minute); "
              f"Optuna ask/tell {r['optuna_trials_per_s']:.0f} trials/s")


# ----------------------------------------------------------------------------------------- budgets part
def up_front_rule(quick: bool) -> dict:
    """Stopping rule of the budgets part's one-off timings (largest / smallest subnet, every uniform config)."""
    return {"max_seconds": 0.5} if quick else {"max_seconds": 2.0}


def short_config(cfg: dict) -> dict:
    """``{ks, e, d, r}`` of a uniform config (each list's one value)."""
    return {k: cfg[k][0] if isinstance(cfg[k], list) else cfg[k] for k in ("ks", "e", "d", "r")}


class UniformBaselines:
    """The uniform baseline of each plan, from the same supernet, fine-tuned as the planner fine-tunes the plan.

    Every uniform config (all blocks the same kernel / expand / depth / resolution) is timed once up front.
    A plan is paired with uniform configs *timed in one session with it*: the plan's delivered ONNX file and
    the uniform configs whose up-front latency lies between ``WINDOW[0]`` x the plan's and ``WINDOW[1]`` x
    the larger of the plan's and the budget are re-timed ``ROUNDS`` times in shuffled order, and the medians
    are compared (:meth:`compare`: the slowest uniform config not slower than the plan, and the slowest one
    within the budget). Why: on a shared VM the ratio to the reference model
    (:mod:`fitplan.hw_profiles.reference`) removes machine-wide drift, but not all of it for every graph;
    seen: the plan's network (depth 4, kernel 5, expand 3) timed 0.395 ms during planning and 0.33 ms an
    hour later, while the uniform config it was paired with timed 0.392 ms both times, so the baseline had
    18 % more latency than the plan. Latencies are compared as ratios in one run
    (:mod:`fitplan.hw_profiles.measure`)."""

    WINDOW = (0.85, 1.2)
    ROUNDS = 3

    def __init__(self, ctx, base, train: dict, seed: int, finetune_seeds: int, quick: bool, work: Path) -> None:
        from fitplan.data import calibration_batches
        from fitplan.planner.materialize import build_teacher
        from fitplan.planner.predict import measure_latency

        self.ctx, self.base, self.train, self.seed = ctx, base, train, seed
        self.space, self.work = ctx.space, work
        self.rule = up_front_rule(quick)
        self.session_rule = {"max_seconds": 0.3, "warmup_s": 0.05, "min_repeats": 10} if quick else \
            {"max_seconds": 1.0}
        self.latency = {}  # up-front latency of every uniform config, by its JSON
        for cfg in self.space.uniform_configs():
            self.latency[json.dumps(cfg, sort_keys=True)] = measure_latency(
                self.space, cfg, ctx.profile, supernet=ctx.supernet, rule=self.rule)["value"]
        self.raw_calib = calibration_batches(ctx.data, n_batches=4, seed=seed)  # as the planner's (same seed)
        self.teacher = build_teacher(self.space, ctx.supernet, self.calib(self.space.largest()))  # eval only
        self.ft_seeds = [seed + i for i in range(max(1, finetune_seeds))]

    def calib(self, cfg: dict) -> list:
        from fitplan.data import resize_for_shape

        return [resize_for_shape(b, self.space.input_shape(cfg)) for b in self.raw_calib]

    def _onnx(self, key: str) -> Path:
        """The uniform config ``key`` exported once (fp32, as the planner measures uncompressed configs)."""
        from fitplan.hw_profiles.measure import config_key
        from fitplan.onnx_utils import export_onnx

        cfg = json.loads(key)
        path = self.work / "uniform_onnx" / f"{config_key(cfg)}.onnx"
        if not path.is_file():
            export_onnx(self.ctx.supernet.extract(cfg).eval(), self.space.input_shape(cfg), path)
        return path

    def _time(self, path: Path, cfg: dict) -> float:
        from fitplan.hw_profiles.measure import measure_onnx

        threads = int(self.ctx.profile.runtime.threads or 1)
        return measure_onnx(path, self.space.input_shape(cfg), threads=threads, **self.session_rule).median_ms

    def retime(self, plan_file: Path, plan_cfg: dict, plan_ms: float, budget: float
               ) -> tuple[float, dict[str, float], str]:
        """``(plan ms, {uniform key: ms}, method)``: the plan's file and the uniform configs near it or up to the
        budget timed in one session (see the class doc); other uniform configs keep their up-front latency."""
        first = self._time(plan_file, plan_cfg)
        lo = self.WINDOW[0] * min(plan_ms, first)
        hi = max(self.WINDOW[1] * max(plan_ms, first), self.WINDOW[1] * budget)
        window = [k for k, v in self.latency.items() if v is not None and lo <= v <= hi]
        paths = {k: self._onnx(k) for k in window}
        times: dict[str, list[float]] = {k: [] for k in ["plan", *window]}
        rng = np.random.default_rng(self.seed)
        for _ in range(self.ROUNDS):
            for k in rng.permutation(list(times)):
                times[k].append(self._time(plan_file, plan_cfg) if k == "plan" else self._time(paths[k], json.loads(k)))
        session = {k: v for k, v in self.latency.items() if v is not None}
        session.update({k: float(np.median(times[k])) for k in window})
        plan_lat = float(np.median(times["plan"]))
        own = self.space.network_key(plan_cfg)
        for k in session:  # the plan's own network (a uniform plan) is the plan's file: one number, not two
            if self.space.network_key(json.loads(k)) == own:
                session[k] = plan_lat
        how = (f"plan file and the {len(window)} uniform configs timed up front within {self.WINDOW[0]:g}x of the "
               f"plan .. {self.WINDOW[1]:g}x of the plan or the budget re-timed {self.ROUNDS}x in shuffled order "
               f"in one session (median; {self.session_rule['max_seconds']:g} s rule each); other uniform "
               "configs: up-front latency; the plan's own network, when uniform, at the plan file's latency")
        return plan_lat, session, how

    def tuned_correct(self, cfg: dict, ft_seed: int, ckpt: Path) -> np.ndarray:
        """Materialise ``cfg`` from the supernet and fine-tune it as the planner does (same teacher, epochs,
        batch size; loader order and initialisation from ``ft_seed``); per-test-image correctness."""
        from fitplan.planner.materialize import build_model
        from fitplan.search_spaces.training import finetune

        m = build_model(self.space, self.ctx.supernet, cfg, self.calib(cfg))
        finetune(m, self.teacher, self.ctx.data.loader("train", batch_size=self.base.train_batch_size, seed=ft_seed),
                 epochs=self.train["finetune_epochs"], checkpoint_dir=ckpt, seed=ft_seed,
                 max_steps=self.train.get("max_train_steps"), device="cpu")
        return correct_per_image(m, self.ctx.data.loader("test", batch_size=256), self.space.input_shape(cfg))

    def compare(self, plan_dir: Path, plan_cfg: dict, plan_ms: float, plan_file: Path, budget: float,
                accept: float) -> dict:
        """The baseline rows of one plan (saved in ``plan_dir``), plan - baseline accuracy per test image
        (``paired_diff`` ± ``paired_se``) against

        * the slowest uniform config whose same-session latency is <= the plan's (if every uniform config is
          slower, as an int8 plan can be, the fastest one, ``uniform_slower``): equal latency;
        * ``budget_*``: the slowest uniform config whose same-session latency is <= ``accept`` (the budget less
          the planner's noise margin, the planner's own acceptance rule), i.e. a uniform config the planner
          could have delivered: did the plan leave a better uniform network inside the budget? When the plan
          is itself a uniform config, the first comparison is usually the plan against itself, so this is the
          informative one."""
        from fitplan.hw_profiles.measure import config_key
        from fitplan.planner.materialize import load_model

        space = self.space
        lat, session, how = self.retime(plan_file, plan_cfg, plan_ms, budget)
        timed = [(v, k) for k, v in session.items()]
        test = self.ctx.data.loader("test", batch_size=256)
        plan_seeds = [correct_per_image(load_model(plan_dir), test, space.input_shape(plan_cfg))]

        def versus(limit: float) -> dict:
            cands = [(v, k) for v, k in timed if v <= limit]
            v, k = max(cands) if cands else min(timed)
            ucfg = json.loads(k)
            same = space.network_key(ucfg) == space.network_key(plan_cfg)
            per_seed_p, per_seed_u = plan_seeds[:1], plan_seeds[:1]
            if not same:
                # the plan *is* the uniform network when ``same``: a second fine-tune of it would only measure
                # training noise, so the baseline is the plan's own model (difference exactly 0). Otherwise the
                # baseline is fine-tuned with the plan's seed, and with ``finetune_seeds`` > 1 both networks
                # again with further seeds: per image, the share of fine-tunes that get it right, so the paired
                # difference carries less fine-tuning noise
                per_seed_u = [self.tuned_correct(ucfg, s, plan_dir / f"uniform_ckpt_{config_key(ucfg)}_s{s}")
                              for s in self.ft_seeds]
                while len(plan_seeds) < len(self.ft_seeds):
                    s = self.ft_seeds[len(plan_seeds)]
                    ckpt = plan_dir / f"plan_ckpt_{config_key(plan_cfg)}_s{s}"
                    plan_seeds.append(self.tuned_correct(plan_cfg, s, ckpt))
                per_seed_p = plan_seeds
            right_p, right_u = np.mean(per_seed_p, axis=0), np.mean(per_seed_u, axis=0)
            diff = right_p - right_u
            return {"uniform_config": short_config(ucfg),
                    "uniform_latency_ms": v,
                    "uniform_latency_up_front_ms": self.latency[k],
                    "uniform_slower": not cands,
                    "same_network": same,
                    "pair": [space.network_key(plan_cfg), space.network_key(ucfg)],
                    "uniform_accuracy": float(right_u.mean()),
                    "finetune_seeds": len(per_seed_u),
                    "plan_accuracy_per_seed": [float(r.mean()) for r in per_seed_p],
                    "uniform_accuracy_per_seed": [float(r.mean()) for r in per_seed_u],
                    "paired_diff": float(diff.mean()),
                    "paired_se": float(diff.std(ddof=1) / np.sqrt(len(diff)))}

        at_budget = {f"budget_{k}": v for k, v in versus(accept).items() if k not in ("plan_accuracy_per_seed",
                                                                                       "finetune_seeds")}
        return {**versus(lat), **at_budget, "plan_latency_paired_ms": lat, "accept_ms": accept, "pairing": how,
                "plan_accuracy_reloaded": float(plan_seeds[0].mean())}

    def latencies(self) -> list[dict]:
        """The up-front latency of every uniform config (for later analysis)."""
        return [{**short_config(json.loads(k)), "ms": v} for k, v in self.latency.items()]


def _space_options(quick: bool) -> dict:
    """The small ofa_mbv3 variant of the budgets part (``quick``: smaller still)."""
    opts = dict(width_mult=0.5, num_classes=10, in_chans=1, resolutions=[24, 28, 32])
    if quick:
        opts.update(width_mult=0.25, resolutions=[16, 20], depth_choices=[2, 3], expand_choices=[3, 4],
                    kernel_choices=[3, 5])
    return opts


def _budgets_setup(quick: bool, out: Path, supernet_epochs: int, finetune_epochs: int, race: dict | None,
                   seed: int, supernet_min_steps: int | None, data: str):
    """The base request (``out/budgets``: supernet, predictors and plans live there) and its prepared context."""
    from fitplan.planner.api import PlanRequest, prepare

    opts = _space_options(quick)
    train = dict(supernet_epochs=1, finetune_epochs=1, max_train_steps=3) if quick else \
        dict(supernet_epochs=supernet_epochs, finetune_epochs=finetune_epochs)
    if supernet_min_steps is not None and not quick:
        train["supernet_min_steps"] = supernet_min_steps
    base = PlanRequest("ofa_mbv3", "local", {"latency_ms": 1e9}, data, out_dir=str(out / "budgets"),
                       space_options=opts, quick=quick, top_k=3, seed=seed, **train, **(race or {}))
    return base, train, prepare(base)


def _delivered_file(plan) -> Path:
    return Path(plan.artifacts.get("model_int8_onnx") or plan.artifacts["model_onnx"])


def budgets_part(quick: bool, out: Path, supernet_epochs: int = 12, finetune_epochs: int = 1,
                 race: dict | None = None, seed: int = 0, supernet_min_steps: int | None = None,
                 data: str = "mnist5k", finetune_seeds: int = 1) -> dict:
    import copy

    from fitplan.planner.api import finish, run_search
    from fitplan.planner.budget import Budget
    from fitplan.planner.predict import measure_latency
    from fitplan.planner.search import SearchProblem, check_feasible
    import optuna

    base, train, ctx = _budgets_setup(quick, out, supernet_epochs, finetune_epochs, race, seed, supernet_min_steps,
                                      data)
    prof, space = ctx.profile, ctx.space
    rule = up_front_rule(quick)
    full = measure_latency(space, space.largest(), prof, supernet=ctx.supernet, rule=rule)["value"]
    low = measure_latency(space, space.smallest(), prof, supernet=ctx.supernet, rule=rule)["value"]
    # 5 budgets spread over the measured range [smallest subnet, largest subnet]
    fractions = [0.2, 0.35, 0.5, 0.65, 0.8]
    baselines = UniformBaselines(ctx, base, train, seed, finetune_seeds, quick, out / "budgets")
    rows = []
    for f in fractions:
        budget = low + f * (full - low)
        c = copy.copy(ctx)
        c.budget = Budget(latency_ms=budget)
        c.problem = SearchProblem(space, ctx.evaluator, c.budget, ctx.problem.restrict)
        try:
            check_feasible(c.problem)
        except Exception as e:  # noqa: BLE001 - report, keep going
            rows.append({"fraction": f, "budget_ms": budget, "error": str(e)})
            continue
        c.out_dir = out / "budgets" / f"f{int(f * 100)}"
        c.out_dir.mkdir(parents=True, exist_ok=True)
        c.notes = list(ctx.notes)
        storage = optuna.storages.InMemoryStorage()
        run_search(c, storage, "b", 300 if quick else 3000)
        try:
            p = finish(c, optuna.load_study(study_name="b", storage=storage))
        except Exception as e:  # noqa: BLE001 - report, keep going
            rows.append({"fraction": f, "budget_ms": budget, "error": str(e)})
            continue
        rows.append(_plan_row(p, f, budget) | baselines.compare(
            c.out_dir, p.config, p.measured["latency_ms"]["value"], _delivered_file(p), budget,
            budget * (1.0 - base.latency_margin)))
    return {"full_ms": full, "smallest_ms": low, "rows": rows, "space": space.spec(), "data": data,
            "test_images": int(ctx.data.info.sizes["test"]),
            "latency_by": ctx.evaluator.predicted_by["latency_ms"], "accuracy_by": ctx.evaluator.predicted_by["accuracy"],
            "notes": ctx.notes, "uniform_latencies": baselines.latencies()}


def _plan_row(p, f: float, budget: float) -> dict:
    lat = p.measured["latency_ms"]["value"]
    exported = p.measured.get("latency_ms_exported", {}).get("value", lat)
    return {"fraction": f, "budget_ms": budget, "measured_ms": lat, "exported_ms": exported,
            "met": lat <= budget and exported <= budget,
            "accuracy": p.measured["accuracy"]["value"], "predicted_ms": p.predicted["latency_ms"],
            "source": next((e.get("source", "search") for e in p.pareto if e.get("chosen")), "search")}


#: row fields of the pairing (:meth:`UniformBaselines.compare`); ``--repair`` keeps the old ones under "previous"
PAIR_FIELDS = ("uniform_config", "uniform_latency_ms", "uniform_slower", "same_network", "pair", "uniform_accuracy",
               "paired_diff", "paired_se")


def repair_part(run: Path, seed: int, data: str, finetune_seeds: int, supernet_epochs: int,
                finetune_epochs: int, supernet_min_steps: int | None) -> dict:
    """Pair the plans of an earlier budgets run (``run/budgets/f*``) with their uniform baselines again, under
    :class:`UniformBaselines`' same-session timing; the plans themselves are not searched or fine-tuned again
    (their saved models and fine-tune checkpoints are reused; baselines fine-tuned earlier resume from their
    checkpoints). The run's own pairing is kept per row under ``previous``."""
    from fitplan.planner.api import load_supernet
    from fitplan.planner.plan import Plan

    old = json.loads((run / "results.json").read_text())["budgets"]
    _, meta = load_supernet(run / "budgets" / "supernet")
    source = json.loads(meta.get("source", "{}"))
    if source.get("seed") != seed or old.get("data") != data or source.get("space_options") != _space_options(False):
        raise SystemExit(f"--repair {run}: its supernet was trained with seed {source.get('seed')} on "
                         f"{old.get('data')} in space {source.get('space_options')}; --repair takes full (not "
                         f"--quick) runs with their --seed / --data (got {seed}, {data})")
    base, train, ctx = _budgets_setup(False, run, supernet_epochs, finetune_epochs, None, seed, supernet_min_steps,
                                      data)
    baselines = UniformBaselines(ctx, base, train, seed, finetune_seeds, False, run / "budgets")
    rows = []
    for r in old["rows"]:
        if "error" in r:
            rows.append(r)
            continue
        d = run / "budgets" / f"f{int(round(r['fraction'] * 100))}"
        p = Plan.load(d)
        kept = {k: v for k, v in r.items() if k not in PAIR_FIELDS and not k.startswith(("plan_accuracy",
                                                                                           "uniform_accuracy"))}
        rows.append(kept | {"previous": {k: r[k] for k in PAIR_FIELDS if k in r}}
                    | baselines.compare(d, p.config, p.measured["latency_ms"]["value"], _delivered_file(p),
                                        r["budget_ms"], r["budget_ms"] * (1.0 - base.latency_margin)))
    return {**{k: v for k, v in old.items() if k != "rows"}, "rows": rows, "repaired_from": str(run),
            "uniform_latencies": baselines.latencies()}


def print_budgets(res: dict) -> None:
    rows = res["rows"]
    met = sum(1 for r in rows if r.get("met"))
    print(f"\n## Budgets on this CPU (ofa_mbv3 small, {res.get('data', 'mnist5k')}): subnets "
          f"{res['smallest_ms']:.3f} .. "
          f"{res['full_ms']:.3f} ms measured; budget met (measured) {met}/{len(rows)}")
    print(f"latency: {res['latency_by'][:160]}\naccuracy: {res['accuracy_by'][:160]}")
    k = max([r.get("finetune_seeds", 1) for r in rows] or [1])
    print("| budget ms | predicted ms | verified ms | exported ms | met | plan acc | plan from | plan ms paired | "
          "uniform baseline (ks,e,d,r) | uniform ms paired | uniform acc | uniform within budget | its ms | its acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        if "error" in r:
            print(f"| {r['budget_ms']:.3f} | error: {r['error'][:80]} |")
            continue
        u, ub = r.get("uniform_config"), r.get("budget_uniform_config")
        print(f"| {r['budget_ms']:.3f} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | {r['exported_ms']:.3f} "
              f"| {'yes' if r['met'] else 'NO'} "
              f"| {r['accuracy']:.4f} | {r.get('source', '-')} | {r.get('plan_latency_paired_ms', nan):.3f} "
              f"| {tuple(u.values()) if u else '-'} | "
              f"{r.get('uniform_latency_ms', nan):.3f}{' *' if r.get('uniform_slower') else ''} | "
              f"{r.get('uniform_accuracy', nan):.4f} | {tuple(ub.values()) if ub else '-'} | "
              f"{r.get('budget_uniform_latency_ms', nan):.3f} | {r.get('budget_uniform_accuracy', nan):.4f} |")
    if k > 1:
        print(f"(uniform acc: mean of {k} fine-tunes per network; plan acc: the plan's own fine-tune)")
    for prefix, what in (("", "at equal latency"), ("budget_", "within the budget")):
        paired = [r for r in rows if f"{prefix}paired_diff" in r]
        if not paired:
            continue
        n_test = res.get("test_images", 1000)
        per = ", ".join(f"{r[prefix + 'paired_diff']:+.4f} ± {r[prefix + 'paired_se']:.4f}"
                        + (" (same network)" if r.get(prefix + "same_network") else "") for r in paired)
        seeds = f", mean of {k} fine-tunes per network" if k > 1 else ""
        print(f"plan - uniform {what}, on the same {n_test} test images (± paired SE{seeds}): {per}")
        if any(r.get(prefix + "uniform_slower") for r in paired):
            print("  * every uniform config measured slower than the plan: compared with the fastest one "
                  "(the plan dominates it where the difference is >= 0)")
        distinct = distinct_pairs(paired, prefix)
        print(f"  {len(distinct)} distinct (plan, baseline) pairs over {len(paired)} budgets, "
              f"{sum(1 for r in distinct if r.get(prefix + 'same_network'))} of them the same network: "
              f"{pair_stats(distinct, prefix)}")


def distinct_pairs(paired: list[dict], prefix: str = "") -> list[dict]:
    """One row per distinct (plan, baseline) pair of networks: budgets whose plan and baseline are the same
    two networks are one comparison, not several. ``prefix`` "budget_": the within-the-budget baseline."""
    return list({tuple(r[prefix + "pair"]) if prefix + "pair" in r else i: r for i, r in enumerate(paired)}.values())


def pair_stats(rows: list[dict], prefix: str = "") -> str:
    """Mean plan - uniform difference, how many are ahead / behind by more than one paired SE, and the summed
    difference as a z score (independent comparisons assumed)."""
    d = np.asarray([r[prefix + "paired_diff"] for r in rows])
    se = np.asarray([r[prefix + "paired_se"] for r in rows])
    z = float(d.sum() / np.sqrt(np.sum(se ** 2))) if np.any(se > 0) else float("nan")  # se 0: same model
    return (f"mean {d.mean():+.4f}; plan ahead by > 1 SE at {int((d > se).sum())}, behind by > 1 SE at "
            f"{int((d < -se).sum())}, within 1 SE at {int((np.abs(d) <= se).sum())}; summed difference z = {z:+.2f}")


def summarize(paths: list[str]) -> None:
    """Pool the budgets parts of several runs (``results.json`` files): budgets met, and the distinct
    (plan, baseline) pairs of each run, at equal latency and (where recorded) within the budget. Runs that
    share a trained supernet and accuracy predictor (a copied output directory) differ in measurements,
    search and fine-tuning only: not independent seeds."""
    met = total = 0
    runs = [(path, json.loads(Path(path).read_text())) for path in paths]
    for path, res in runs:
        rows = res.get("budgets", res)["rows"]
        met += sum(1 for r in rows if r.get("met"))
        total += len(rows)
    print(f"budgets met (measured): {met}/{total}")
    for prefix, what in (("", "at equal latency"), ("budget_", "within the budget")):
        pooled: list[dict] = []
        print(f"\n### plan vs uniform {what}\n| run | budgets met | distinct pairs | plan - uniform per pair |"
              "\n|---|---|---|---|")
        for path, res in runs:
            rows = res.get("budgets", res)["rows"]
            paired = distinct_pairs([r for r in rows if prefix + "paired_diff" in r], prefix)
            pooled += paired
            print(f"| {path} | {sum(1 for r in rows if r.get('met'))}/{len(rows)} | {len(paired)} | "
                  + ", ".join(f"{r[prefix + 'paired_diff']:+.3f}±{r[prefix + 'paired_se']:.3f}" for r in paired)
                  + " |")
        if not pooled:
            continue
        print(f"pooled: {len(pooled)} pairs ({sum(1 for r in pooled if r.get(prefix + 'same_network'))} the same "
              f"network): {pair_stats(pooled, prefix)}")
        for source, kind in (("search", "a searched network"), ("band", "a searched network of the band"),
                             ("uniform", "a uniform config of another shape")):
            sub = [r for r in pooled if r.get("source") == source and not r.get(prefix + "same_network")]
            if sub:
                print(f"  plan is {kind}: {len(sub)} pairs: {pair_stats(sub, prefix)}")


def correct_per_image(model, loader, shape) -> np.ndarray:
    """Boolean per test image (loader order): does ``model`` (inputs resized to ``shape``) get it right."""
    from fitplan.search_spaces.training import evaluate_metrics

    return evaluate_metrics(model, None, loader, input_shape=shape, per_sample=True)["correct_per_sample"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["search", "budgets", "all"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="fitplan-out/bench_plan_quality")
    ap.add_argument("--supernet-epochs", type=int, default=12,
                    help="budgets part: supernet training epochs (default 12 = 660 steps on MNIST-5k)")
    ap.add_argument("--supernet-min-steps", type=int, default=None,
                    help="budgets part: PlanRequest.supernet_min_steps (default: the planner's; 0 with "
                         "--supernet-epochs 4 = the 220-step supernet of the figures before session 13)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="budgets part: fine-tuning epochs per plan")
    ap.add_argument("--race-candidates", type=int, default=None, help="budgets part: PlanRequest.race_candidates")
    ap.add_argument("--race-fraction", type=float, default=None, help="budgets part: PlanRequest.race_fraction")
    ap.add_argument("--race-tolerance", type=float, default=None, help="budgets part: PlanRequest.race_tolerance")
    ap.add_argument("--band-candidates", type=int, default=None, help="budgets part: PlanRequest.band_candidates")
    ap.add_argument("--finetune-seeds", type=int, default=1,
                    help="budgets part: fine-tune plan and baseline networks with this many seeds and compare the "
                         "per-image share of fine-tunes that are right (the plan's own model is the first)")
    ap.add_argument("--data", default="mnist5k",
                    help="budgets part: dataset (mnist5k; mnist5k-rot, its rotated variant, where accuracy is "
                         "far from saturated and a plan's choices show)")
    ap.add_argument("--seed", type=int, default=0,
                    help="budgets part: PlanRequest.seed (supernet training, data order, search); another seed is "
                         "an independent run")
    ap.add_argument("--repair", default=None, metavar="RUN_DIR",
                    help="budgets part: pair the plans of an earlier run (its --out) with their uniform baselines "
                         "again under same-session timing (UniformBaselines); nothing is searched or fine-tuned "
                         "again except new baselines. Pass the run's --seed, --data and --finetune-seeds")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="RESULTS.json",
                    help="only pool the budgets parts of earlier runs' results.json files")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.repair:
        results["budgets"] = repair_part(Path(args.repair), args.seed, args.data, args.finetune_seeds,
                                         args.supernet_epochs, args.finetune_epochs, args.supernet_min_steps)
        print_budgets(results["budgets"])
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"\nresults: {out / 'results.json'}", file=sys.stderr)
        return 0
    if args.part in ("search", "all"):
        results["search"] = search_part(args.quick, out)
        print_search(results["search"])
    if args.part in ("budgets", "all"):
        race = {k: v for k, v in (("race_candidates", args.race_candidates), ("race_fraction", args.race_fraction),
                                  ("race_tolerance", args.race_tolerance), ("band_candidates", args.band_candidates))
                if v is not None}
        results["budgets"] = budgets_part(args.quick, out, args.supernet_epochs, args.finetune_epochs, race, args.seed,
                                          args.supernet_min_steps, args.data, args.finetune_seeds)
        print_budgets(results["budgets"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
