"""``fitplan measure``: measure sampled configs of a space on a local device into a resumable JSONL file.

Example (the shipped local dataset; run on a quiet machine)::

    fitplan measure --space ofa_mbv3 --n 300 --device local-cpu-1t \
        --out fitplan/hw_profiles/data/local_cpu_1t_ofa_mbv3.jsonl --seed 0

Configs are sampled deterministically from ``--seed`` by
:func:`fitplan.hw_profiles.measure.sample_measure_configs` (groups of three: one architecture in fp32 and
all-int8, another with a per-unit mix of ``--bits``; smallest and largest first, then random architectures
and resolutions); re-running the same command after an interruption skips what the file already holds. Measurements that end
unstable are repeated at the end of the run (``--retries``, default 1), and ``--passes K`` measures every
config K times (the later passes after all others; running again with a larger K adds a pass to the file);
the file keeps every attempt and readers use the geometric mean of a config's ok attempts
(:func:`fitplan.hw_profiles.measure.combined_records`: on a shared VM no single attempt is reliably right).

The output file is also a calibration-sample file (``fitplan calibrate fit --samples data.jsonl``).
"""
from __future__ import annotations

import argparse
import json

from fitplan.cli import space_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help="measure configs of a space on this machine (onnxruntime)",
                       description="Measure N sampled configs (or --configs FILE) of a search space on a local, "
                                   "measurable device profile with onnxruntime; results are appended to a JSONL "
                                   "file and an interrupted run resumes where it stopped.")
    p.add_argument("--space", required=True, help="search space name (see 'fitplan spaces')")
    p.add_argument("--spec", default=None, help='space constructor options as JSON, e.g. \'{"width_mult": 1.0}\'')
    p.add_argument("--device", default="local-cpu-1t", help="measurable profile (default local-cpu-1t)")
    p.add_argument("--n", type=int, default=20, help="number of configs to sample (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--bits", default="8,32", help="bit-widths to sample, comma-separated (default 8,32)")
    p.add_argument("--configs", default=None, help="JSON list of configs to measure instead of sampling")
    p.add_argument("--calib-data", default=None,
                   help=".npy array [n, C, H, W] of real inputs for int8 calibration (default: synthetic)")
    p.add_argument("--out", default=None,
                   help="JSONL file (default $FITPLAN_HOME/measurements/<device>_<space>.jsonl)")
    p.add_argument("--max-seconds", type=float, default=None, help="time cap of the timed runs per config (default 8)")
    p.add_argument("--rel-tol", type=float, default=None, help="stop when the median's CI is within this "
                                                              "relative half-width (default 0.01)")
    p.add_argument("--retries", type=int, default=1,
                   help="measure a config whose measurement ended unstable again, at the end of the run, up to "
                        "this many times (default 1; every attempt is kept in the file, readers use the geometric "
                        "mean of the ok ones)")
    p.add_argument("--passes", type=int, default=1,
                   help="measure every config this many times, each further pass after all other configs "
                        "(default 1; 2 halves the noise variance on a shared VM at twice the time)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from fitplan.errors import ConfigError
    from fitplan.hw_profiles import get_profile, measure_configs, sample_measure_configs
    from fitplan.hw_profiles.measure import require_measurable
    from fitplan.jsonio import load_json
    from fitplan.paths import fitplan_home

    space = space_from_args(args.space, args.spec)
    profile = get_profile(args.device)
    require_measurable(profile)
    try:
        bits = [int(b) for b in args.bits.split(",") if b.strip()]
    except ValueError:
        raise ConfigError("bits", f"expected comma-separated integers, got {args.bits!r}", space.bits_choices) from None
    if args.configs:
        configs = load_json(args.configs, "configs")
        if not isinstance(configs, list):
            raise ConfigError("configs", "expected a JSON list of configs")
    else:
        configs = sample_measure_configs(space, args.n, seed=args.seed, bits=bits)
    calib = None
    if args.calib_data:
        if not Path(args.calib_data).is_file():
            raise ConfigError("calib-data", f"file not found: {args.calib_data}")
        calib = np.load(args.calib_data, allow_pickle=False)
    rule = {k: v for k, v in (("max_seconds", args.max_seconds), ("rel_tol", args.rel_tol)) if v is not None}
    out = Path(args.out) if args.out else fitplan_home() / "measurements" / f"{profile.name}_{space.name}.jsonl"
    recs = measure_configs(space, configs, profile, out, calib_inputs=calib, retries=args.retries,
                          passes=args.passes, **rule)
    if args.json:
        print(json.dumps(recs, indent=1))
        return 0
    ok = [r for r in recs if r["status"] == "ok"]
    by_variant: dict[str, list[float]] = {}
    for r in ok:
        by_variant.setdefault(r["variant"], []).append(r["median_ms"])
    print(f"{len(ok)}/{len(recs)} configs measured on {profile.name} -> {out}")
    for v, xs in sorted(by_variant.items()):
        print(f"  {v:<11} n={len(xs):<4} median latency {np.median(xs):.3f} ms (min {min(xs):.3f}, max {max(xs):.3f})")
    for r in recs:
        if r["status"] != "ok":
            print(f"  {r['key']}: {r['status']}: {r.get('reason', '')}")
    return 0
