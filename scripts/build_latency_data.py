"""Convert ../shared/data/latency/<space> into the npz files fitplan ships (deterministic, lossless).

    python scripts/build_latency_data.py [--src PATH]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fitplan.hw_profiles.latency_data import FBNET_OPS, SHIPPED_SPACES
from fitplan.paths import package_data, shared_latency_dir

SOURCE = ("HELP (Lee et al., NeurIPS 2021, MIT license) measured latencies; FBNet edge devices from "
          "HW-NAS-Bench (Li et al., ICLR 2021, MIT). Converted from ../shared/data/latency/{space}.")


def build(src: Path, space: str) -> Path:
    d = src / space
    archs = json.loads((d / "archs.json").read_text())
    split = json.loads((d / "split.json").read_text())
    devices = sorted(p.stem for p in (d / "devices").glob("*.json"))
    lat = np.stack([np.asarray(json.loads((d / "devices" / f"{n}.json").read_text()), dtype=np.float64)
                    for n in devices], axis=1)
    arrays: dict[str, np.ndarray] = {}
    if space == "fbnet":
        arrays["op_idx_list"] = np.asarray([a["op_idx_list"] for a in archs], dtype=np.int8)
        for a in archs:  # the index -> name map must be the one we ship
            assert [FBNET_OPS[i] for i in a["op_idx_list"]] == a["arch_str"], a
    else:
        for k in ("ks", "e", "d"):
            arrays[k] = np.asarray([a[k] for a in archs], dtype=np.int8)
        arrays["r"] = np.asarray([a["r"] for a in archs], dtype=np.int16)
    out = package_data("hw_profiles", "data", f"{space}_latency.npz")
    np.savez_compressed(out, devices=np.asarray(devices), latency_ms=lat,
                        reference=np.asarray(json.loads((d / "reference_archs.json").read_text())),
                        split_train=np.asarray(split["train"]), split_valid=np.asarray(split["valid"]),
                        source=np.asarray(SOURCE.format(space=space)), **arrays)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", type=Path, default=shared_latency_dir())
    args = ap.parse_args()
    if args.src is None:
        raise SystemExit("../shared/data/latency not found; pass --src")
    for space in SHIPPED_SPACES:
        print(build(args.src, space))


if __name__ == "__main__":
    main()
