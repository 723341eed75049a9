#!/usr/bin/env python3
"""fitplan calibration-kit benchmark: time the kit's ONNX models on this device.

Needs only ``onnxruntime`` and ``numpy`` (no fitplan, no torch). Usage, in the kit folder::

    python bench.py --threads 1            # writes results.json next to manifest.json
    python bench.py --threads 4 --provider CPUExecutionProvider --out results-4t.json

For every model listed in ``manifest.json`` it checks the file's sha256, builds an ONNX Runtime session
with pinned thread counts, runs warm-up inferences, then times it in blocks alternating with the kit's
reference model (``reference.onnx``) until the median per-block latency ratio is stable (95%
distribution-free confidence interval within ``--rel-tol`` of it) or a time cap is reached, and records
``ratio x anchor`` as the median (the anchor is the reference's own latency, measured once at the start,
spread over a few seconds), the raw median, p10, p90 and the count. Interleaving cancels most of the drift
of a busy or thermally throttled device; ``--no-reference`` records plain medians instead. ``results.json`` is rewritten (atomically) after every
model with ``"complete": false`` until the last one, and an interrupted run resumes where it stopped, so
no finished measurement is lost. Bring ``results.json`` back and run
``fitplan calibrate import results.json --name <device>``.

Inside fitplan this file is also :mod:`fitplan.hw_profiles.bench_script`: ``fitplan measure`` uses the
same timing loop (:func:`time_callable`), so kit numbers and local numbers mean the same thing.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

RESULTS_FORMAT = "fitplan-calibration-results"
RESULTS_VERSION = 1
MANIFEST_FORMAT = "fitplan-calibration-kit"
MANIFEST_VERSION = 1

#: Default stopping rule: shared by ``bench.py`` and ``fitplan measure``.
DEFAULTS: dict[str, float] = {
    "warmup_s": 0.3,         # at least this long of warm-up ...
    "min_warmup": 5,         # ... and at least this many warm-up runs
    "min_repeats": 20,       # never stop before this many timed runs
    "max_repeats": 2000,     # never time more than this many runs
    "max_seconds": 8.0,      # time cap for the timed runs of one model
    "rel_tol": 0.01,         # stop once the 95% CI half-width of the median is <= 1% of it
}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def median_ci(sorted_x: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median from order statistics."""
    n = len(sorted_x)
    half = z * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 0)
    hi = min(int(math.ceil(n / 2.0 + half)), n - 1)
    return float(sorted_x[lo]), float(sorted_x[hi])


def median_rel_ci(sorted_x: np.ndarray) -> float:
    """Half-width of :func:`median_ci` relative to the median (``inf`` for a zero median)."""
    med = float(np.median(sorted_x))
    lo, hi = median_ci(sorted_x)
    return float((hi - lo) / (2.0 * med)) if med > 0 else float("inf")


def summarize(times_s: list[float]) -> dict[str, Any]:
    """Median / p10 / p90 (ms), count and the relative CI half-width of the median."""
    x = np.sort(np.asarray(times_s, dtype=np.float64)) * 1e3
    return {"median_ms": float(np.median(x)), "p10_ms": float(np.percentile(x, 10)),
            "p90_ms": float(np.percentile(x, 90)), "min_ms": float(x[0]), "count": int(len(x)),
            "rel_ci": median_rel_ci(x)}


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _warm_up(fns: list[Callable[[], Any]], warmup_s: float, min_warmup: int) -> int:
    """Run every ``fn`` in turn for at least ``warmup_s`` and ``min_warmup`` rounds; returns the rounds."""
    t0 = time.perf_counter()
    n = 0
    while n < min_warmup or time.perf_counter() - t0 < warmup_s:
        for fn in fns:
            fn()
        n += 1
    return n


