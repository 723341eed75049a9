"""``fitplan predictor``: few-shot latency prediction for a device from a handful of measured archs.

``fitplan predictor predict --space S --calibration CAL.json --archs ARCHS.json --out PRED.json``
(DESIGN.md contract 2): CAL.json ``{"samples": [{"arch": ..., "latency_ms": ...}]}``, ARCHS.json a list of
archs, PRED.json a list of predicted milliseconds in the same order. Bad input exits 2 naming the field.
The predictor is :func:`fitplan.predictors.latency.calibrate_predictor`'s (``--method auto`` by default:
the model chosen per device from the samples, as ``fitplan calibrate fit`` does).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predictor", help="few-shot latency prediction for a new device")
    psub = p.add_subparsers(dest="predictor_command", metavar="ACTION")
    pp = psub.add_parser("predict", help="adapt to CAL.json samples, predict ARCHS.json, write PRED.json")
    pp.add_argument("--space", required=True, help="fbnet or ofa_mbv3")
    pp.add_argument("--calibration", required=True, help='CAL.json: {"samples": [{"arch", "latency_ms"}]}')
    pp.add_argument("--archs", required=True, help="ARCHS.json: a JSON list of archs")
    pp.add_argument("--out", required=True, help="PRED.json: list of predicted ms, same order")
    pp.add_argument("--prior", help="meta-trained prior (.safetensors from LatencyPredictor.save); default: "
                                    "the one shipped with fitplan")
    pp.add_argument("--method", default="auto",
                    help="auto (default): the meta-learned model, the analytic cost model or their average, "
                         "chosen by cross-validated error on the samples; meta / analytic: that model alone")
    pp.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _load(path: str, field: str):
    from fitplan.errors import ConfigError
    from fitplan.jsonio import load_json

    if Path(path).exists() and not Path(path).read_text().strip():
        raise ConfigError(field, f"{path} is empty")
    return load_json(path, field)


def run_predict(args: argparse.Namespace) -> int:
    from fitplan.errors import ConfigError
    from fitplan.jsonio import atomic_write_text
    from fitplan.predictors.features import PREDICTOR_SPACES
    from fitplan.predictors.latency import (CALIBRATION_METHODS, LatencyPredictor, calibrate_predictor,
                                            parse_samples, suspect_note)

    if args.space not in PREDICTOR_SPACES:
        raise ConfigError("--space", f"unsupported space {args.space!r}", PREDICTOR_SPACES)
    if args.method not in CALIBRATION_METHODS:
        raise ConfigError("--method", f"unknown calibration method {args.method!r}", CALIBRATION_METHODS)
    cal = _load(args.calibration, "calibration")
    if not isinstance(cal, dict) or "samples" not in cal:
        raise ConfigError("calibration.samples", 'expected {"samples": [{"arch": ..., "latency_ms": ...}, ...]}')
    archs = _load(args.archs, "archs")
    if not isinstance(archs, list):
        raise ConfigError("archs", f"expected a JSON list of archs, got {type(archs).__name__}")
    base = LatencyPredictor.load(args.prior) if args.prior else LatencyPredictor.for_space(args.space)
    if base.space != args.space:
        raise ConfigError("--prior", f"prior is for space {base.space!r}, not {args.space!r}")
    parse_samples(args.space, cal["samples"])  # the contract's errors: arch format, ms, duplicates, too few
    adapted = calibrate_predictor(args.space, cal["samples"], device=Path(args.calibration).stem,
                                  method=args.method, base=base)
    pred = adapted.predict(archs) if archs else []
    atomic_write_text(args.out, json.dumps([float(v) for v in pred]) + "\n")
    chosen = (adapted.provenance.get("selected_by") or {}).get("chosen", args.method)
    print(f"predicted {len(archs)} archs for {args.space} from {adapted.n_samples} calibration samples "
          f"({chosen} model) -> {args.out} (predicted ms)", file=sys.stderr)
    note = suspect_note(adapted.provenance, cal["samples"])
    if note:
        print(note, file=sys.stderr)
    return 0
