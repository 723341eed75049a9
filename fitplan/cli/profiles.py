"""``fitplan profiles``: list hardware profiles (built-in and user) or show one."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list hardware profiles (devices) or show one",
                       description="List the hardware profiles fitplan knows: devices of the shipped HELP / "
                                   "HW-NAS-Bench latency data, this machine (local-cpu-1t, local-cpu) and user "
                                   "profiles in $FITPLAN_HOME/profiles (e.g. from 'fitplan calibrate import').")
    p.add_argument("name", nargs="?", help="show one profile in full")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fitplan.errors import FitplanError
    from fitplan.hw_profiles import get_profile, list_profiles

    if args.name:
        prof = get_profile(args.name)
        doc = {**prof.to_dict(), "builtin": prof.builtin, "measurable": prof.measurable}
        if args.json:
            print(json.dumps(doc, indent=1))
            return 0
        print(prof.summary())
        for k in ("runtime", "capabilities"):
            print(f"  {k}: " + ", ".join(f"{a}={b}" for a, b in doc[k].items()))
        print(f"  memory_limit_mb: {prof.memory_limit_mb}   energy_available: {prof.energy_available}")
        for d in prof.datasets:
            n = f", {len(d.samples)} samples" if d.samples else ""
            print(f"  dataset: {d.space} {d.variant} <- {d.dataset}{' column ' + d.column if d.column else ''}{n}")
        for k, v in sorted(prof.provenance.items()):
            print(f"  provenance[{k}]: ({v.source}) {v.text}" + (f" [{v.citation}]" if v.citation else ""))
        return 0
    profiles, broken = [], []
    for name in list_profiles():
        try:
            profiles.append(get_profile(name))
        except FitplanError as e:  # one bad user file must not hide the others
            broken.append((name, str(e)))
    for name, err in broken:
        print(f"fitplan profiles: warning: user profile {name!r} is unreadable: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps([{**p.to_dict(), "builtin": p.builtin, "measurable": p.measurable} for p in profiles],
                         indent=1))
        return 0
    for p in profiles:
        print(p.summary())
    return 0
