"""``fitplan spaces``: list registered search spaces and their dimensions."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spaces", help="list search spaces and their dimensions")
    p.add_argument("name", nargs="?", help="show one space only")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fitplan.search_spaces import create_space, list_spaces

    names = [args.name] if args.name else list_spaces()
    spaces = [create_space(n) for n in names]
    if args.json:
        print(json.dumps([s.describe() for s in spaces], indent=1))
        return 0
    for s in spaces:
        doc = (type(s).__doc__ or "").strip().splitlines()[0] if type(s).__doc__ else ""
        print(f"{s.name}: {doc}  [{len(s.units())} compression units]")
        for d in s.dimensions.values():
            key = d.name if d.length is None else f"{d.name}[{d.length}]"
            print(f"  {key:<18} {d.kind:<10} {list(d.choices)}  {d.doc}")
    return 0
