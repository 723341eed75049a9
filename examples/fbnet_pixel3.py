"""Plan in the FBNet space for a Google Pixel 3 (shipped profile: HELP / HW-NAS-Bench measurements).

The Pixel 3 is not attached to this machine, so latency is *predicted* (never measured) from the shipped
profile; its int8 / sparsity speed-ups are unknown, so the planner searches only what it can predict
(architecture, fp32) unless a size budget asks for compression. Without data the supernet is untrained and
accuracy is a proxy (or the accuracy predictor of fitplan.predictors when available).

    python examples/fbnet_pixel3.py [--latency-ms 20] [--size-mb 2] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=bool(os.environ.get("FITPLAN_QUICK")))
    ap.add_argument("--latency-ms", type=float, default=None, help="default: 60 %% of the largest subnet")
    ap.add_argument("--size-mb", type=float, default=None)
    ap.add_argument("--out", default="fitplan-out/fbnet_pixel3")
    args = ap.parse_args(argv)

    from fitplan.planner import plan
    from fitplan.planner.api import PlanRequest, prepare

    budget = {"latency_ms": args.latency_ms or 1e9}
    if args.size_mb:
        budget["size_mb"] = args.size_mb
    if args.latency_ms is None:  # 60 % of the largest subnet's predicted latency on the Pixel 3
        ctx = prepare(PlanRequest("fbnet", "pixel3", budget, out_dir=args.out, quick=args.quick))
        full = ctx.evaluator.evaluate_one(ctx.space.largest())["latency_ms"]
        budget["latency_ms"] = round(0.6 * full, 3)
        print(f"largest subnet on pixel3: {full:.2f} ms predicted; budget {budget['latency_ms']} ms", file=sys.stderr)
    p = plan("fbnet", "pixel3", budget, out_dir=args.out, n_trials=200 if args.quick else 10000,
             quick=args.quick)
    print(p.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
