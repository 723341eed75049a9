"""Calibration kit: measure a device fitplan cannot run on, then import the numbers as a profile.

``write_kit`` exports N subnets of a space to ONNX, with ``manifest.json`` (space spec, archs, input
shapes, batch, sha256 of each model) and ``bench.py`` (a copy of :mod:`fitplan.hw_profiles.bench_script`:
needs only onnxruntime + numpy). Run ``python bench.py --threads T`` on the device; it writes
``results.json``. ``import_results`` checks that file against the manifest (kit id, every model present
once, hashes, finite positive numbers, p10 <= median <= p90, run complete) and only then creates a user
profile whose samples are its calibration dataset; any problem is a :class:`ConfigError` and nothing is
written.

Which architectures (``choose_kit_configs``): for ``fbnet`` / ``ofa_mbv3``, HELP's 10 reference
architectures come first (HELP-style predictors use their latencies as the device embedding), then the
smallest and largest architecture, then architectures spread evenly over log-MACs. With ``n`` = 10 the
kit is exactly HELP's reference set; other spaces start with smallest / largest.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from fitplan.errors import ConfigError
from fitplan.hw_profiles import bench_script
from fitplan.hw_profiles.bench_script import (MANIFEST_FORMAT, MANIFEST_VERSION, RESULTS_FORMAT,
                                              RESULTS_VERSION)
from fitplan.hw_profiles.profile import (KINDS, Capabilities, DatasetRef, HardwareProfile, Provenance, Runtime,
                                         check_profile_name, utc_now)
from fitplan.jsonio import atomic_write_text, check_finite, dumps, load_json

KIT_VARIANTS = ("fp32", "int8")
#: Config keys that are compression, not architecture (stripped from a kit sample's ``arch``).
COMPRESSION_KEYS = ("bits", "sparsity", "sparsity_pattern")


def arch_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture part of a config (compression keys removed): for HELP's spaces exactly the
    ``archs.json`` dict, i.e. what ``CAL.json`` samples hold."""
    return {k: v for k, v in config.items() if k not in COMPRESSION_KEYS}


# --------------------------------------------------------------------------- choosing configs
def _reference_archs(space: Any) -> list[dict[str, Any]]:
    """HELP's reference architectures of ``space`` as configs (empty for other spaces)."""
    from fitplan.hw_profiles.latency_data import SHIPPED_SPACES, load_latency_dataset

    if space.name not in SHIPPED_SPACES:
        return []
    ds = load_latency_dataset(space.name)
    out = []
    for i in ds.reference:
        arch = ds.arch(i)
        conv = getattr(space, "from_arch", None)
        try:
            out.append(space.validate(conv(arch) if callable(conv) else arch))
        except ConfigError:
            return []  # the space does not accept the data's archs: fall back to generic spreading
    return out