def time_callable(fn: Callable[[], Any], *, warmup_s: float = DEFAULTS["warmup_s"],
                  min_warmup: int = int(DEFAULTS["min_warmup"]), min_repeats: int = int(DEFAULTS["min_repeats"]),
                  max_repeats: int = int(DEFAULTS["max_repeats"]), max_seconds: float = DEFAULTS["max_seconds"],
                  rel_tol: float = DEFAULTS["rel_tol"]) -> dict[str, Any]:
    """Time ``fn()``: warm up, then repeat until the median is stable.

    Stops when at least ``min_repeats`` runs are done and the ~95% CI half-width of the median is at most
    ``rel_tol`` of the median, or at ``max_repeats`` runs, or after ``max_seconds`` of timed runs
    (then ``stable`` is false). Returns :func:`summarize` plus ``stable``, ``warmup`` and the stopping rule.
    """
    nw = _warm_up([fn], warmup_s, min_warmup)
    times: list[float] = []
    start = time.perf_counter()
    stable = False
    while len(times) < max_repeats:
        times.append(_timed(fn))
        if len(times) >= min_repeats and len(times) % 5 == 0:
            if summarize(times)["rel_ci"] <= rel_tol:
                stable = True
                break
        if time.perf_counter() - start > max_seconds and len(times) >= min(min_repeats, 3):
            break
    out = summarize(times)
    out["stable"] = bool(stable or out["rel_ci"] <= rel_tol)
    out["warmup"] = nw
    out["rule"] = {"warmup_s": warmup_s, "min_warmup": min_warmup, "min_repeats": min_repeats,
                   "max_repeats": max_repeats, "max_seconds": max_seconds, "rel_tol": rel_tol}
    return out


def time_paired(fn: Callable[[], Any], ref_fn: Callable[[], Any], *, warmup_s: float = DEFAULTS["warmup_s"],
                min_warmup: int = int(DEFAULTS["min_warmup"]), min_repeats: int = int(DEFAULTS["min_repeats"]),
                max_repeats: int = int(DEFAULTS["max_repeats"]), max_seconds: float = DEFAULTS["max_seconds"],
                rel_tol: float = DEFAULTS["rel_tol"], block_s: float = 0.05, min_blocks: int = 10,
                quiet_tol: float | None = 0.10) -> dict[str, Any]:
    """Time ``fn()`` interleaved with a reference ``ref_fn()``; the stable number is their ratio.

    Blocks alternate: at least 3 runs (and ``block_s``) of ``fn``, then runs of ``ref_fn`` for the same
    wall time. Machine-wide slow-downs (co-tenants, frequency changes) hit both halves of a block alike, so
    the median over blocks of ``median(fn) / median(ref)`` is far steadier than either median alone.

    Quiet blocks only (``quiet_tol``): on a shared VM the machine switches for seconds at a time into a
    slow state that does *not* slow every kernel alike (int8 QDQ convolutions ~1.5x, fp32 ~1.3x on the
    development VM), so a ratio from those blocks is biased. A block counts as quiet when its reference
    median is within ``1 + quiet_tol`` of the 10th percentile of all reference block medians of this
    measurement; the ratio is the median over quiet blocks (over all blocks when fewer than 3 are quiet,
    or with ``quiet_tol=None``).

    Stops when at least ``min_blocks`` (quiet) blocks and ``min_repeats`` runs of ``fn`` are done and the
    ~95% CI half-width of the median ratio is at most ``rel_tol`` of it, or at ``max_repeats`` runs of
    ``fn`` or ``max_seconds`` (then ``stable`` is false). Returns :func:`summarize` of ``fn``'s times plus
    ``ratio``, ``ratio_rel_ci``, ``blocks``, ``quiet_blocks``, ``ref_median_ms`` and ``ref_count``.
    """
    nw = _warm_up([fn, ref_fn], warmup_s, min_warmup)
    times: list[float] = []
    ref_times: list[float] = []
    ratios: list[float] = []
    ref_blocks: list[float] = []

    def used() -> np.ndarray:
        r = np.asarray(ratios)
        if quiet_tol is None or len(r) < 3:
            return r
        rb = np.asarray(ref_blocks)
        keep = rb <= np.percentile(rb, 10) * (1.0 + quiet_tol)
        return r[keep] if keep.sum() >= 3 else r

    stable = False
    start = time.perf_counter()
    while len(times) < max_repeats:
        a: list[float] = []
        tb = time.perf_counter()
        while (len(a) < 3 or time.perf_counter() - tb < block_s) and len(times) + len(a) < max_repeats:
            a.append(_timed(fn))
        b: list[float] = []
        while not b or sum(b) < sum(a):
            b.append(_timed(ref_fn))
        times += a
        ref_times += b
        ratios.append(float(np.median(a) / np.median(b)))
        ref_blocks.append(float(np.median(b)))
        if len(ratios) >= min_blocks and len(times) >= min_repeats and len(sel := used()) >= min_blocks \
                and median_rel_ci(np.sort(sel)) <= rel_tol:
            stable = True
            break
        if time.perf_counter() - start > max_seconds and len(ratios) >= 3:
            break
    out = summarize(times)
    r = np.sort(used())
    out.update({"ratio": float(np.median(r)), "ratio_rel_ci": median_rel_ci(r), "blocks": len(ratios),
                "quiet_blocks": len(r),
                "ref_median_ms": float(np.median(ref_times) * 1e3), "ref_count": len(ref_times),
                "stable": bool(stable), "warmup": nw,
                "rule": {"warmup_s": warmup_s, "min_warmup": min_warmup, "min_repeats": min_repeats,
                         "max_repeats": max_repeats, "max_seconds": max_seconds, "rel_tol": rel_tol,
                         "block_s": block_s, "min_blocks": min_blocks, "quiet_tol": quiet_tol}})
    return out


