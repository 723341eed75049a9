"""The ``fitplan`` command line.

Each sub-command lives in its own module of this package and exposes ``add_parser(subparsers)``, which
adds its parser and sets ``func`` (called with the parsed args, returns an exit code). Modules import
heavy dependencies (torch, optuna) inside their functions so that ``fitplan --help`` stays fast.

Exit codes: 0 success, 2 bad input (:class:`fitplan.errors.FitplanError`), 1 anything else.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from fitplan.errors import FitplanError

#: Sub-command modules, in ``--help`` order.
COMMAND_MODULES = ["spaces", "profiles", "measure", "calibrate", "predictor", "plan", "jobs"]


def space_from_args(name: str, spec_json: str | None):
    """The search space named on the command line, with ``--spec`` JSON space options (e.g. width_mult)."""
    import json

    from fitplan.errors import ConfigError
    from fitplan.search_spaces import create_space

    try:
        spec = json.loads(spec_json) if spec_json else {}
    except json.JSONDecodeError as e:
        raise ConfigError("spec", f"not valid JSON ({e.msg})") from None
    if not isinstance(spec, dict):
        raise ConfigError("spec", "expected a JSON object of space options")
    return create_space(name, **spec)


def build_parser() -> argparse.ArgumentParser:
    from fitplan import __version__

    parser = argparse.ArgumentParser(
        prog="fitplan",
        description="Fit a network to a device and a budget: joint architecture, bits, sparsity and token "
                    "search guided by meta-learned latency predictors.")
    parser.add_argument("--version", action="version", version=f"fitplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"fitplan.cli.{name}")
        except ModuleNotFoundError as e:  # a command module still being written
            if e.name != f"fitplan.cli.{name}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except FitplanError as e:
        print(f"fitplan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; work done so far is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
