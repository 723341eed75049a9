"""``fitplan calibrate``: measure devices fitplan cannot run on, and calibrate predictors to a device.

* ``kit``: write ONNX subnets + manifest + standalone ``bench.py`` to carry to the device.
* ``import``: turn the device's ``results.json`` into a user profile (validated; nothing written on error).
* ``fit``: calibrate the latency predictor of a space to a profile from samples (``CAL.json`` or a kit
  ``results.json``) via :func:`fitplan.predictors.calibrate_profile`; the state is stored in the profile.
"""
from __future__ import annotations

import argparse
import json

from fitplan.cli import space_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibration kit for remote devices; calibrate predictors to a device")
    csub = p.add_subparsers(dest="calibrate_command", metavar="ACTION")

    k = csub.add_parser("kit", help="write ONNX models + manifest + bench.py for a device")
    k.add_argument("--space", required=True, help="search space name")
    k.add_argument("--spec", default=None, help="space constructor options as JSON")
    k.add_argument("--n", type=int, default=12,
                   help="number of subnets (default 12: HELP's 10 reference archs + smallest + largest)")
    k.add_argument("-o", "--out", required=True, help="output folder (new or empty)")
    k.add_argument("--batch", type=int, default=1, help="batch size of the exported models (default 1)")
    k.add_argument("--int8", action="store_true", help="also export int8 QDQ versions (measures int8 speed-up)")
    k.add_argument("--seed", type=int, default=0)
    k.set_defaults(func=run_kit)

    i = csub.add_parser("import", help="create a profile from a kit's results.json")
    i.add_argument("results", help="results.json written by the kit's bench.py")
    i.add_argument("--name", required=True, help="new profile name")
    i.add_argument("--kind", default="cpu", help="device kind (default cpu)")
    i.add_argument("--manifest", default=None, help="kit manifest (default: manifest.json beside results)")
    i.add_argument("--memory-mb", type=float, default=None, help="memory limit of the device, MB")
    i.add_argument("--description", default=None)
    i.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    i.set_defaults(func=run_import)

    f = csub.add_parser("fit", help="calibrate a space's latency predictor to a profile")
    f.add_argument("--profile", required=True, help="profile name")
    f.add_argument("--samples", required=True, help='CAL.json ({"samples": [{"arch", "latency_ms"}]}), a `fitplan '
                                                   "measure` .jsonl file or a "
                                                   "kit results.json")
    f.add_argument("--space", default=None, help="search space (default: from the samples file)")
    f.set_defaults(func=run_fit)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def run_kit(args: argparse.Namespace) -> int:
    from fitplan.hw_profiles.kit import write_kit

    space = space_from_args(args.space, args.spec)
    variants = ("fp32", "int8") if args.int8 else ("fp32",)
    manifest = write_kit(space, args.n, args.out, batch=args.batch, seed=args.seed, variants=variants)
    doc = json.loads(manifest.read_text())
    print(f"wrote {len(doc['models'])} models + manifest.json + bench.py to {manifest.parent} (kit {doc['kit_id']})")
    print(f"on the device:  python bench.py --threads 1\nthen here:      fitplan calibrate import "
          f"{manifest.parent / 'results.json'} --name MY-DEVICE --kind cpu")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from fitplan.hw_profiles.kit import import_results
    from fitplan.hw_profiles.store import user_profile_path

    prof = import_results(args.results, args.name, kind=args.kind, manifest_path=args.manifest, force=args.force,
                          description=args.description, memory_limit_mb=args.memory_mb)
    n = sum(len(d.samples or []) for d in prof.datasets)
    print(f"created profile {prof.name!r} ({prof.kind}) with {n} measured samples -> {user_profile_path(prof.name)}")
    print(f"next: fitplan calibrate fit --profile {prof.name} --samples {args.results}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    import sys

    from fitplan.errors import ConfigError
    from fitplan.hw_profiles import get_profile, save_profile
    from fitplan.hw_profiles.kit import read_samples
    from fitplan.hw_profiles.profile import Provenance, utc_now

    from fitplan.predictors.latency import suspect_note

    try:
        from fitplan.predictors import calibrate_profile
    except ImportError:
        print("fitplan calibrate fit: error: fitplan.predictors.calibrate_profile is not available in this "
              "installation (the predictors module is missing or incomplete); nothing was changed",
              file=sys.stderr)
        return 2
    profile = get_profile(args.profile)
    file_space, samples = read_samples(args.samples)
    space = args.space or file_space
    if not space:
        raise ConfigError("space", f"{args.samples} does not name its space; pass --space")
    if file_space and args.space and file_space != args.space:
        raise ConfigError("space", f"{args.samples} holds samples of {file_space!r}, not {args.space!r}")
    state = calibrate_profile(profile, samples, space)
    if not isinstance(state, dict):
        raise TypeError(f"calibrate_profile returned {type(state).__name__}, expected a dict")
    prof = profile.copy()
    prof.predictors[space] = state
    prof.provenance[f"predictors.{space}"] = Provenance(
        "measured", f"latency predictor calibrated on {len(samples)} measured samples from {args.samples}",
        when=utc_now(), how="fitplan.predictors.calibrate_profile")
    path = save_profile(prof)
    prov = state.get("provenance") or {}
    sel = prov.get("selected_by") or prov.get("prior_selected_by") or {}
    how = ""
    if sel.get("chosen"):
        cv = ", ".join(f"{k} {v:.1f} %" for k, v in (sel.get("cv_mean_ape_pct") or {}).items() if v is not None)
        how = f" (chosen: {sel['chosen']}" + (f"; leave-one-out mean error {cv}" if cv else "") + ")"
    if prov.get("analytic_prior") not in (None, "tuned"):
        # the samples' evidence asked for a prior unlike every source device (meta module docstring)
        how += f" (meta-model prior: {prov['analytic_prior']}, a device unlike every source)"
    print(f"calibrated {space} predictor for {prof.name!r} on {len(samples)} samples{how} -> {path}")
    note = suspect_note(prov, samples)
    if note:
        print(note, file=sys.stderr)
    return 0
