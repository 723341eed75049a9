"""Train a small OFA-MobileNetV3 supernet on MNIST-5k (CPU, minutes) and report subnet accuracies.

Sandwich rule + in-place distillation (fitplan.search_spaces.training), then BN recalibration per subnet
and top-1 accuracy of the smallest, the median-MACs and the largest subnet on the val and test splits of
mnist5k (500 / 1000 real digits never trained on), plus the wall time. The trained supernet is saved to
``--out`` (safetensors + JSON) so ``benchmarks/accuracy_predictor.py`` can reuse it; training checkpoints
go to ``--out/ckpt`` and an interrupted run resumes from there.

    python benchmarks/supernet_train.py                 # ~5 epochs, width 0.35, r in {24, 28, 32}
    python benchmarks/supernet_train.py --epochs 1 --max-steps 20   # smoke run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"])
    ap.add_argument("--n-random", type=int, default=2)
    ap.add_argument("--kd-alpha", type=float, default=0.5)
    ap.add_argument("--width-mult", type=float, default=0.35)
    ap.add_argument("--resolutions", default="24,28,32")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/supernet_mnist5k")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from fitplan.data import calibration_batches, load_dataset
    from fitplan.search_spaces import create_space
    from fitplan.search_spaces.training import evaluate, resolve_device, save_weights, train_supernet

    torch.manual_seed(args.seed)
    data = load_dataset("mnist5k", seed=args.seed)
    res = tuple(int(r) for r in args.resolutions.split(","))
    space = create_space("ofa_mbv3", width_mult=args.width_mult, num_classes=data.info.num_classes,
                         in_chans=data.info.in_chans, resolutions=res)
    supernet = space.build_supernet()
    out = Path(args.out)
    t0 = time.perf_counter()
    result = train_supernet(supernet, data.loader("train", args.batch_size, seed=args.seed), epochs=args.epochs,
                            lr=args.lr, optimizer=args.optimizer, n_random=args.n_random, kd_alpha=args.kd_alpha,
                            max_steps=args.max_steps, seed=args.seed, device=args.device,
                            checkpoint_dir=out / "ckpt", resume=not args.no_resume)
    train_s = result.wall_s
    save_weights(supernet, out / "supernet.safetensors",
                 {"space": space.spec(), "data": data.info.to_dict(), "train": result.to_dict()})

    rng = np.random.default_rng(args.seed)
    pool = [space.sample(rng, compression=False) for _ in range(101)]
    macs = [space.costs(c)["macs"] for c in pool]
    median = pool[int(np.argsort(macs)[len(macs) // 2])]
    calib = calibration_batches(data, n_batches=8, batch_size=64, seed=args.seed)  # 512 train images
    t1 = time.perf_counter()
    rows = []
    for name, cfg in (("smallest", space.smallest()), ("median MACs", median), ("largest", space.largest())):
        val = evaluate(supernet, cfg, data.loader("val", 250), calib)
        test = evaluate(supernet, cfg, data.loader("test", 250), calib)
        c = space.costs(cfg)
        rows.append((name, cfg["r"], c["params"] / 1e3, c["macs"] / 1e6, val, test))
    eval_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0

    dev = resolve_device(args.device)
    print(f"\nofa_mbv3 width_mult={args.width_mult} r={res} on mnist5k ({data.info.sizes}), device={dev}, "
          f"threads={args.threads}")
    print(f"training: {result.steps} steps ({result.epochs_done:.2f} epochs, batch {args.batch_size}, "
          f"sandwich 2+{args.n_random} subnets/step, {args.optimizer} lr {args.lr}, kd_alpha {args.kd_alpha})"
          + (f", resumed from step {result.resumed_from}" if result.resumed_from else ""))
    print(f"epoch mean losses: {[round(x, 3) for x in result.epoch_losses]}")
    print("BN recalibrated on 512 train images per subnet (measured, top-1)\n")
    print(f"{'subnet':<12} {'r':>3} {'params(k)':>10} {'MMACs':>8} {'val acc':>8} {'test acc':>9}")
    for name, r, p, m, v, t in rows:
        print(f"{name:<12} {r:>3} {p:>10.1f} {m:>8.2f} {v:>8.4f} {t:>9.4f}")
    print(f"\nwall time: training {train_s:.1f} s (this run's steps + resumed ones), evaluation {eval_s:.1f} s, "
          f"total {total_s:.1f} s")
    (out / "summary.json").write_text(json.dumps({
        "rows": [dict(zip(("subnet", "r", "params_k", "mmacs", "val_acc", "test_acc"), r)) for r in rows],
        "train_wall_s": train_s, "eval_wall_s": eval_s, "steps": result.steps, "device": str(dev),
        "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
