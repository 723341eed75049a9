"""Accuracy predictor on a trained OFA-MobileNetV3 supernet (MNIST-5k): Kendall tau on held-out subnets.

Loads the supernet that ``benchmarks/supernet_train.py`` saved (``--supernet``), or trains a short one if
there is none. Then:

1. measures ``--n-subnets`` random subnets (BN recalibrated) on the mnist5k val split, fits the
   predictor (target, features and regressor chosen by 5-fold CV) and reports Kendall tau / Spearman /
   MAE on the 20% of subnets held out from fitting; then ranks ``--n-check`` new subnets against their
   accuracy on the test split, beside what re-measuring them on the val split would give (the ceiling of
   any predictor fitted to val measurements);
2. measures per-unit sensitivity to 4/8 bits and 25/50/75% unstructured and 2:4 sparsity on the largest
   subnet, one unit at a time;
3. checks the additivity assumption: ``--n-compressed`` random compressed configs are measured for real
   (masks + fake quant, BN + activation calibration, no fine-tuning) and compared with ``predict``.

    python benchmarks/accuracy_predictor.py                      # after supernet_train.py
    python benchmarks/accuracy_predictor.py --n-subnets 60 --n-compressed 10   # quicker
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", default="runs/supernet_mnist5k/supernet.safetensors")
    ap.add_argument("--n-subnets", type=int, default=200)
    ap.add_argument("--n-compressed", type=int, default=30,
                    help="random compressed configs measured: half fit drop_scale, half test it")
    ap.add_argument("--reuse", action="store_true", help="load --out instead of re-measuring subnets")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/accuracy_predictor/predictor.json")
    ap.add_argument("--no-sensitivity", action="store_true")
    ap.add_argument("--n-check", type=int, default=40,
                    help="new subnets measured on the test split to score the predictor against")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from scipy.stats import kendalltau, spearmanr

    from fitplan.data import calibration_batches, load_dataset
    from fitplan.jsonio import load_versioned
    from fitplan.predictors.accuracy import AccuracyPredictor, measure_compressed
    from fitplan.search_spaces import create_space
    from fitplan.search_spaces.training import load_weights, train_supernet

    data = load_dataset("mnist5k", seed=args.seed)
    path = Path(args.supernet)
    if path.exists():
        meta = load_versioned(path.with_suffix(path.suffix + ".json"), "fitplan-weights", (1,))["meta"]
        space = create_space(meta["space"])
        supernet = space.build_supernet()
        load_weights(supernet, path)
        origin = f"{path} ({meta.get('train', {}).get('steps', '?')} training steps)"
    else:
        space = create_space("ofa_mbv3", width_mult=0.35, num_classes=10, in_chans=1, resolutions=(24, 28, 32))
        supernet = space.build_supernet()
        r = train_supernet(supernet, data.loader("train", 64), epochs=2, lr=3e-3, optimizer="adamw", device="cpu")
        origin = f"trained here: {r.steps} steps (no {path})"
    supernet.eval()
    calib = calibration_batches(data, n_batches=args.calib_batches, batch_size=64, seed=args.seed)
    val = data.loader("val", 250)

    t0 = time.perf_counter()
    if args.reuse and Path(args.out).exists():
        pred = AccuracyPredictor.load(args.out, space=space)
        pred.drop_scale = 1.0
        origin += f"; predictor reused from {args.out}"
    else:
        pred = AccuracyPredictor.build(supernet, val, calib, n_subnets=args.n_subnets, seed=args.seed,
                                       sensitivity=not args.no_sensitivity)
    build_s = time.perf_counter() - t0
    pred.meta["supernet"] = origin
    m = pred.metrics
    accs = np.asarray(pred.meta["measured"]["accuracies"])
    print(f"\nsupernet: {space.spec()['space']} {origin}")
    print(f"measured {m['n_measured']} subnets on mnist5k val ({data.info.sizes['val']} images), BN recalibrated "
          f"on {args.calib_batches * 64} train images: accuracy {accs.min():.4f} .. {accs.max():.4f} "
          f"(mean {accs.mean():.4f}, std {accs.std():.4f})")
    print("5-fold CV Kendall tau: " + ", ".join(f"{k} {v:.3f}" for k, v in m["cv_kendall_tau"].items())
          + f"  -> chosen: {m.get('target', 'accuracy')}/{m.get('features', 'encode')}/{m['model']}")
    print(f"held-out subnets (n={m['n_holdout']}, never fitted on): Kendall tau {m['kendall_tau_holdout']:.3f}, "
          f"Spearman {m['spearman_holdout']:.3f}, MAE {m['mae_holdout']:.4f} (against their val accuracy)")
    if args.n_check > 0:
        from fitplan.predictors.accuracy import measure_subnet_metrics

        rng = np.random.default_rng(args.seed + 7)
        chk = [space.sample(rng, compression=False) for _ in range(args.n_check)]
        on_val = measure_subnet_metrics(supernet, chk, val, calib, desc="check (val)")
        on_test = measure_subnet_metrics(supernet, chk, data.loader("test", 250), calib, desc="check (test)")
        t = on_test["accuracy"]
        print(f"{args.n_check} new subnets, accuracy on the test split ({data.info.sizes['test']} images, never "
              f"used for fitting) {t.min():.4f} .. {t.max():.4f}; Kendall tau with it:")
        print(f"  predicted (this predictor)          {kendalltau(pred.predict_arch(chk), t).statistic:6.3f}")
        print(f"  measured val accuracy (a re-measure) {kendalltau(on_val['accuracy'], t).statistic:6.3f}")
        print(f"  measured val cross-entropy           {kendalltau(-on_val['nll'], t).statistic:6.3f}")

    if pred.sensitivity is not None:
        s = pred.sensitivity
        units = space.units()
        print(f"\nsensitivity on the largest subnet (float accuracy {s['base_accuracy']:.4f}); "
              "accuracy drop when only that unit is compressed, no fine-tuning:")
        cols = [("4 bit", s["bits"]["4"]), ("8 bit", s["bits"]["8"])]
        cols += [(f"{float(k):.0%} unstr", v) for k, v in s["sparsity"]["unstructured"].items()]
        cols += [("2:4", s["sparsity"]["2:4"]["0.5"])] if "2:4" in s["sparsity"] else []
        print(f"{'unit':<14}" + "".join(f"{c:>11}" for c, _ in cols))
        for u, name in enumerate(units):
            print(f"{name:<14}" + "".join(f"{v[u]:>11.4f}" if v[u] is not None else f"{'-':>11}" for _, v in cols))

    if args.n_compressed >= 4 and pred.sensitivity is not None:
        rng = np.random.default_rng(args.seed + 1)
        cfgs = [space.sample(rng, compression=True) for _ in range(args.n_compressed)]
        from tqdm.auto import tqdm

        real = np.asarray([measure_compressed(supernet, c, val, calib) for c in tqdm(cfgs, desc="compressed")])
        half = len(cfgs) // 2
        fit_c, fit_y, test_c, test_y = cfgs[:half], real[:half], cfgs[half:], real[half:]

        def line(name: str, p: np.ndarray) -> None:
            print(f"  {name:<34} Kendall tau {kendalltau(p, test_y).statistic:6.3f}  Spearman "
                  f"{spearmanr(p, test_y).statistic:6.3f}  MAE {np.abs(p - test_y).mean():.4f}  "
                  f"mean(pred - real) {np.mean(p - test_y):+.4f}")

        print(f"\nadditivity check: {len(cfgs)} random compressed configs measured without fine-tuning "
              f"(real accuracy {real.min():.3f} .. {real.max():.3f}); scores on the {len(test_c)} not used for fitting:")
        line("arch-only (ignores compression)", pred.predict_arch(test_c))
        line("additive (drop_scale = 1)", pred.predict(test_c))
        a = pred.fit_drop_scale(fit_c, fit_y)
        line(f"drop_scale = {a:.2f} (fit on {half})", pred.predict(test_c))
        pred.fit_drop_scale(cfgs, real)  # the saved predictor uses all measured configs
        pred.meta["measured_compressed"] = {"configs": cfgs, "accuracies": real.tolist()}
    pred.save(args.out)
    print(f"\nwall time: build {build_s:.1f} s; predictor saved to {args.out} (+ .npz)")


if __name__ == "__main__":
    main()
