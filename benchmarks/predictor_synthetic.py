"""Few-shot latency prediction on *synthetic* accelerators unlike every source device (fbnet space).

HELP's held-out FBNet devices include an ASIC (Eyeriss) and an FPGA, and no source device in
``../shared/data/latency`` is an accelerator. This probe asks whether the meta prior can still adapt to one
from 10 samples. Each synthetic device sums, over the convolutions of an arch (the FBNet geometry of
:mod:`fitplan.predictors.features`), a per-convolution roofline ``max(MACs / (P·u·e), bytes / BW) + o``
with random peak ``P``, bandwidth ``BW``, depthwise efficiency ``e`` (depthwise convolutions only),
per-convolution overhead ``o`` and PE-array tiling utilisation ``u = util(c_in, T_n)·util(c_out, T_m)``
(``util(c, T) = c / (ceil(c/T)·T)``). These latencies are *generated*, not measured: the figures say how the
prior's structure copes with a device class it has never seen, not what a real accelerator would give.

Columns: ``auto`` and ``ours+basis`` as in ``benchmarks/predictor_fewshot.py`` (what a calibration does by
default, and the meta model with its measured basis); the meta posterior alone with the shipped
hyper-parameters (each device choosing between the tuned analytic scales and ``sigma_wide``), the same
without the wide candidate, the single common analytic scale used before the roofline-bound scales, and the
FLOPs proxy. Sources: all 13 fbnet devices (the shipped prior).

Figures (30 devices, 5 random draws per N, then HELP's 10 fixed reference archs; mean Spearman / median APE):
``auto`` N=5 / 10 / 20 / ref 0.925 / 0.971 / 0.985 / 0.959, median APE 6.2 / 3.0 / 2.0 / 4.2 %; the meta
posterior without the wide candidate 0.911 / 0.945 / 0.973 / 0.945; with the one common analytic scale it
had before 0.940 / 0.968 / 0.984 / 0.965; FLOPs proxy 0.729.

    python benchmarks/predictor_synthetic.py [--devices 30] [--draws 5] [--n 5 10 20]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from fitplan.predictors import features as F  # noqa: E402
from fitplan.predictors.fewshot import METHODS, Context, metrics  # noqa: E402
from fitplan.predictors.latency import DEFAULT_HYPER  # noqa: E402
from fitplan.predictors.meta import build_prior  # noqa: E402


def fbnet_convs() -> dict[int, list[tuple[float, float, int, int, bool]]]:
    """Per fbnet feature (layer x op): its convolutions as (MACs, elements moved, c_in, c_out, depthwise)."""
    out = {}
    for li, (c_in, c_out, s, hw) in enumerate(F._fbnet_plan()):
        hw_o = math.ceil(hw / s)
        for oi, name in enumerate(F.FBNET_OPS):
            f = li * len(F.FBNET_OPS) + oi
            if name == "skip":
                if c_in != c_out or s != 1:
                    out[f] = [(c_in * c_out * hw_o ** 2, c_in * hw * hw + c_out * hw_o ** 2 + c_in * c_out, c_in,
                               c_out, False)]
                continue
            k, e = int(name[1]), int(name.split("_e")[1].split("_")[0])
            g = 2 if name.endswith("_g2") else 1
            mid = c_in * e
            out[f] = [(c_in * mid // g * hw * hw, c_in * hw * hw + mid * hw * hw + c_in * mid // g, c_in, mid, False),
                      (mid * k * k * hw_o ** 2, mid * hw * hw + mid * hw_o ** 2 + mid * k * k, 1, mid, True),
                      (mid * c_out // g * hw_o ** 2, mid * hw_o ** 2 + c_out * hw_o ** 2 + mid * c_out // g, mid,
                       c_out, False)]
    return out


def synthetic_table(rng: np.random.Generator, n_features: int, convs) -> np.ndarray:
    """Cost table (ms per feature) of one random accelerator (module docstring)."""
    def util(c: int, t: int) -> float:
        return c / (math.ceil(c / t) * t)

    tn, tm = (int(v) for v in rng.choice([8, 12, 14, 16, 32, 64], 2))
    peak, bw = 10 ** rng.uniform(8, 11), 10 ** rng.uniform(7, 10)
    eff_dw, ovh = 10 ** rng.uniform(-2, 0), 10 ** rng.uniform(-6, -3)
    t = np.zeros(n_features)
    for f, cs in convs.items():
        for macs, moved, ci, co, dw in cs:
            u = util(ci, tn) * util(co, tm) * (eff_dw if dw else 1.0)
            t[f] += max(macs / (peak * u), moved / bw) + ovh
    t[-1] = 5 * ovh
    return t * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--n", type=int, nargs="+", default=[5, 10, 20])
    args = ap.parse_args()
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    t0 = time.time()
    ds = load_latency_dataset("fbnet")
    x = F.dataset_features("fbnet")
    sf = F.space_features("fbnet")
    shipped = DEFAULT_HYPER["fbnet"]
    variants = {"shipped": shipped, "no wide": replace(shipped, sigma_wide=0.0),
                "one scale 0.204": replace(shipped, sigma_a=0.204, sigma_r=None, sigma_wide=0.0)}
    priors = {k: build_prior("fbnet", x, ds.latency_ms, ds.devices, sf.analytic, sf.groups, h)
              for k, h in variants.items()}
    macs = x @ sf.analytic[0]
    convs = fbnet_convs()
    rng = np.random.default_rng(0)
    tables = [synthetic_table(rng, x.shape[1], convs) for _ in range(args.devices)]
    cols = ["auto", "ours+basis", *variants, "flops"]
    print(f"## synthetic accelerators (fbnet space, {args.devices} devices x {args.draws} draws; generated "
          "latencies, not measurements)")
    print("metrics per cell: mean Spearman / median APE % (min device Spearman)\n")
    print("| N | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    n_archs = len(x)
    sample_sets = [(str(n), [np.random.default_rng(100 + d).choice(n_archs, n, replace=False)
                             for d in range(args.draws)]) for n in args.n]
    sample_sets.append((f"{len(ds.reference)} (HELP's reference archs)", [np.asarray(ds.reference)]))
    for label, sets in sample_sets:
        acc: dict[str, list[list[float]]] = {c: [] for c in cols}
        for t in tqdm(tables, desc=f"N={label}", leave=False):
            y = x @ t
            per: dict[str, list[tuple[float, float]]] = {c: [] for c in cols}
            for idx in sets:
                mask = np.ones(len(y), dtype=bool)
                mask[idx] = False
                for k, p in priors.items():
                    m = metrics(x[mask] @ p.posterior(x[idx], y[idx]).table, y[mask])
                    per[k].append((m["spearman"], m["mape"]))
                ctx = Context(x, idx, y[idx], priors["shipped"], ds.latency_ms, macs)
                for k in ("auto", "ours+basis", "flops"):
                    m = metrics(METHODS[k](ctx)[mask], y[mask])
                    per[k].append((m["spearman"], m["mape"]))
            for c in cols:
                acc[c].append(list(np.mean(per[c], axis=0)))
        cells = []
        for c in cols:
            a = np.array(acc[c])
            cells.append(f"{a[:, 0].mean():.3f} / {np.median(a[:, 1]):.1f} (min {a[:, 0].min():.3f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
