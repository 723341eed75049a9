"""Which fine-tune race decision picks the most accurate network after the full fine-tune?

The planner races a few candidates for ``race_fraction`` of the fine-tune and continues only the winner, so a
plan run never shows what the losers would have reached. This benchmark does: for every race of earlier
``benchmarks/plan_quality.py --part budgets`` runs it rebuilds each raced candidate from the run's supernet,
repeats the race (same steps, batches and seed: the validation cross-entropy matches the plan's record),
keeps the per-image validation cross-entropy, finishes the fine-tune from the race checkpoint exactly as the
planner does, and scores it on the test split. It then prints, per decision rule, the mean test top-1 of the
network each rule would have continued, against "lowest validation cross-entropy":

* ``tolerance T``: :func:`fitplan.planner.race.race_winner` (the slowest candidate within ``T`` paired
  standard errors of the lowest cross-entropy; ``T = 0`` is the lowest cross-entropy itself);
* ``slowest``: always the candidate with the most measured latency;
* ``top-1``: the highest validation top-1 (then cross-entropy);
* ``final K``: a two-round race (not what the planner does): the winner under the planner's default
  ``race_tolerance`` (1, as ``tolerance 1``) and the next lowest race cross-entropies, ``K`` in all, finish the
  fine-tune, and the lowest validation cross-entropy after it wins. Checked because a single race can leave
  networks 3 points of test top-1 apart within its noise; on 35 races of mnist5k-rot runs it gained +0.05 points
  of test top-1 over ``tolerance 1`` (K = 2; better in 2 races, worse in 1; K = 3: +0.09) for ``K - 1`` more
  fine-tunes per plan, so the planner keeps one round;
* ``final all``: every raced candidate finishes the fine-tune and the lowest validation cross-entropy after it
  wins (no race at all: what a full fine-tune of each candidate would choose). On 15 races of three runs with
  band candidates (``/tmp/s19/w0``, ``/tmp/s19/w2``, ``/tmp/s20/w1``; seeds 0, 2, 1) ``final 2``, ``final 3``
  and ``final all`` each lost 0.13 ± 0.07-0.09 points against "lowest cross-entropy" (worse in 2 races),
  ``tolerance 1`` gained +0.07 ± 0.11 (better in 3, worse in 1) and ``best`` +0.47 ± 0.15: a longer race
  does not pick better, the validation split's noise is the limit;
* ``best``: the one that turned out most accurate on test (an upper bound no rule can reach).

    python benchmarks/race_rules.py RUN_DIR [RUN_DIR ...]   # the --out dirs of plan_quality runs

Each run's full fine-tunes (a few minutes) are cached in ``RUN_DIR/race_rules.json``.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TOLERANCES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def replay_run(run: Path, race_fraction: float, finetune_epochs: int) -> dict:
    """``{network_key: {...}}`` for every raced candidate of ``run`` (cached in ``run/race_rules.json``)."""
    cache = run / "race_rules.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if all("final_val_nll" in v for v in cached.values()):  # caches from before the final rule lack it
            return cached
    from fitplan.data import calibration_batches, resize_for_shape
    from fitplan.planner.api import PlanRequest, prepare
    from fitplan.planner.race import race_steps, train_loader
    from fitplan.planner.materialize import build_model, build_teacher
    from fitplan.search_spaces.training import evaluate_metrics, finetune

    meta_file = next((run / "budgets" / "supernet").glob("*.json"))
    source = json.loads(json.loads(meta_file.read_text())["meta"]["source"])
    req = PlanRequest(source["model"], "local", {"latency_ms": 1e9}, source["data"], out_dir=str(run / "budgets"),
                      space_options=source["space_options"], seed=source["seed"], finetune_epochs=finetune_epochs,
                      race_fraction=race_fraction)
    ctx = prepare(req)
    space, supernet, seed = ctx.space, ctx.supernet, req.seed
    raw = calibration_batches(ctx.data, n_batches=4, seed=seed)

    def calib(cfg):
        return [resize_for_shape(b, space.input_shape(cfg)) for b in raw]

    teacher = build_teacher(space, supernet, calib(space.largest()))
    train = train_loader(ctx)
    steps, _ = race_steps(req, len(train))
    val, test = ctx.data.loader("val", batch_size=256), ctx.data.loader("test", batch_size=256)
    out: dict = {}
    for plan_file in sorted(glob.glob(str(run / "budgets" / "f*" / "plan.json"))):
        budget = Path(plan_file).parent.name
        for e in json.loads(Path(plan_file).read_text())["pareto"]:
            m = e["measured"]
            if "race_val_nll" not in m:
                continue
            key = space.network_key(e["config"])
            if key in out:
                out[key]["races"].append(budget)
                continue
            cfg, shape = e["config"], space.input_shape(e["config"])
            model = build_model(space, supernet, cfg, calib(cfg))
            with tempfile.TemporaryDirectory() as ckpt:
                finetune(model, teacher, train, epochs=finetune_epochs, checkpoint_dir=ckpt, seed=seed,
                         max_steps=steps, device="cpu")
                r = evaluate_metrics(model, None, val, input_shape=shape, per_sample=True)
                finetune(model, teacher, train, epochs=finetune_epochs, checkpoint_dir=ckpt, seed=seed, device="cpu")
            final = evaluate_metrics(model, None, val, input_shape=shape, per_sample=True)
            right = evaluate_metrics(model, None, test, input_shape=shape, per_sample=True)["correct_per_sample"]
            out[key] = {"races": [budget], "latency_ms": m["latency_ms"]["value"],
                        "race_val_nll_plan": m["race_val_nll"]["value"], "val_nll": r["nll_per_sample"].tolist(),
                        "val_accuracy": r["accuracy"], "test_right": right.astype(int).tolist(),
                        "final_val_nll": final["nll_per_sample"].tolist(), "final_val_accuracy": final["accuracy"]}
    cache.write_text(json.dumps(out))
    return out


def rules() -> dict:
    from fitplan.planner.api import PlanRequest
    from fitplan.planner.race import race_winner

    def entries(c):
        return [{"measured": {"latency_ms": {"value": v["latency_ms"]},
                              "race_val_nll": {"value": float(np.mean(v["val_nll"]))},
                              "race_val_accuracy": {"value": v["val_accuracy"]}}} for v in c]

    def winner(c, t):  # the planner's decision (race_winner) with tolerance t
        return c[race_winner(entries(c), [np.asarray(v["val_nll"]) for v in c], t)[0]]

    out = {f"tolerance {t:g}": (lambda c, t=t: winner(c, t)) for t in TOLERANCES}
    out["slowest"] = lambda c: max(c, key=lambda v: v["latency_ms"])
    out["top-1"] = lambda c: max(c, key=lambda v: (v["val_accuracy"], -float(np.mean(v["val_nll"]))))

    def final(c, k):  # the planner's race winner and the next lowest race cross-entropies finish; lowest CE wins
        win = winner(c, PlanRequest.race_tolerance)
        rest = sorted((v for v in c if v is not win), key=lambda v: float(np.mean(v["val_nll"])))
        return min([win, *rest][:k], key=lambda v: (float(np.mean(v["final_val_nll"])), -v["final_val_accuracy"],
                                                     v["latency_ms"]))

    for k in (2, 3):
        out[f"final {k}"] = lambda c, k=k: final(c, k)
    out["final all"] = lambda c: final(c, len(c))
    out["best"] = lambda c: max(c, key=lambda v: float(np.mean(v["test_right"])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="plan_quality --out directories (with budgets/f*/plan.json)")
    ap.add_argument("--race-fraction", type=float, default=0.3, help="the runs' race_fraction (default 0.3)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="the runs' finetune_epochs (default 1)")
    args = ap.parse_args(argv)
    races = []  # one list of candidates per race
    for run in args.runs:
        cands = replay_run(Path(run), args.race_fraction, args.finetune_epochs)
        mismatch = [v for v in cands.values() if abs(float(np.mean(v["val_nll"])) - v["race_val_nll_plan"]) > 1e-3]
        if mismatch:
            print(f"warning: {run}: {len(mismatch)} replayed race(s) differ from the plan's record", file=sys.stderr)
        for budget in sorted({b for v in cands.values() for b in v["races"]}):
            c = [v for v in cands.values() if budget in v["races"]]
            if len(c) > 1:
                races.append(c)
    if not races:
        print("no race with two or more candidates in these runs")
        return 1
    picks = {name: [np.asarray(rule(c)["test_right"], float) for c in races] for name, rule in rules().items()}
    ref = picks["tolerance 0"]
    n_test = len(ref[0])
    print(f"{len(races)} races from {len(args.runs)} run(s); test top-1 ({n_test} images) of the network each rule "
          "continues, after the full fine-tune\n")
    print("| rule | mean test top-1 | vs lowest cross-entropy (± paired SE) | races better | races worse |")
    print("|---|---|---|---|---|")
    for name, acc in picks.items():
        d = np.concatenate(acc) - np.concatenate(ref)
        per = [a.mean() - b.mean() for a, b in zip(acc, ref)]
        print(f"| {name} | {np.mean([a.mean() for a in acc]):.4f} | {d.mean() * 100:+.2f} ± "
              f"{d.std(ddof=1) / np.sqrt(len(d)) * 100:.2f} points | {sum(x > 0 for x in per)} | "
              f"{sum(x < 0 for x in per)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
