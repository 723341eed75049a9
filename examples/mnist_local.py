"""Plan a small OFA-MobileNetV3 for MNIST-5k on this CPU at 50 % of the original model's latency.

1. Build the small ofa_mbv3 variant (width 0.5, 1 input channel, 10 classes, MNIST resolutions).
2. Measure the original (largest) model on this machine (ONNX Runtime, 1 thread): the reference latency.
3. ``fitplan.plan`` with ``latency_ms = 0.5 x reference``: trains the supernet on MNIST-5k (sandwich rule +
   in-place KD), calibrates a local latency model, searches arch + bits jointly, verifies the top
   candidates on the real runtime, fine-tunes the winner with KD and exports ONNX.

    python examples/mnist_local.py            # full run (minutes on 2 cores)
    python examples/mnist_local.py --quick    # smoke run (tests use this; numbers are not meaningful)
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=bool(os.environ.get("FITPLAN_QUICK")))
    ap.add_argument("--out", default="fitplan-out/mnist_local")
    ap.add_argument("--fraction", type=float, default=0.5, help="latency budget as a fraction of the original")
    args = ap.parse_args(argv)

    from fitplan import create_space
    from fitplan.hw_profiles.store import get_profile
    from fitplan.planner import plan
    from fitplan.planner.predict import measure_latency

    space_options = dict(width_mult=0.5, num_classes=10, in_chans=1, resolutions=[24, 28, 32])
    if args.quick:
        space_options.update(resolutions=[24, 32])  # same elastic dims: 50 % must stay reachable
    space = create_space("ofa_mbv3", **space_options)
    profile = get_profile("local-cpu-1t")
    ref = measure_latency(space, space.largest(), profile, supernet=space.build_supernet(), threads=1,
                          rule={"max_seconds": 0.5 if args.quick else 3.0})
    budget_ms = args.fraction * ref["value"]
    print(f"original (largest subnet) latency: {ref['value']:.3f} ms measured ({ref['method'][:80]}...)",
          file=sys.stderr)
    print(f"budget: {budget_ms:.3f} ms ({args.fraction:.0%} of the original)", file=sys.stderr)
    options = dict(n_trials=300, supernet_epochs=1, finetune_epochs=1, max_train_steps=3, top_k=2) if args.quick \
        else dict(n_trials=3000, supernet_epochs=4, finetune_epochs=2, top_k=5)
    p = plan("ofa_mbv3", "local", {"latency_ms": budget_ms}, "mnist5k", out_dir=args.out,
             space_options=space_options, quick=args.quick, **options)
    print(p.summary())
    print(json.dumps({"reference_ms": ref["value"], "budget_ms": budget_ms,
                      "measured_ms": p.measured.get("latency_ms", {}).get("value"),
                      "exported_measured_ms": p.measured.get("latency_ms_exported", {}).get("value"),
                      "accuracy": p.measured.get("accuracy", {}).get("value"),
                      "teacher_accuracy": p.measured.get("teacher_accuracy", {}).get("value")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
