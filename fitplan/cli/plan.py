"""``fitplan plan MODEL --device D --latency-ms X ...``: plan a compressed subnet for a device and a budget.

``--json`` prints the Plan JSON on stdout and nothing else (progress and messages go to stderr);
otherwise a short human-readable summary is printed.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan the best compressed subnet that fits a device and a budget",
                       description="Search architecture, bits, sparsity and tokens jointly for MODEL on a device "
                                   "under a budget; verify, fine-tune, export ONNX and write a report.")
    p.add_argument("model", help="timm model name, registered space name (e.g. ofa_mbv3, fbnet) or a saved "
                                 "supernet directory")
    p.add_argument("--device", default="local", help="hardware profile name, or 'local' (this CPU, measured)")
    p.add_argument("--latency-ms", type=float, help="latency budget per batch (ms)")
    p.add_argument("--memory-mb", type=float, help="peak inference memory budget (MB)")
    p.add_argument("--size-mb", type=float, help="stored model size budget (MB)")
    p.add_argument("--energy-mj", type=float, help="energy per batch budget (mJ; needs profile energy data)")
    p.add_argument("--max-accuracy-drop", type=float, help="allowed predicted accuracy drop (fraction)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size the budget refers to (default 1)")
    p.add_argument("--data", help="dataset name (mnist5k, mnist5k-rot, digits) or ImageFolder path for "
                                  "training/fine-tuning")
    p.add_argument("--trials", type=int, default=2000, help="predictor-guided trials (default 2000)")
    p.add_argument("--sampler", default="nsga2", help="nsga2 (default), tpe, gp, random")
    p.add_argument("--engine", default="auto", help="auto, optuna or evolve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5, help="candidates verified on the real runtime (local)")
    p.add_argument("--uniform-candidates", type=int, default=3,
                   help="uniformly scaled architectures verified beside the searched candidates (default 3; 0 = off)")
    p.add_argument("--band-candidates", type=int, default=2,
                   help="with data: searched networks of the largest capacity using 80-100%% of the budget, "
                        "verified beside the other candidates (default 2; 0 = off)")
    p.add_argument("--no-validate-candidates", dest="validate_candidates", action="store_false",
                   help="rank verified candidates by predicted accuracy only (default: by measured validation top-1)")
    p.add_argument("--race-candidates", type=int, default=5,
                   help="with --data: candidates fine-tuned briefly and compared on validation cross-entropy before "
                        "the full fine-tune (default 5; 0 or 1 = off)")
    p.add_argument("--race-fraction", type=float, default=0.3,
                   help="share of the full fine-tune each raced candidate gets (default 0.3)")
    p.add_argument("--race-tolerance", type=float, default=1.0,
                   help="the race picks the slowest candidate within this many standard errors of the lowest "
                        "validation cross-entropy (default 1.0; 0 = lowest cross-entropy)")
    p.add_argument("--latency-margin", type=float, default=0.05,
                   help="headroom below a latency budget required when measured on the real runtime (default 0.05)")
    p.add_argument("--deliver-attempts", type=int, default=2,
                   help="candidates materialised in one run when a delivered model re-times over the latency budget "
                        "(default 2)")
    p.add_argument("--supernet-epochs", type=int, default=3)
    p.add_argument("--supernet-min-steps", type=int, default=600,
                   help="train the supernet for more epochs on a small dataset until this many optimizer steps "
                        "(default 600; 0 = exactly --supernet-epochs)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--space-option", action="append", default=[], metavar="KEY=JSON",
                   help="space constructor option, e.g. width_mult=0.5 or 'resolutions=[28,32]' (repeatable)")
    p.add_argument("--storage", help="Optuna storage: journal file path or sqlite:///... / postgresql://... URL")
    p.add_argument("--study-name", help="study name (default fitplan-<space>-<device>)")
    p.add_argument("--out", default="fitplan-out", help="output directory (default fitplan-out)")
    p.add_argument("--quick", action="store_true", help="short calibrations and timings (smoke runs)")
    p.add_argument("--json", action="store_true", help="print the Plan JSON on stdout only")
    p.set_defaults(func=run)


def _space_options(items: list[str]) -> dict:
    import json

    from fitplan.errors import ConfigError

    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError("--space-option", f"expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run(args: argparse.Namespace) -> int:
    import contextlib

    from fitplan.planner import plan

    budget = {k: getattr(args, k) for k in ("latency_ms", "memory_mb", "size_mb", "energy_mj", "max_accuracy_drop")
              if getattr(args, k) is not None}
    budget["batch_size"] = args.batch_size
    options = dict(out_dir=args.out, n_trials=args.trials, sampler=args.sampler, engine=args.engine, seed=args.seed,
                   top_k=args.top_k, uniform_candidates=args.uniform_candidates,
                   band_candidates=args.band_candidates,
                   validate_candidates=args.validate_candidates, race_candidates=args.race_candidates,
                   race_fraction=args.race_fraction,
                   race_tolerance=args.race_tolerance, latency_margin=args.latency_margin,
                   deliver_attempts=args.deliver_attempts,
                   supernet_epochs=args.supernet_epochs, supernet_min_steps=args.supernet_min_steps,
                   finetune_epochs=args.finetune_epochs,
                   space_options=_space_options(args.space_option), quick=args.quick)
    # --json: stdout carries the Plan JSON only; anything else printed meanwhile goes to stderr
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        result = plan(args.model, args.device, budget, args.data, storage=args.storage,
                      study_name=args.study_name, **options)
    if args.json:
        print(result.to_json())
    else:
        print(result.summary())
    return 0
