"""Plan quality: search efficiency (hypervolume, trials/s) and budgets met on this CPU.

Part ``search`` (predictors only, seconds):
  * predicted-front hypervolume of fitplan's searches (vectorised NSGA-II ``evolve``, Optuna NSGA-II
    ask/tell) vs random search and an OFA-style constrained evolutionary search (Cai et al. 2020:
    population 100, top 25 % parents, half mutation (p = 0.1 per gene) / half crossover, maximise accuracy
    s.t. latency <= budget) at equal numbers of predictor evaluations, over seeds. HV is computed on
    (accuracy up, latency down) over all *feasible* evaluated configs, reference point (accuracy of the
    smallest subnet - 0.01, latency budget). Spaces/devices: fbnet on pixel3, ofa_mbv3 on 2080ti_1 (shipped
    HELP data), budget = 60 % of the largest subnet's predicted latency.
  * throughput: predictor evaluations per second of ``evolve`` for 10 000 trials, and of Optuna ask/tell.

Part ``budgets`` (real training + measurement, minutes): the small ofa_mbv3 variant on MNIST-5k (``--data``:
or its rotated variant ``mnist5k-rot``, where top-1 is far from the ~0.97 every subnet reaches on MNIST-5k, so
what a plan's choices cost or buy is not hidden by saturation), supernet trained once; for 5 latency budgets
(fractions of the largest subnet's measured latency) the planner picks, verifies, fine-tunes and exports a
subnet; reported: measured latency of the verified candidate and of the exported, fine-tuned ONNX file <=
budget (x / 5), measured test accuracy, and a *uniform* baseline from the same supernet (all blocks the same
kernel / expand / depth / resolution, every such config measured: the slowest uniform config whose measured
latency is <= the plan's measured latency; if every uniform config is slower than the plan, as an int8 plan
can be, the fastest one, marked ``*``), fine-tuned as the planner fine-tunes the plan (same teacher, epochs,
batch size, seed). The planner itself also verifies the largest uniform configs predicted to fit
(``uniform_candidates``), ranks verified candidates by measured validation top-1 and races the best few in
short fine-tunes (``race_candidates``), so column "plan from" says whether the plan is a searched or a uniform
config. Plan and baseline are scored on the same test images, so their difference is reported with its
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
                                      [--race-tolerance T] [--seed S]
                                      [--supernet-epochs E] [--supernet-min-steps N]
                                      [--data mnist5k|mnist5k-rot] [--finetune-seeds K]
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
    seeds = [0] if quick else [0, 1, 2]
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
        for name in ("evolve (fitplan)", "optuna nsga2 (fitplan)", "random", "ofa-evolution"):
            hvs, secs = [], []
            for seed in seeds:
                t0 = time.perf_counter()
                if name == "evolve (fitplan)":
                    r = evolve(problem, n, seed=seed, population=50, progress=False)
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
def budgets_part(quick: bool, out: Path, supernet_epochs: int = 12, finetune_epochs: int = 1,
                 race: dict | None = None, seed: int = 0, supernet_min_steps: int | None = None,
                 data: str = "mnist5k", finetune_seeds: int = 1) -> dict:
    import copy

    from fitplan.data import calibration_batches, resize_for_shape
    from fitplan.planner.api import PlanRequest, finish, prepare, run_search
    from fitplan.planner.budget import Budget
    from fitplan.planner.materialize import build_model, build_teacher, load_model
    from fitplan.hw_profiles.measure import config_key
    from fitplan.planner.predict import measure_latency
    from fitplan.planner.search import SearchProblem, check_feasible
    from fitplan.search_spaces.training import finetune
    import optuna

    opts = dict(width_mult=0.5, num_classes=10, in_chans=1, resolutions=[24, 28, 32])
    if quick:
        opts.update(width_mult=0.25, resolutions=[16, 20], depth_choices=[2, 3], expand_choices=[3, 4],
                    kernel_choices=[3, 5])
    train = dict(supernet_epochs=1, finetune_epochs=1, max_train_steps=3) if quick else \
        dict(supernet_epochs=supernet_epochs, finetune_epochs=finetune_epochs)
    if supernet_min_steps is not None and not quick:
        train["supernet_min_steps"] = supernet_min_steps
    base = PlanRequest("ofa_mbv3", "local", {"latency_ms": 1e9}, data, out_dir=str(out / "budgets"),
                       space_options=opts, quick=quick, top_k=3, seed=seed, **train, **(race or {}))
    ctx = prepare(base)
    prof, space = ctx.profile, ctx.space
    rule = {"max_seconds": 0.5} if quick else {"max_seconds": 2.0}
    full = measure_latency(space, space.largest(), prof, supernet=ctx.supernet, rule=rule)["value"]
    low = measure_latency(space, space.smallest(), prof, supernet=ctx.supernet, rule=rule)["value"]
    # 5 budgets spread over the measured range [smallest subnet, largest subnet]
    fractions = [0.2, 0.35, 0.5, 0.65, 0.8]
    uniform = space.uniform_configs()
    uni_lat = {}
    for cfg in uniform:
        uni_lat[json.dumps(cfg, sort_keys=True)] = measure_latency(space, cfg, prof, supernet=ctx.supernet,
                                                                   rule=rule)["value"]
    raw_calib = calibration_batches(ctx.data, n_batches=4, seed=seed)  # as the planner's (same request seed)
    teacher = build_teacher(space, ctx.supernet, [resize_for_shape(b, space.input_shape(space.largest()))
                                                  for b in raw_calib])  # eval only: shared by every baseline
    ft_seeds = [seed + i for i in range(max(1, finetune_seeds))]

    def tuned_correct(cfg: dict, ft_seed: int, ckpt: Path) -> np.ndarray:
        """Materialise ``cfg`` from the supernet and fine-tune it as the planner does (same teacher, epochs,
        batch size; loader order and initialisation from ``ft_seed``); per-test-image correctness."""
        shape = space.input_shape(cfg)
        m = build_model(space, ctx.supernet, cfg, [resize_for_shape(b, shape) for b in raw_calib])
        finetune(m, teacher, ctx.data.loader("train", batch_size=base.train_batch_size, seed=ft_seed),
                 epochs=train["finetune_epochs"], checkpoint_dir=ckpt, seed=ft_seed,
                 max_steps=train.get("max_train_steps"), device="cpu")
        return correct_per_image(m, ctx.data.loader("test", batch_size=256), shape)

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
        lat = p.measured["latency_ms"]["value"]
        # uniform baseline: the largest uniform config with measured latency <= the plan's measured latency;
        # when every uniform config is slower than the plan (an int8 plan can be), the fastest one: the plan
        # then dominates it if it is at least as accurate
        timed = [(v, k) for k, v in uni_lat.items() if v is not None]
        cands = [(v, k) for v, k in timed if v <= lat]
        base_row = {}
        if timed:
            v, k = max(cands) if cands else min(timed)
            ucfg = json.loads(k)
            test = ctx.data.loader("test", batch_size=256)
            right_p = correct_per_image(load_model(c.out_dir), test, space.input_shape(p.config))
            same = space.network_key(ucfg) == space.network_key(p.config)
            per_seed_p, per_seed_u = [right_p], [right_p]
            if not same:
                # the plan *is* the uniform network when ``same``: a second fine-tune of it would only
                # measure training noise, so the baseline is the plan's own model (difference exactly 0).
                # Otherwise the baseline is fine-tuned with the plan's seed, and with ``finetune_seeds`` > 1
                # both networks again with further seeds: per image, the share of fine-tunes that get it
                # right, so the paired difference carries less fine-tuning noise
                per_seed_u = [tuned_correct(ucfg, s, c.out_dir / f"uniform_ckpt_{config_key(ucfg)}_s{s}")
                              for s in ft_seeds]
                per_seed_p += [tuned_correct(p.config, s, c.out_dir / f"plan_ckpt_{config_key(p.config)}_s{s}")
                               for s in ft_seeds[1:]]
            right_p = np.mean(per_seed_p, axis=0)
            right_u = np.mean(per_seed_u, axis=0)
            diff = right_p - right_u
            base_row = {"uniform_config": {k2: ucfg[k2][0] if isinstance(ucfg[k2], list) else ucfg[k2]
                                           for k2 in ("ks", "e", "d", "r")},
                        "uniform_latency_ms": v,
                        "uniform_slower": not cands,
                        "same_network": same,
                        "pair": [space.network_key(p.config), space.network_key(ucfg)],
                        "uniform_accuracy": float(right_u.mean()),
                        "finetune_seeds": len(per_seed_u),
                        "plan_accuracy_per_seed": [float(r.mean()) for r in per_seed_p],
                        "uniform_accuracy_per_seed": [float(r.mean()) for r in per_seed_u],
                        "paired_diff": float(diff.mean()),
                        "paired_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                        "plan_accuracy_reloaded": float(per_seed_p[0].mean())}
        exported = p.measured.get("latency_ms_exported", {}).get("value", lat)
        rows.append({"fraction": f, "budget_ms": budget, "measured_ms": lat, "exported_ms": exported,
                     "met": lat <= budget and exported <= budget,
                     "accuracy": p.measured["accuracy"]["value"], "predicted_ms": p.predicted["latency_ms"],
                     "source": next((e.get("source", "search") for e in p.pareto if e.get("chosen")), "search"),
                     **base_row})
    return {"full_ms": full, "smallest_ms": low, "rows": rows, "space": space.spec(), "data": data,
            "test_images": int(ctx.data.info.sizes["test"]),
            "latency_by": ctx.evaluator.predicted_by["latency_ms"], "accuracy_by": ctx.evaluator.predicted_by["accuracy"],
            "notes": ctx.notes}


def print_budgets(res: dict) -> None:
    rows = res["rows"]
    met = sum(1 for r in rows if r.get("met"))
    print(f"\n## Budgets on this CPU (ofa_mbv3 small, {res.get('data', 'mnist5k')}): subnets "
          f"{res['smallest_ms']:.3f} .. "
          f"{res['full_ms']:.3f} ms measured; budget met (measured) {met}/{len(rows)}")
    print(f"latency: {res['latency_by'][:160]}\naccuracy: {res['accuracy_by'][:160]}")
    k = max([r.get("finetune_seeds", 1) for r in rows] or [1])
    print("| budget ms | predicted ms | verified ms | exported ms | met | plan acc | plan from | uniform baseline "
          f"(ks,e,d,r) | uniform ms | uniform acc{f' (mean of {k} fine-tunes)' if k > 1 else ''} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['budget_ms']:.3f} | error: {r['error'][:80]} |")
            continue
        u = r.get("uniform_config")
        print(f"| {r['budget_ms']:.3f} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | {r['exported_ms']:.3f} "
              f"| {'yes' if r['met'] else 'NO'} "
              f"| {r['accuracy']:.4f} | {r.get('source', '-')} | {tuple(u.values()) if u else '-'} | "
              f"{r.get('uniform_latency_ms', float('nan')):.3f}{' *' if r.get('uniform_slower') else ''} | "
              f"{r.get('uniform_accuracy', float('nan')):.4f} |")
    paired = [r for r in rows if "paired_diff" in r]
    if paired:
        n_test = res.get("test_images", 1000)
        per = ", ".join(f"{r['paired_diff']:+.4f} ± {r['paired_se']:.4f}"
                        + (" (same network)" if r.get("same_network") else "") for r in paired)
        seeds = f", mean of {k} fine-tunes per network" if k > 1 else ""
        print(f"plan - uniform accuracy on the same {n_test} test images (± paired SE{seeds}): {per}")
        if any(r.get("uniform_slower") for r in paired):
            print("  * every uniform config measured slower than the plan: compared with the fastest one "
                  "(the plan dominates it where the difference is >= 0)")
        distinct = distinct_pairs(paired)
        print(f"{len(distinct)} distinct (plan, baseline) pairs over {len(paired)} budgets, "
              f"{sum(1 for r in distinct if r.get('same_network'))} of them the same network: "
              f"{pair_stats(distinct)}")


def distinct_pairs(paired: list[dict]) -> list[dict]:
    """One row per distinct (plan, baseline) pair of networks: budgets whose plan and baseline are the same
    two networks are one comparison, not several."""
    return list({tuple(r["pair"]) if "pair" in r else i: r for i, r in enumerate(paired)}.values())


def pair_stats(rows: list[dict]) -> str:
    """Mean plan - uniform difference, how many are ahead / behind by more than one paired SE, and the summed
    difference as a z score (independent comparisons assumed)."""
    d = np.asarray([r["paired_diff"] for r in rows])
    se = np.asarray([r["paired_se"] for r in rows])
    z = float(d.sum() / np.sqrt(np.sum(se ** 2))) if np.any(se > 0) else float("nan")  # se 0: same model
    return (f"mean {d.mean():+.4f}; plan ahead by > 1 SE at {int((d > se).sum())}, behind by > 1 SE at "
            f"{int((d < -se).sum())}, within 1 SE at {int((np.abs(d) <= se).sum())}; summed difference z = {z:+.2f}")


def summarize(paths: list[str]) -> None:
    """Pool the budgets parts of several runs (``results.json`` files): budgets met, and the distinct
    (plan, baseline) pairs of each run. Runs that share a trained supernet and accuracy predictor (a copied
    output directory) differ in measurements, search and fine-tuning only: not independent seeds."""
    met = total = 0
    pooled: list[dict] = []
    print("| run | budgets met | distinct pairs | plan - uniform per pair |\n|---|---|---|---|")
    for path in paths:
        res = json.loads(Path(path).read_text())
        rows = res.get("budgets", res)["rows"]
        paired = distinct_pairs([r for r in rows if "paired_diff" in r])
        pooled += paired
        met += sum(1 for r in rows if r.get("met"))
        total += len(rows)
        print(f"| {path} | {sum(1 for r in rows if r.get('met'))}/{len(rows)} | {len(paired)} | "
              + ", ".join(f"{r['paired_diff']:+.3f}±{r['paired_se']:.3f}" for r in paired) + " |")
    print(f"pooled: budgets met {met}/{total}; {len(pooled)} pairs: {pair_stats(pooled)}")
    for source, what in (("search", "a searched network"), ("uniform", "a uniform config of another shape")):
        rows = [r for r in pooled if r.get("source") == source and not r.get("same_network")]
        if rows:
            print(f"  plan is {what}: {len(rows)} pairs: {pair_stats(rows)}")


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
    ap.add_argument("--finetune-seeds", type=int, default=1,
                    help="budgets part: fine-tune plan and baseline networks with this many seeds and compare the "
                         "per-image share of fine-tunes that are right (the plan's own model is the first)")
    ap.add_argument("--data", default="mnist5k",
                    help="budgets part: dataset (mnist5k; mnist5k-rot, its rotated variant, where accuracy is "
                         "far from saturated and a plan's choices show)")
    ap.add_argument("--seed", type=int, default=0,
                    help="budgets part: PlanRequest.seed (supernet training, data order, search); another seed is "
                         "an independent run")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="RESULTS.json",
                    help="only pool the budgets parts of earlier runs' results.json files")
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.part in ("search", "all"):
        results["search"] = search_part(args.quick, out)
        print_search(results["search"])
    if args.part in ("budgets", "all"):
        race = {k: v for k, v in (("race_candidates", args.race_candidates), ("race_fraction", args.race_fraction),
                                  ("race_tolerance", args.race_tolerance)) if v is not None}
        results["budgets"] = budgets_part(args.quick, out, args.supernet_epochs, args.finetune_epochs, race, args.seed,
                                          args.supernet_min_steps, args.data, args.finetune_seeds)
        print_budgets(results["budgets"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