def choose_kit_configs(space: Any, n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` distinct uncompressed configs, each with its role (``help_reference:<idx>``, ``smallest``,
    ``largest``, ``spread``)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset
    from fitplan.hw_profiles.measure import config_key

    if n < 1:
        raise ConfigError("n", f"must be >= 1, got {n}")
    refs = _reference_archs(space)
    ref_idx = load_latency_dataset(space.name).reference if refs else ()
    picks: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()

    def add(role: str, cfg: dict[str, Any]) -> None:
        k = config_key(cfg)
        if k not in seen and len(picks) < n:
            seen.add(k)
            picks.append((role, cfg))

    ends = [("smallest", space.smallest()), ("largest", space.largest())]
    if refs and n >= len(refs):
        for i, c in zip(ref_idx, refs):
            add(f"help_reference:{i}", c)
        for role, c in ends:
            add(role, c)
    else:
        for role, c in ends:
            add(role, c)
        for i, c in zip(ref_idx, refs):
            add(f"help_reference:{i}", c)
    rest = n - len(picks)
    if rest > 0:
        rng = np.random.default_rng(seed)
        pool = [space.sample(rng, compression=False) for _ in range(max(20 * rest, 50))]
        macs = np.log([max(space.costs(c)["macs"], 1.0) for c in pool])
        order = np.argsort(macs)
        for q in np.linspace(0, len(pool) - 1, rest + 2)[1:-1]:
            add("spread", pool[int(order[int(round(q))])])
        for j in order:  # duplicates: top up with the remaining pool
            if len(picks) >= n:
                break
            add("spread", pool[int(j)])
    return picks


# --------------------------------------------------------------------------- writing a kit
def write_kit(space: Any, n: int, out_dir: str | Path, *, batch: int = 1, seed: int = 0,
              variants: Sequence[str] = ("fp32",), progress: bool = True) -> Path:
    """Write the kit to ``out_dir`` (created; must be empty or absent). Returns the manifest path.

    ``variants`` may add ``int8`` (static QDQ of the same subnets, calibrated on synthetic inputs: the
    scales do not change which kernels run), so that the device's int8 speed-up is measured too.
    """
    from fitplan.hw_profiles.measure import _calib_array, quantize_int8
    from fitplan.hw_profiles.reference import REFERENCE_ID, REFERENCE_INPUT, build_reference_onnx
    from fitplan.onnx_utils import INPUT_NAME, export_onnx
    from fitplan import __version__

    for v in variants:
        if v not in KIT_VARIANTS:
            raise ConfigError("variants", f"invalid value {v!r}", KIT_VARIANTS)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError("batch", f"must be a positive integer, got {batch!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", f"{out} exists and is not empty; choose a new folder")
    picks = choose_kit_configs(space, n, seed)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    supernet = space.build_supernet().eval()
    models = []
    jobs = [(i, role, cfg, v) for i, (role, cfg) in enumerate(picks) for v in variants]
    for i, role, cfg, variant in tqdm(jobs, desc=f"kit {space.name}", unit="model", disable=not progress):
        shape = list(space.input_shape(cfg))
        mid = f"m{i:03d}" if variant == "fp32" else f"m{i:03d}_{variant}"
        fp32_path = tmp / f"m{i:03d}.onnx"
        if not fp32_path.exists():
            export_onnx(supernet.extract(cfg), shape, fp32_path, batch=batch)
        path = fp32_path
        if variant == "int8":
            x, _ = _calib_array(None, shape)
            path = quantize_int8(fp32_path, tmp / f"{mid}.onnx", x, batch=batch)
        costs = space.costs(cfg)
        models.append({"id": mid, "file": path.name, "sha256": bench_script.sha256_file(str(path)),
                       "arch": arch_of(cfg), "config": cfg, "variant": variant, "role": role, "batch": batch,
                       "input_shape": [batch, *shape], "input_name": INPUT_NAME,
                       "macs": costs["macs"], "params": costs["params"]})
    if "fp32" not in variants:  # only the quantized files were asked for
        for i in range(len(picks)):
            (tmp / f"m{i:03d}.onnx").unlink(missing_ok=True)
    ref_file = build_reference_onnx(tmp / "reference.onnx")
    reference = {"id": REFERENCE_ID, "file": ref_file.name, "sha256": bench_script.sha256_file(str(ref_file)),
                 "input_shape": list(REFERENCE_INPUT)}
    kit_id = hashlib.sha256(json.dumps([(m["id"], m["sha256"]) for m in models]).encode()).hexdigest()[:16]
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "kit_id": kit_id,
                "created": utc_now(), "fitplan_version": __version__, "space": space.spec(), "batch": batch,
                "variants": list(variants), "bench": "bench.py", "reference": reference, "models": models,
                "instructions": "python bench.py --threads 1  (then: fitplan calibrate import results.json "
                                "--name DEVICE)"}
    atomic_write_text(tmp / "manifest.json", dumps(manifest) + "\n")
    (tmp / "manifest.json").chmod(0o644)  # travels to another machine: readable by everyone there
    shutil.copyfile(bench_script.__file__, tmp / "bench.py")
    (tmp / "README.txt").write_text(
        f"fitplan calibration kit {kit_id}: {len(picks)} subnets of {space.name} ({', '.join(variants)}), batch "
        f"{batch}.\n\nOn the device (needs python3, numpy, onnxruntime):\n    python bench.py --threads 1\n"
        "It writes results.json here (resumable if interrupted); each model is timed interleaved with "
        "reference.onnx, which cancels most of a busy device's drift. Then, where fitplan is installed:\n"
        "    fitplan calibrate import results.json --name MY-DEVICE --kind cpu\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out / "manifest.json"


# --------------------------------------------------------------------------- importing results
def _check_number(field: str, v: Any) -> float:
    return check_finite(field, v, positive=True)


def validate_results(results: Any, manifest: Mapping[str, Any], results_path: str = "results.json") -> None:
    """Raise :class:`ConfigError` unless ``results`` is a complete, untampered run of this kit."""
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ConfigError("format", f"{results_path} is not a fitplan calibration results file", [RESULTS_FORMAT])
    if results.get("format_version") != RESULTS_VERSION:
        raise ConfigError("format_version", f"unsupported version {results.get('format_version')!r}",
                          [RESULTS_VERSION])
    if results.get("kit_id") != manifest["kit_id"]:
        raise ConfigError("kit_id", f"{results_path} is for kit {results.get('kit_id')!r}, the manifest is kit "
                                    f"{manifest['kit_id']!r}")
    if results.get("complete") is not True:
        raise ConfigError("complete", f"{results_path} is a partial run (bench.py did not finish); run bench.py "
                                      "again in the kit folder to finish it")
    rows = results.get("results")
    if not isinstance(rows, list):
        raise ConfigError("results", "expected a list of per-model results")
    expected = {m["id"]: m for m in manifest["models"]}
    seen: set[str] = set()
    for i, r in enumerate(rows):
        f = f"results.{i}"
        if not isinstance(r, dict) or r.get("id") not in expected:
            raise ConfigError(f"{f}.id", f"unknown model {r.get('id') if isinstance(r, dict) else r!r}",
                              sorted(expected))
        m = expected[r["id"]]
        if r["id"] in seen:
            raise ConfigError(f"{f}.id", f"model {r['id']!r} appears twice")
        seen.add(r["id"])
        if r.get("sha256") != m["sha256"]:
            raise ConfigError(f"{f}.sha256", f"model {r['id']} was not the kit's file (hash mismatch)")
        if r.get("arch") != m["arch"] or r.get("variant") != m["variant"]:
            raise ConfigError(f"{f}.arch", f"model {r['id']}: arch/variant differ from the manifest")
        med = _check_number(f"{f}.median_ms", r.get("median_ms"))
        p10 = _check_number(f"{f}.p10_ms", r.get("p10_ms"))
        p90 = _check_number(f"{f}.p90_ms", r.get("p90_ms"))
        if not (p10 <= med * (1 + 1e-9) and med <= p90 * (1 + 1e-9)):
            raise ConfigError(f"{f}.median_ms", f"p10 {p10} <= median {med} <= p90 {p90} does not hold")
        cnt = r.get("count")
        if isinstance(cnt, bool) or not isinstance(cnt, int) or cnt < 1:
            raise ConfigError(f"{f}.count", f"must be a positive integer, got {cnt!r}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ConfigError("results", f"{len(missing)} model(s) of the kit have no result: {', '.join(missing[:8])}")
    settings = results.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("threads"), int) or settings["threads"] < 1:
        raise ConfigError("settings.threads", "missing or not a positive integer")


def load_kit_results(results_path: str | Path, manifest_path: str | Path | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load and validate ``results.json`` and its kit manifest (default: ``manifest.json`` beside it)."""
    results_path = Path(results_path)
    results = load_json(results_path, "results")
    mpath = Path(manifest_path) if manifest_path else results_path.parent / "manifest.json"
    if not mpath.is_file():
        raise ConfigError("manifest", f"kit manifest not found at {mpath}; pass --manifest KIT/manifest.json")
    manifest = load_json(mpath, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError("manifest", f"{mpath} is not a fitplan calibration kit manifest", [MANIFEST_FORMAT])
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ConfigError("manifest.format_version", f"unsupported version {manifest.get('format_version')!r}",
                          [MANIFEST_VERSION])
    validate_results(results, manifest, str(results_path))
    return results, manifest


def speedup_verdict(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """``("yes" | "no" | "unknown", why)`` from rows ``{"arch", "variant", "median_ms"}`` holding fp32 and
    int8 results of the same architectures: median fp32/int8 latency ratio >= 1.1 is a speed-up, <= 1.0
    is none, in between is unknown. ``None`` when there are no pairs."""
    by: dict[str, dict[str, float]] = {}
    for r in rows:
        by.setdefault(json.dumps(r["arch"], sort_keys=True), {})[r["variant"]] = r["median_ms"]
    ratios = [v["fp32"] / v["int8"] for v in by.values() if "fp32" in v and "int8" in v]
    if not ratios:
        return None
    s = float(np.median(ratios))
    ans = "yes" if s >= 1.1 else "no" if s <= 1.0 else "unknown"
    return ans, f"median fp32/int8 latency ratio {s:.2f} over {len(ratios)} pairs of the same subnet"


def import_results(results_path: str | Path, name: str, *, kind: str = "cpu", manifest_path: str | Path | None
                   = None, force: bool = False, description: str | None = None,
                   memory_limit_mb: float | None = None) -> HardwareProfile:
    """Validate a kit run and save it as user profile ``name`` (samples stored as its calibration data).

    Nothing is written unless every check passes. ``force`` allows replacing an existing user profile
    or shadowing a built-in one.
    """
    from fitplan.hw_profiles.store import get_profile, is_builtin, list_profiles, profiles_dir, save_profile
    from fitplan.paths import fitplan_home

    check_profile_name(name)
    if kind not in KINDS:
        raise ConfigError("kind", f"invalid value {kind!r}", KINDS)
    if not force and name in list_profiles():
        where = "a built-in profile" if is_builtin(name) else f"a user profile in {profiles_dir()}"
        raise ConfigError("name", f"{name!r} is already {where}; choose another name or pass --force")
    results, manifest = load_kit_results(results_path, manifest_path)
    mach = results.get("machine", {}) if isinstance(results.get("machine"), dict) else {}
    settings = results["settings"]
    where = f"{mach.get('host') or 'device'} ({mach.get('cpu_model', 'unknown CPU')}, " \
            f"{mach.get('logical_cores', '?')} logical cores, onnxruntime {mach.get('onnxruntime', '?')})"
    when = results.get("finished") or results.get("started")
    anchor = results.get("anchor") if settings.get("anchored") else None
    estimator = ("blocks alternating with the kit's reference model until the median latency ratio is stable; "
                 f"reported = ratio x the reference's anchor {anchor['anchor_ms']:.4f} ms ({anchor['method']})"
                 if isinstance(anchor, dict) and "anchor_ms" in anchor else
                 "repeats until the median is stable; median of the timed runs")
    how = (f"fitplan calibration kit {manifest['kit_id']} bench.py: {settings.get('provider')}, "
           f"intra_op_num_threads={settings['threads']}, batch {manifest['batch']}, warm-up then {estimator}")
    space_name = manifest["space"]["space"]
    datasets = []
    for variant in KIT_VARIANTS:
        rows = [r for r in results["results"] if r["variant"] == variant]
        if not rows:
            continue
        samples = [{"arch": r["arch"], "latency_ms": float(r["median_ms"]), "p10_ms": float(r["p10_ms"]),
                    "p90_ms": float(r["p90_ms"]), "count": int(r["count"])} for r in rows]
        datasets.append(DatasetRef(space=space_name, dataset="inline", variant=variant, samples=samples,
                                   provenance=Provenance("measured", f"{len(rows)} {variant} kit subnets measured "
                                                                     f"by bench.py on {where} at {when}",
                                                         where=where, when=when, how=how)))
    caps = Capabilities()
    prov = {
        "kind": Provenance("user", f"kind {kind!r} given to 'fitplan calibrate import'", when=utc_now()),
        "runtime": Provenance("measured", "engine, provider and threads of the bench.py run", where=where,
                              when=when, how=how),
    }
    verdict = speedup_verdict(results["results"])
    if verdict is not None:
        caps.int8_speedup = verdict[0]
        prov["capabilities.int8_speedup"] = Provenance("measured", verdict[1], where=where, when=when, how=how)
    if memory_limit_mb is not None:
        prov["memory_limit_mb"] = Provenance("user", "given to 'fitplan calibrate import'", when=utc_now())
    prof = HardwareProfile(
        name=name, kind=kind, description=description or f"calibrated with the kit on {mach.get('cpu_model', '?')}",
        runtime=Runtime(engine="onnxruntime", provider=settings.get("provider"), threads=settings["threads"],
                        batch=int(manifest["batch"]), local=False),
        capabilities=caps, memory_limit_mb=memory_limit_mb, datasets=datasets, provenance=prov)
    prof.validate()
    keep = fitplan_home() / "calibrations" / name / "results.json"
    save_profile(prof, overwrite=True)
    atomic_write_text(keep, dumps(results) + "\n")
    atomic_write_text(keep.with_name("manifest.json"), dumps(manifest) + "\n")
    prof = get_profile(name)
    return prof


# --------------------------------------------------------------------------- samples for `calibrate fit`
def read_samples(path: str | Path) -> tuple[str | None, list[dict[str, Any]]]:
    """Samples ``[{"arch", "latency_ms"}]`` from a DESIGN.md ``CAL.json``, a kit ``results.json`` or a
    ``fitplan measure`` file (``.jsonl``: one sample per config with an ok attempt, full configs with their
    bits, latency = the geometric mean of its ok attempts' medians,
    :func:`~fitplan.hw_profiles.measure.combined_records`).

    Returns ``(space name if the file says, samples)``; fp32 rows only from a results file.
    """
    if str(path).endswith(".jsonl"):
        return _measured_samples(path)
    doc = load_json(path, "samples")
    space = None
    if isinstance(doc, dict) and doc.get("format") == RESULTS_FORMAT:
        if doc.get("complete") is not True:
            raise ConfigError("complete", f"{path} is a partial bench.py run")
        rows = doc.get("results")
        if not isinstance(rows, list):
            raise ConfigError("results", "expected a list")
        space = doc.get("space", {}).get("space") if isinstance(doc.get("space"), dict) else None
        samples = [{"arch": r.get("arch"), "latency_ms": r.get("median_ms")} for r in rows
                   if isinstance(r, dict) and r.get("variant", "fp32") == "fp32"]
    elif isinstance(doc, dict) and isinstance(doc.get("samples"), list):
        samples = doc["samples"]
        space = doc.get("space") if isinstance(doc.get("space"), str) else None
    else:
        raise ConfigError("samples", f"{path}: expected {{\"samples\": [{{\"arch\": ..., \"latency_ms\": ...}}]}} "
                                     "or a calibration-kit results.json")
    if not samples:
        raise ConfigError("samples", f"{path} holds no samples")
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("arch"), dict):
            raise ConfigError(f"samples.{i}.arch", "expected an architecture dict")
        out.append({"arch": s["arch"], "latency_ms": check_finite(f"samples.{i}.latency_ms", s.get("latency_ms"),
                                                                  positive=True)})
    return space, out


def _measured_samples(path: str | Path) -> tuple[str | None, list[dict[str, Any]]]:
    """:func:`read_samples` of a ``fitplan measure`` JSONL file."""
    from fitplan.hw_profiles.measure import ok_records, read_measurements

    header, records = read_measurements(path)
    if header is None:
        raise ConfigError("samples", f"{path}: no such measurements file, or it is empty")
    spec = header.get("space")
    space = spec.get("space") if isinstance(spec, dict) else spec if isinstance(spec, str) else None
    ok = ok_records(records)
    if not ok:
        raise ConfigError("samples", f"{path} holds no successful measurement ({len(records)} records)")
    return space, [{"arch": r["config"], "latency_ms": check_finite(f"samples.{i}.latency_ms", r.get("median_ms"),
                                                                    positive=True)} for i, r in enumerate(ok)]
