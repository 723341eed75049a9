"""Few-shot latency prediction on this machine's own measured dataset (issue 4 target: Spearman >= 0.95 and
>= 90 % of predictions within ±10 % after 10-20 samples).

The shipped ``local-cpu-1t`` dataset (``fitplan/hw_profiles/data/local_cpu_1t_ofa_mbv3.jsonl``, measured
with ONNX Runtime at 1 thread by ``fitplan measure``) holds ofa_mbv3 configs in fp32, all-int8 and mixed
8/32-bit. For N calibration samples (random draws) the shipped meta-trained prior is adapted
(``LatencyPredictor.adapt``: fp32 samples -> cost table, compressed samples -> per-effect speed-ups) and
scored on every other config of the file, for all configs and per variant. Baseline: least squares of
latency on [1, MACs, MACs x int8 share] fitted on the same N samples.

    python benchmarks/predictor_local.py [--draws 10] [--n 10 20 40]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--profile", default="local-cpu-1t")
    args = ap.parse_args(argv)

    from fitplan.hw_profiles import get_profile
    from fitplan.hw_profiles.datasets import profile_samples
    from fitplan.predictors import LatencyPredictor
    from fitplan.predictors.fewshot import metrics
    from fitplan.search_spaces import create_space

    data = profile_samples(get_profile(args.profile), "ofa_mbv3")
    if data is None or len(data) < max(args.n) + 20:
        print(f"no (or too small) measured ofa_mbv3 dataset for {args.profile}; measure one with "
              "`fitplan measure --space ofa_mbv3 --n 300 --device local-cpu-1t --out "
              "fitplan/hw_profiles/data/local_cpu_1t_ofa_mbv3.jsonl`", file=sys.stderr)
        return 1
    space = create_space("ofa_mbv3")
    configs, y = data.configs, np.asarray(data.latency_ms, dtype=float)
    variant = np.array(["fp32" if all(b == 32 for b in c["bits"]) else
                        "int8" if all(b == 8 for b in c["bits"]) else "mixed" for c in configs])
    macs = np.array([space.costs(c)["macs"] for c in configs]) / 1e6
    share8 = np.array([np.mean([b == 8 for b in c["bits"]]) for c in configs])
    prior = LatencyPredictor.for_space("ofa_mbv3")
    print(f"{args.profile}: {len(y)} measured ofa_mbv3 configs ({', '.join(f'{(variant == v).sum()} {v}' for v in ('fp32', 'int8', 'mixed'))}); "
          f"{data.provenance[:100]}")
    print("calibration draws: a third each of fp32 / int8 / mixed configs; scored on all other configs")
    print(f"{'N':>4} {'model':<10} {'subset':<7} {'Spearman':>9} {'Kendall':>8} {'MAPE %':>7} {'±10 %':>6}")
    rng = np.random.default_rng(0)
    for n in args.n:
        rows: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.draws):
            # calibration set: a third of each variant (the mix `fitplan measure` produces), rest scored
            per = {v: rng.permutation(np.flatnonzero(variant == v)) for v in ("fp32", "int8", "mixed")}
            k = {"int8": n // 3, "mixed": n // 3}
            k["fp32"] = n - k["int8"] - k["mixed"]
            cal = np.concatenate([per[v][:k[v]] for v in per])
            test = np.setdiff1d(np.arange(len(y)), cal)
            adapted = prior.adapt([{"arch": configs[i], "latency_ms": float(y[i])} for i in cal], device=args.profile)
            ours = adapted.predict([configs[i] for i in test])
            feats = np.stack([np.ones(len(y)), macs, macs * share8], axis=1)
            coef, *_ = np.linalg.lstsq(feats[cal], y[cal], rcond=None)
            base = np.maximum(feats[test] @ coef, 1e-3)
            for name, pred in (("fitplan", ours), ("macs-lsq", base)):
                for subset in ("all", "fp32", "int8", "mixed"):
                    m = np.ones(len(test), bool) if subset == "all" else variant[test] == subset
                    if m.sum() >= 5:
                        rows.setdefault((name, subset), []).append(metrics(pred[m], y[test][m]))
        for (name, subset), ms in rows.items():
            avg = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
            print(f"{n:>4} {name:<10} {subset:<7} {avg['spearman']:>9.3f} {avg['kendall']:>8.3f} "
                  f"{avg['mape']:>7.1f} {avg['within10']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