def measure_anchor(ref_path: str, input_shape: list[int], threads: int, provider: str = "CPUExecutionProvider",
                   windows: int = 12, window_s: float = 0.15, gap_s: float = 0.05) -> dict[str, Any]:
    """The reference model's latency on this machine when it is quiet: the lower quartile of ``windows``
    window medians spread over a few seconds (a slow-down in some windows does not move it)."""
    sess = make_session(ref_path, threads, provider)
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    run = lambda: sess.run(None, feed)  # noqa: E731
    _warm_up([run], 0.3, 1)
    meds = []
    for _ in range(windows):
        ts: list[float] = []
        tw = time.perf_counter()
        while len(ts) < 5 or time.perf_counter() - tw < window_s:
            ts.append(_timed(run))
        meds.append(float(np.median(ts) * 1e3))
        time.sleep(gap_s)
    return {"anchor_ms": float(np.percentile(meds, 25)), "window_medians_ms": [round(m, 5) for m in meds],
            "threads": int(threads), "provider": provider, "measured_at": utc_now(),
            "method": f"lower quartile of {windows} window medians ({window_s:g} s windows, {gap_s:g} s apart)"}


def anchored(stats: dict[str, Any], anchor_ms: float) -> dict[str, Any]:
    """Rescale paired timing ``stats`` to ``ratio x anchor_ms``; raw numbers kept as ``raw_*``."""
    out = dict(stats)
    value = stats["ratio"] * anchor_ms
    scale = value / stats["median_ms"]
    for k in ("median_ms", "p10_ms", "p90_ms", "min_ms"):
        out[f"raw_{k}"] = stats[k]
        out[k] = float(stats[k] * scale)
    out["median_ms"] = float(value)
    out["raw_rel_ci"] = stats["rel_ci"]
    out["rel_ci"] = stats["ratio_rel_ci"]
    out["anchor_ms"] = float(anchor_ms)
    out["estimator"] = "anchored"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")) and ":" in line:
                    val = line.split(":", 1)[1].strip()
                    if val:
                        return val
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """Where a measurement was taken: host, CPU model, cores, OS, Python/numpy/onnxruntime versions, load."""
    info: dict[str, Any] = {"host": platform.node(), "cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
                            "machine": platform.machine(), "os": platform.platform(),
                            "python": platform.python_version(), "numpy": np.__version__}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["available_providers"] = list(ort.get_available_providers())
    except ImportError:  # pragma: no cover - bench.py needs it anyway
        info["onnxruntime"] = None
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        pass
    return info


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_session(path: str, threads: int, provider: str = "CPUExecutionProvider"):
    """ONNX Runtime session with pinned intra-op threads, 1 inter-op thread, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=[provider])


def time_onnx(path: str, input_shape: list[int], threads: int, provider: str = "CPUExecutionProvider",
              seed: int = 0, reference: tuple[str, list[int], float] | None = None, **rule: Any) -> dict[str, Any]:
    """Time one ONNX model on a fixed random input of ``input_shape`` (batch included).

    ``reference = (ref_path, ref_input_shape, anchor_ms)`` times it interleaved with the reference model
    (:func:`time_paired`) and reports ``ratio x anchor_ms`` (:func:`anchored`); otherwise plain
    :func:`time_callable` (``estimator: "median"``).
    """
    sess = make_session(path, threads, provider)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    feed = {name: x}
    if reference is None:
        return {**time_callable(lambda: sess.run(None, feed), **rule), "estimator": "median"}
    ref_path, ref_shape, anchor_ms = reference
    rsess = make_session(ref_path, threads, provider)
    rfeed = {rsess.get_inputs()[0].name: np.random.default_rng(seed).standard_normal(ref_shape).astype(np.float32)}
    stats = time_paired(lambda: sess.run(None, feed), lambda: rsess.run(None, rfeed), **rule)
    return anchored(stats, anchor_ms)


def _write_atomic(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Time the calibration kit's ONNX models on this device.")
    ap.add_argument("--manifest", default=os.path.join(here, "manifest.json"))
    ap.add_argument("--out", default=None, help="results file (default: results.json beside the manifest)")
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (pinned)")
    ap.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    ap.add_argument("--warmup-s", type=float, default=DEFAULTS["warmup_s"])
    ap.add_argument("--min-repeats", type=int, default=int(DEFAULTS["min_repeats"]))
    ap.add_argument("--max-repeats", type=int, default=int(DEFAULTS["max_repeats"]))
    ap.add_argument("--max-seconds", type=float, default=DEFAULTS["max_seconds"], help="cap per model")
    ap.add_argument("--rel-tol", type=float, default=DEFAULTS["rel_tol"])
    ap.add_argument("--fresh", action="store_true", help="ignore a partial results file instead of resuming")
    ap.add_argument("--no-reference", action="store_true",
                    help="plain medians instead of timing each model interleaved with the kit's reference model")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    try:
        with open(a.manifest) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        print(f"error: cannot read the kit manifest {a.manifest}: {e}", file=sys.stderr)
        return 2
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version") != MANIFEST_VERSION:
        print(f"error: {a.manifest} is not a fitplan calibration kit manifest (version {MANIFEST_VERSION})",
              file=sys.stderr)
        return 2
    kit_dir = os.path.dirname(os.path.abspath(a.manifest))
    out = a.out or os.path.join(kit_dir, "results.json")
    ref = manifest.get("reference") if not a.no_reference else None
    settings = {"threads": a.threads, "provider": a.provider, "anchored": ref is not None}
    rule = {"warmup_s": a.warmup_s, "min_repeats": a.min_repeats, "max_repeats": a.max_repeats,
            "max_seconds": a.max_seconds, "rel_tol": a.rel_tol}
    done: dict[str, dict[str, Any]] = {}
    started = utc_now()
    anchor: dict[str, Any] | None = None
    if os.path.exists(out) and not a.fresh:
        try:
            with open(out) as f:
                prev = json.load(f)
            if prev.get("kit_id") == manifest["kit_id"] and prev.get("settings") == settings:
                done = {r["id"]: r for r in prev.get("results", [])}
                started = prev.get("started", started)
                anchor = prev.get("anchor")
                if done:
                    print(f"resuming: {len(done)} model(s) already measured in {out}")
        except (OSError, ValueError, KeyError, TypeError):
            print(f"warning: could not read {out}; starting over", file=sys.stderr)
    reference = None
    if ref is not None:
        ref_path = os.path.join(kit_dir, ref["file"])
        if sha256_file(ref_path) != ref["sha256"]:
            print(f"error: {ref['file']} does not match the manifest; re-copy the kit", file=sys.stderr)
            return 2
        if anchor is None:
            anchor = measure_anchor(ref_path, ref["input_shape"], a.threads, a.provider)
            print(f"reference {ref['id']}: anchor {anchor['anchor_ms']:.3f} ms ({anchor['method']})", flush=True)
        reference = (ref_path, ref["input_shape"], anchor["anchor_ms"])
    doc: dict[str, Any] = {"format": RESULTS_FORMAT, "format_version": RESULTS_VERSION,
                           "kit_id": manifest["kit_id"], "space": manifest.get("space"),
                           "settings": settings, "rule": rule, "machine": machine_info(),
                           "started": started, "complete": False, "anchor": anchor, "results": []}
    models = manifest["models"]
    for i, m in enumerate(models):
        if m["id"] in done and done[m["id"]].get("sha256") == m["sha256"]:
            doc["results"].append(done[m["id"]])
            continue
        path = os.path.join(kit_dir, m["file"])
        digest = sha256_file(path)
        if digest != m["sha256"]:
            print(f"error: {m['file']} does not match the manifest (sha256 {digest[:12]}..., expected "
                  f"{m['sha256'][:12]}...); re-copy the kit", file=sys.stderr)
            return 2
        t = time.time()
        stats = time_onnx(path, m["input_shape"], a.threads, a.provider, reference=reference, **rule)
        res = {"id": m["id"], "file": m["file"], "sha256": digest, "arch": m["arch"], "variant": m["variant"],
               "batch": m["batch"], "measured_at": utc_now(), **stats}
        doc["results"].append(res)
        _write_atomic(out, doc)
        print(f"[{i + 1}/{len(models)}] {m['id']}: median {stats['median_ms']:.3f} ms "
              f"(p10 {stats['p10_ms']:.3f}, p90 {stats['p90_ms']:.3f}, n={stats['count']}, "
              f"{time.time() - t:.1f} s)", flush=True)
    doc["complete"] = True
    doc["finished"] = utc_now()
    doc["machine"] = machine_info()
    _write_atomic(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
