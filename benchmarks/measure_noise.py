"""Run-to-run noise of fitplan's onnxruntime measurement harness, and its cost per subnet.

For a few subnets of a space (smallest, largest, random), measure each ``--runs`` times from scratch
(extract, export, new session, warm-up, blocks alternating with the reference model until the latency
ratio is stable) with :func:`fitplan.hw_profiles.measure_config`, and print per subnet: the mean reported
latency (ratio x anchor), its coefficient of variation across runs (target <= 3% at 1 thread), the CV of
the raw medians of the same runs (what a plain median harness would have reported), the within-run p10/p90
spread, the number of timed runs and the seconds one full measurement takes. ``--raw`` times without the
reference (plain medians).

    python benchmarks/measure_noise.py --space ofa_mbv3 --subnets 4 --runs 5 --threads 1

Numbers depend on how quiet the machine is: the 1-minute load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="ofa_mbv3")
    ap.add_argument("--spec", default=None, help="space options as JSON")
    ap.add_argument("--subnets", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bits", type=int, default=32, choices=(8, 32), help="measure fp32 or int8 subnets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--raw", action="store_true", help="plain medians (no interleaved reference model)")
    a = ap.parse_args()

    from tqdm.auto import tqdm

    from fitplan.hw_profiles import get_profile, measure_config
    from fitplan.search_spaces import create_space

    space = create_space(a.space, **(json.loads(a.spec) if a.spec else {}))
    profile = get_profile("local-cpu-1t" if a.threads == 1 else "local-cpu")
    rng = np.random.default_rng(a.seed)
    archs = [("smallest", space.smallest()), ("largest", space.largest())]
    archs += [(f"random{i}", space.sample(rng, compression=False)) for i in range(max(a.subnets - 2, 0))]
    archs = archs[:a.subnets]
    units = len(space.units())
    rule = {"max_seconds": a.max_seconds} if a.max_seconds else {}
    supernet = space.build_supernet().eval()
    rows = []
    load0 = os.getloadavg()[0]
    for label, arch in tqdm(archs, desc="subnets"):
        cfg = space.validate({**arch, "bits": [a.bits] * units})
        meds, raws, secs, counts, spreads, stable = [], [], [], [], [], 0
        for _ in range(a.runs):
            t = time.time()
            m = measure_config(space, cfg, profile, threads=a.threads, supernet=supernet, anchored=not a.raw,
                               **rule)
            secs.append(time.time() - t)
            meds.append(m.median_ms)
            raws.append(m.raw_median_ms if m.raw_median_ms is not None else m.median_ms)
            counts.append(m.count)
            spreads.append((m.p90_ms - m.p10_ms) / m.median_ms)
            stable += int(m.stable)
        meds_a, raws_a = np.asarray(meds), np.asarray(raws)
        rows.append({"subnet": label, "r": cfg.get("r"), "variant": m.variant, "mean_median_ms": float(meds_a.mean()),
                     "cv_pct": float(100 * meds_a.std(ddof=1) / meds_a.mean()) if len(meds) > 1 else float("nan"),
                     "raw_cv_pct": float(100 * raws_a.std(ddof=1) / raws_a.mean()) if len(raws) > 1 else float("nan"),
                     "p10_p90_spread_pct": float(100 * np.mean(spreads)), "timed_runs": float(np.mean(counts)),
                     "stable": f"{stable}/{a.runs}", "s_per_subnet": float(np.mean(secs))})
    load1 = os.getloadavg()[0]
    print(f"\nharness noise: space {space.name}, {a.threads} thread(s), {a.runs} runs per subnet, "
          f"load average {load0:.2f} -> {load1:.2f}, {os.cpu_count()} logical cores")
    hdr = (f"{'subnet':<10} {'r':>4} {'variant':<8} {'median ms':>10} {'CV %':>6} {'raw CV %':>9} {'p10-p90 %':>10} {'runs':>6} "
           f"{'stable':>7} {'s/subnet':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['subnet']:<10} {str(r['r']):>4} {r['variant']:<8} {r['mean_median_ms']:>10.3f} {r['cv_pct']:>6.2f} {r['raw_cv_pct']:>9.2f} "
              f"{r['p10_p90_spread_pct']:>10.1f} {r['timed_runs']:>6.0f} {r['stable']:>7} {r['s_per_subnet']:>9.1f}")
    cvs = [r["cv_pct"] for r in rows]
    print(f"max CV {max(cvs):.2f}% (target <= 3%), mean {np.mean(cvs):.2f}%; mean seconds per measured subnet "
          f"{np.mean([r['s_per_subnet'] for r in rows]):.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "load": [load0, load1], "threads": a.threads}, f, indent=1)


if __name__ == "__main__":
    main()
