"""Does mixed int8/fp32 precision pay on this CPU? Latency of mixed-precision nets vs both pure precisions.

For a few ofa_mbv3 architectures (seeded, resolution ``--r``) every network is measured by fitplan's harness
(:func:`fitplan.hw_profiles.measure.measure_config`: ONNX Runtime CPU, 1 thread, anchored blocks) in fp32,
all-int8 and four mixed 8/32-bit assignments of its active units:

``one-float``    all 8-bit except the middle active unit;
``halves``       the first half of the active units 8-bit, the rest 32-bit;
``float-first``  the first half 32-bit, the rest 8-bit;
``random``       each active unit 8- or 32-bit by a coin flip.

Columns: precision boundaries (adjacent active units of different precision), the latencies, and mixed /
min(fp32, int8): above 1 means the mixed net is slower than *both* pure versions of the same architecture.

What it shows on ONNX Runtime's x86 CPU EP: per unit, int8 pays for dense (pointwise) convs and the
classifier and costs for depthwise convs and large activations (Quantize/Dequantize), and every precision
boundary costs layout reorders. So ``float-first`` (float where the depthwise convs and big activations are,
int8 where the pointwise work is) beats both pure versions, while int8-first and scattered mixes are slower
than both. The analytic latency model prices exactly these terms (per-class depthwise / dense / activation
costs, and ``bits=8@mixed`` for the int8 units of mixed graphs, which pay reorders and Quantize/Dequantize on
their activations that an all-int8 graph fuses away: :mod:`fitplan.predictors.analytic`), and the planner's local
calibration measures int8 and mixed configs so that the search can place 8-bit units where they pay.

    python benchmarks/mixed_precision.py [--archs 4] [--r 160] [--seed 0] [--max-seconds 3]
"""
from __future__ import annotations

import argparse

import numpy as np


def patterns(active: list[int], n_units: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Mixed bit assignments (per unit; inactive units 32) over the ``active`` unit indices."""
    def bits(eight: set[int]) -> list[int]:
        return [8 if i in eight else 32 for i in range(n_units)]

    mid = active[len(active) // 2]
    half = len(active) // 2
    out = {"one-float": bits(set(active) - {mid}), "halves": bits(set(active[:half])),
           "float-first": bits(set(active[half:]))}
    while True:  # a coin flip per unit that is really mixed
        eight = {i for i in active if rng.random() < 0.5}
        if 0 < len(eight) < len(active):
            out["random"] = bits(eight)
            return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=4)
    ap.add_argument("--r", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3.0, help="timing budget per measurement")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from fitplan.hw_profiles.measure import measure_config, precision_changes
    from fitplan.hw_profiles.store import get_profile
    from fitplan.search_spaces import create_space

    space = create_space("ofa_mbv3")
    supernet = space.build_supernet().eval()
    profile = get_profile("local-cpu-1t")
    rng = np.random.default_rng(args.seed)
    n_units = len(space.units())
    rows = []
    for a in tqdm(range(args.archs), desc="architectures"):
        arch = space.validate({**space.sample(rng, compression=False), "r": args.r})
        active = [i for i, u in enumerate(space.unit_costs(arch)) if u.active]

        def ms(bits: list[int]) -> float:
            m = measure_config(space, {**arch, "bits": bits}, profile, supernet=supernet,
                               max_seconds=args.max_seconds)
            return float(m.median_ms) if m.ok else float("nan")

        fp32, int8 = ms([32] * n_units), ms([8] * n_units)
        for name, bits in patterns(active, n_units, rng).items():
            mixed = ms(bits)
            rows.append({"arch": a, "pattern": name, "boundaries": precision_changes(space, {**arch, "bits": bits}), "fp32": fp32,
                         "int8": int8, "mixed": mixed, "ratio": mixed / min(fp32, int8)})
    print(f"ofa_mbv3 r={args.r}, {args.archs} architectures; onnxruntime CPU, 1 thread, fitplan's anchored "
          f"harness (ms)")
    print("| arch | pattern | boundaries | fp32 | int8 | mixed | mixed / min(fp32, int8) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['pattern']} | {r['boundaries']} | {r['fp32']:.3f} | {r['int8']:.3f} | "
              f"{r['mixed']:.3f} | {r['ratio']:.2f} |")
    ratio = np.array([r["ratio"] for r in rows])
    per_arch = len(rows) // args.archs
    pure = np.array([r["int8"] / r["fp32"] for r in rows[::per_arch]])
    print(f"int8 / fp32: median {np.median(pure):.2f}; mixed / min(fp32, int8): median {np.median(ratio):.2f}, "
          f"range {ratio.min():.2f}-{ratio.max():.2f}; mixed faster than both pure versions in "
          f"{int((ratio < 1).sum())} of {len(ratio)}")
    for name in ("one-float", "halves", "float-first", "random"):
        sel = [r["ratio"] for r in rows if r["pattern"] == name]
        print(f"  {name:<10} median {np.median(sel):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
