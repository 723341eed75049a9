"""Layer-wise latency features and analytic per-feature costs for the ``fbnet`` and ``ofa_mbv3`` spaces.

Why: latency is close to additive over layers, ``lat(a) ≈ b + Σ_layers T_dev[layer, choice]``. Each space
maps an architecture to a sparse feature vector ``φ(a)`` (one entry per layer-choice that is present, scaled
by the spatial area where the cost grows with resolution) so that *any* device is a linear cost table
``c_dev`` over the same features: ``lat(a) ≈ φ(a) · c_dev``. The predictors combine such tables of known
devices with analytic tables (MACs, parameters, activation traffic, kernel launches) computed here, so that
devices unlike the source devices (ASIC/FPGA simulators, edge TPUs, CPUs) can still be expressed, and with
tiled-MAC tables (channel counts rounded up to an accelerator's channel block, :data:`TILED_NAMES`).

Channel plans are approximations of the HW-NAS-Bench FBNet (CIFAR-100) and OFA MobileNetV3-Large networks;
they only have to rank per-layer costs sensibly, the data-driven tables carry the exact values.

Architecture validation (``validate_arch``) checks exactly the dict formats of ``../shared/data/latency``
(DESIGN.md contract 1) and raises :class:`~fitplan.errors.ConfigError` naming the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from fitplan.errors import ConfigError, UnknownNameError

FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
FBNET_LAYERS = 22
OFA_KS = (3, 5, 7)
OFA_E = (3, 4, 6)
OFA_D = (2, 3, 4)
OFA_BLOCKS = 20
OFA_R_RANGE = (128, 224)
PREDICTOR_SPACES = ("fbnet", "ofa_mbv3")

#: names of the analytic cost tables, in order (each is one column of the device basis).
ANALYTIC_NAMES = ("macs", "dw_macs", "params", "act", "kernels")
#: channel tile sizes of the tiled-MAC tables: PE arrays, systolic arrays and FPGA loop unrolling process
#: input / output channels in blocks of a fixed size, so a layer whose channel count is not a multiple of the
#: tile wastes the rest of the last block (Zhang et al., FPGA 2015: ``ceil(M/Tm)·ceil(N/Tn)`` cycles per tile).
TILE_SIZES = (16, 32, 64)
#: names of the tiled-MAC tables, in order: pointwise / full convolutions with both channel counts rounded up
#: to the tile, then depthwise convolutions with their channel count rounded up (:func:`tiled_macs`).
TILED_NAMES = tuple(f"{kind}_macs_t{t}" for kind in ("pw", "dw") for t in TILE_SIZES)


# ------------------------------------------------------------------------------------------ geometry
def _fbnet_plan() -> list[tuple[int, int, int, int]]:
    """(c_in, c_out, stride, spatial size of the input) of the 22 searchable FBNet layers (CIFAR, 32x32)."""
    stages = [(16, 1, 1), (24, 4, 1), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1)]
    plan = []
    c_in, hw = 16, 32
    for c_out, n, s in stages:
        for j in range(n):
            stride = s if j == 0 else 1
            plan.append((c_in, c_out, stride, hw))
            hw = math.ceil(hw / stride)
            c_in = c_out
    return plan


def _conv(c_in: int, c_out: int, k: int, hw_out: int, groups: int = 1) -> tuple[float, float, float]:
    """(MACs, params, output elements) of one conv."""
    params = c_out * (c_in // groups) * k * k
    return float(params * hw_out * hw_out), float(params + c_out), float(c_out * hw_out * hw_out)


class Conv(NamedTuple):
    """One convolution of a layer choice: what a per-convolution cost model needs."""

    macs: float
    moved: float  #: elements read and written (input, output, weights)
    c_in: int  #: input channels (1 for depthwise: each filter sees one)
    c_out: int
    depthwise: bool


class _FbnetChoice(NamedTuple):
    """Geometry of one FBNet layer choice that costs something (identity skips are left out)."""

    f: int  #: feature index, ``layer * 9 + op``
    c_in: int
    c_out: int
    hw: int  #: input spatial size
    hw_o: int  #: output spatial size
    skip: bool  #: a 1x1 projection skip (channel or stride change); the fields below are then 0
    k: int
    mid: int  #: expanded channels
    g: int  #: groups of the pointwise convolutions


def _fbnet_choices() -> list[_FbnetChoice]:
    """Every FBNet layer choice with a cost, in feature order: what the analytic and tiled tables and
    :func:`fbnet_convs` are computed from."""
    out = []
    for li, (c_in, c_out, s, hw) in enumerate(_fbnet_plan()):
        hw_o = math.ceil(hw / s)
        for oi, name in enumerate(FBNET_OPS):
            f = li * len(FBNET_OPS) + oi
            if name == "skip":
                if c_in != c_out or s != 1:
                    out.append(_FbnetChoice(f, c_in, c_out, hw, hw_o, True, 0, 0, 0))
                continue
            k, e = int(name[1]), int(name.split("_e")[1].split("_")[0])
            out.append(_FbnetChoice(f, c_in, c_out, hw, hw_o, False, k, c_in * e, 2 if name.endswith("_g2") else 1))
    return out


def fbnet_convs() -> dict[int, list[Conv]]:
    """Per FBNet feature (``layer * 9 + op``): its convolutions (identity skips have none)."""
    out: dict[int, list[Conv]] = {}
    for ch in _fbnet_choices():
        c_in, c_out, hw, hw_o, k, mid, g = ch.c_in, ch.c_out, ch.hw, ch.hw_o, ch.k, ch.mid, ch.g
        if ch.skip:
            out[ch.f] = [Conv(c_in * c_out * hw_o ** 2, c_in * hw * hw + c_out * hw_o ** 2 + c_in * c_out, c_in,
                              c_out, False)]
            continue
        out[ch.f] = [Conv(c_in * mid // g * hw * hw, c_in * hw * hw + mid * hw * hw + c_in * mid // g, c_in, mid,
                          False),
                     Conv(mid * k * k * hw_o ** 2, mid * hw * hw + mid * hw_o ** 2 + mid * k * k, 1, mid, True),
                     Conv(mid * c_out // g * hw_o ** 2, mid * hw_o ** 2 + c_out * hw_o ** 2 + mid * c_out // g, mid,
                          c_out, False)]
    return out


def tiled_macs(convs: Iterable[Conv]) -> np.ndarray:
    """The :data:`TILED_NAMES` entries of a list of convolutions: MACs with channel counts rounded up to each of
    :data:`TILE_SIZES` (both counts of a full / pointwise convolution, the channel count of a depthwise one)."""
    def up(c: int, t: int) -> float:
        return math.ceil(c / t) * t / c

    out = np.zeros(len(TILED_NAMES))
    for cv in convs:
        for j, t in enumerate(TILE_SIZES):
            if cv.depthwise:
                out[len(TILE_SIZES) + j] += cv.macs * up(cv.c_out, t)
            else:
                out[j] += cv.macs * up(cv.c_in, t) * up(cv.c_out, t)
    return out


def _fbnet_tiled() -> np.ndarray:
    """Tiled-MAC tables ``[len(TILED_NAMES), 22 * 9 + 1]`` for FBNet features."""
    out = np.zeros((len(TILED_NAMES), FBNET_LAYERS * len(FBNET_OPS) + 1))
    for f, convs in fbnet_convs().items():
        out[:, f] = tiled_macs(convs)
    return out


def _fbnet_costs() -> np.ndarray:
    """Analytic cost tables ``[len(ANALYTIC_NAMES), 22 * 9]`` for FBNet layer-op features."""
    out = np.zeros((len(ANALYTIC_NAMES), FBNET_LAYERS * len(FBNET_OPS)))
    for ch in _fbnet_choices():
        c_in, c_out, hw, hw_o = ch.c_in, ch.c_out, ch.hw, ch.hw_o
        if ch.skip:
            macs, params, act = _conv(c_in, c_out, 1, hw_o)
            out[:, ch.f] = [macs, 0.0, params, act + c_in * hw * hw, 1.0]
            continue
        m1, p1, a1 = _conv(c_in, ch.mid, 1, hw, ch.g)
        m2, p2, a2 = _conv(ch.mid, ch.mid, ch.k, hw_o, ch.mid)
        m3, p3, a3 = _conv(ch.mid, c_out, 1, hw_o, ch.g)
        out[:, ch.f] = [m1 + m2 + m3, m2, p1 + p2 + p3, c_in * hw * hw + a1 + a2 + a3, 3.0]
    return out


def _ofa_plan() -> list[tuple[int, int, int, bool]]:
    """(c_in, c_out, stride, SE) of the 20 searchable OFA MobileNetV3 blocks."""
    widths, strides, se = (24, 40, 80, 112, 160), (2, 2, 2, 1, 2), (False, True, False, True, True)
    plan, c_in = [], 16
    for w, s, has_se in zip(widths, strides, se):
        for j in range(4):
            plan.append((c_in, w, s if j == 0 else 1, has_se))
            c_in = w
    return plan


def _ofa_sizes(r: np.ndarray) -> np.ndarray:
    """Input spatial size of each of the 20 blocks for resolutions ``r`` -> ``[len(r), 20]``."""
    hw = np.ceil(np.asarray(r, dtype=np.float64) / 2.0)  # stem stride 2; first fixed block stride 1
    cols = []
    for _, _, s, _ in _ofa_plan():
        cols.append(hw.copy())
        hw = np.ceil(hw / s)
    return np.stack(cols, axis=1)


def _ofa_area(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative output areas (vs. r=224) of the 20 blocks, the stem and the head -> arrays."""
    r = np.asarray(r, dtype=np.float64)
    sizes_in = _ofa_sizes(r)
    strides = np.array([s for _, _, s, _ in _ofa_plan()], dtype=np.float64)
    out = np.ceil(sizes_in / strides)
    ref = np.ceil(_ofa_sizes(np.array([224.0]))[0] / strides)
    stem = np.ceil(r / 2.0) ** 2 / 112.0 ** 2
    head = out[:, -1] ** 2 / 7.0 ** 2
    return out ** 2 / ref ** 2, stem, head


OFA_CHOICES = tuple((k, e) for k in OFA_KS for e in OFA_E)  # 9 (ks, e) pairs
_OFA_NB = OFA_BLOCKS * len(OFA_CHOICES)  # 180 block-choice slots
OFA_NFEAT = 2 * _OFA_NB + 4  # area-scaled + constant per slot, then stem area, head area, 1/r^2-free const


class _OfaChoice(NamedTuple):
    """Geometry of one OFA block choice (block, ks, e) at 224 px."""

    f: int  #: area-scaled feature index (its constant feature is ``_OFA_NB + f``)
    c_in: int
    c_out: int
    hw: int  #: input spatial size
    hw_o: int  #: output spatial size
    k: int
    mid: int  #: expanded channels (a multiple of 8)
    red: int  #: squeeze-excite channels (a multiple of 8); 0 without SE


def _ofa_choices() -> list[_OfaChoice]:
    """Every OFA block choice, in feature order: what the analytic and tiled tables are computed from."""
    out = []
    sizes = _ofa_sizes(np.array([224.0]))[0]
    for bi, (c_in, c_out, s, se) in enumerate(_ofa_plan()):
        hw = int(sizes[bi])
        for ci, (k, e) in enumerate(OFA_CHOICES):
            mid = int(math.ceil(c_in * e / 8) * 8)
            out.append(_OfaChoice(bi * len(OFA_CHOICES) + ci, c_in, c_out, hw, math.ceil(hw / s), k, mid,
                                  int(math.ceil(mid / 4 / 8) * 8) if se else 0))
    return out


def _ofa_costs() -> np.ndarray:
    """Analytic cost tables ``[len(ANALYTIC_NAMES), OFA_NFEAT]`` (area features carry MACs/activations,
    constant features carry parameters and kernel launches)."""
    out = np.zeros((len(ANALYTIC_NAMES), OFA_NFEAT))
    for ch in _ofa_choices():
        c_in, c_out, hw, hw_o, mid, red = ch.c_in, ch.c_out, ch.hw, ch.hw_o, ch.mid, ch.red
        m1, p1, a1 = _conv(c_in, mid, 1, hw)
        m2, p2, a2 = _conv(mid, mid, ch.k, hw_o, mid)
        m3, p3, a3 = _conv(mid, c_out, 1, hw_o)
        macs, params, act = m1 + m2 + m3, p1 + p2 + p3, c_in * hw * hw + a1 + a2 + a3
        kernels = 3.0
        if red:
            params += 2 * mid * red + mid + red
            macs += 2 * mid * red + mid * hw_o * hw_o
            act += mid * hw_o * hw_o
            kernels += 3.0
        out[:, ch.f] = [macs, m2, 0.0, act, 0.0]  # area-scaled slot
        out[:, _OFA_NB + ch.f] = [0.0, 0.0, params, 0.0, kernels]  # constant slot
    # stem (3x3 s2 conv 3->16 + fixed MBConv 16->16 e1) at 112x112, head (160->960 1x1 at 7x7, 960->1280, fc)
    stem_m = 3 * 16 * 9 * 112 * 112 + 16 * 9 * 112 * 112 + 16 * 16 * 112 * 112
    out[:, 2 * _OFA_NB] = [stem_m, 16 * 9 * 112 * 112, 0.0, (3 + 16 * 3) * 112 * 112, 0.0]
    head_m = 160 * 960 * 49
    out[:, 2 * _OFA_NB + 1] = [head_m, 0.0, 0.0, (160 + 960) * 49, 0.0]
    out[:, 2 * _OFA_NB + 2] = [960 * 1280 + 1280 * 1000, 0.0,
                               160 * 960 + 960 * 1280 + 1280 * 1000 + 3 * 16 * 9 + 16 * 9 + 256, 0.0, 6.0]
    # last feature: constant 1 (device fixed overhead) has no analytic cost
    return out


def _ofa_tiled() -> np.ndarray:
    """Tiled-MAC tables ``[len(TILED_NAMES), OFA_NFEAT]`` (area-scaled slots, stem and head areas; the
    convolutions as in :func:`_ofa_costs`, element traffic omitted)."""
    out = np.zeros((len(TILED_NAMES), OFA_NFEAT))
    for ch in _ofa_choices():
        c_in, c_out, hw, hw_o, mid, red = ch.c_in, ch.c_out, ch.hw, ch.hw_o, ch.mid, ch.red
        convs = [Conv(c_in * mid * hw * hw, 0.0, c_in, mid, False),
                 Conv(mid * ch.k * ch.k * hw_o * hw_o, 0.0, 1, mid, True),
                 Conv(mid * c_out * hw_o * hw_o, 0.0, mid, c_out, False)]
        if red:
            convs += [Conv(mid * red, 0.0, mid, red, False), Conv(mid * red, 0.0, red, mid, False)]
        out[:, ch.f] = tiled_macs(convs)
    out[:, 2 * _OFA_NB] = tiled_macs([Conv(3 * 16 * 9 * 112 * 112, 0.0, 3, 16, False),
                                      Conv(16 * 9 * 112 * 112, 0.0, 1, 16, True),
                                      Conv(16 * 16 * 112 * 112, 0.0, 16, 16, False)])
    out[:, 2 * _OFA_NB + 1] = tiled_macs([Conv(160 * 960 * 49, 0.0, 160, 960, False)])
    return out


# ------------------------------------------------------------------------------------------ groups
def _fbnet_groups() -> np.ndarray:
    """Per-layer groups (the 8 non-skip ops of a layer) and per-op groups (one op across all layers).

    They let the prior express "this device is slow on layer 7" or "slow on grouped convs" with one
    coefficient each, which a handful of samples can identify."""
    n_ops = len(FBNET_OPS)
    g = np.zeros((FBNET_LAYERS * n_ops + 1, FBNET_LAYERS + n_ops))
    for li in range(FBNET_LAYERS):
        for oi in range(n_ops):
            f = li * n_ops + oi
            if FBNET_OPS[oi] != "skip":
                g[f, li] = 1.0
            g[f, FBNET_LAYERS + oi] = 1.0
    return g


def _ofa_groups() -> np.ndarray:
    """Per-block groups (area and constant parts separately), per (ks, e) choice, per ks and per e groups."""
    nc = len(OFA_CHOICES)
    cols = []
    for part in (0, 1):
        for bi in range(OFA_BLOCKS):
            c = np.zeros(OFA_NFEAT)
            c[part * _OFA_NB + bi * nc: part * _OFA_NB + (bi + 1) * nc] = 1.0
            cols.append(c)
        for ci in range(nc):
            c = np.zeros(OFA_NFEAT)
            c[part * _OFA_NB + ci: (part + 1) * _OFA_NB: nc] = 1.0
            cols.append(c)
        for pick in [*(lambda ch, k=k: ch[0] == k for k in OFA_KS), *(lambda ch, e=e: ch[1] == e for e in OFA_E)]:
            c = np.zeros(OFA_NFEAT)
            for ci, ch in enumerate(OFA_CHOICES):
                if pick(ch):
                    c[part * _OFA_NB + ci: (part + 1) * _OFA_NB: nc] = 1.0
            cols.append(c)
    return np.stack(cols, axis=1)


# ------------------------------------------------------------------------------------------ spaces
@dataclass(frozen=True)
class SpaceFeatures:
    """Feature map of one space: ``featurize(archs) -> [n, n_features]`` and its analytic tables."""

    space: str
    n_features: int
    analytic: np.ndarray  # [len(ANALYTIC_NAMES), n_features]
    groups: np.ndarray  # [n_features, n_groups] 0/1: features sharing a layer, or an op choice across layers
    tiled: np.ndarray  # [len(TILED_NAMES), n_features] MACs with channel counts rounded up to a tile

    def featurize(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return featurize(self.space, archs)


def space_features(space: str) -> SpaceFeatures:
    """The :class:`SpaceFeatures` of a supported space (``fbnet`` or ``ofa_mbv3``)."""
    if space == "fbnet":
        return SpaceFeatures(space, FBNET_LAYERS * len(FBNET_OPS) + 1, np.pad(_fbnet_costs(), ((0, 0), (0, 1))),
                             _fbnet_groups(), _fbnet_tiled())
    if space == "ofa_mbv3":
        return SpaceFeatures(space, OFA_NFEAT, _ofa_costs(), _ofa_groups(), _ofa_tiled())
    raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)


def fbnet_arrays_features(op_idx: np.ndarray) -> np.ndarray:
    """FBNet features from an ``[n, 22]`` int array: one-hot layer-op (198) + constant 1."""
    op_idx = np.asarray(op_idx, dtype=np.int64)
    n = op_idx.shape[0]
    x = np.zeros((n, FBNET_LAYERS * len(FBNET_OPS) + 1))
    cols = np.arange(FBNET_LAYERS) * len(FBNET_OPS) + op_idx
    x[np.arange(n)[:, None], cols] = 1.0
    x[:, -1] = 1.0
    return x


def ofa_arrays_features(ks: np.ndarray, e: np.ndarray, d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """OFA features from arrays ``ks, e [n,20]``, ``d [n,5]``, ``r [n]``.

    Per block slot (block, ks, e): active * relative output area, and active * 1; then stem area, head area,
    a constant for the fixed head layers and a constant 1.
    """
    ks, e, d = (np.asarray(v, dtype=np.int64) for v in (ks, e, d))
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    n = ks.shape[0]
    area, stem, head = _ofa_area(r)
    active = (np.arange(4)[None, None, :] < d[:, :, None]).reshape(n, OFA_BLOCKS)
    kidx = np.searchsorted(np.array(OFA_KS), ks)
    eidx = np.searchsorted(np.array(OFA_E), e)
    slot = np.arange(OFA_BLOCKS)[None, :] * len(OFA_CHOICES) + kidx * len(OFA_E) + eidx
    x = np.zeros((n, OFA_NFEAT))
    rows = np.broadcast_to(np.arange(n)[:, None], slot.shape)
    x[rows, slot] = area * active
    x[rows, _OFA_NB + slot] = active.astype(np.float64)
    x[:, 2 * _OFA_NB] = stem
    x[:, 2 * _OFA_NB + 1] = head
    x[:, 2 * _OFA_NB + 2] = 1.0
    x[:, 2 * _OFA_NB + 3] = 1.0
    return x


# ------------------------------------------------------------------------------------------ validation
def _int_list(v: Any, field: str, length: int, allowed: Sequence[int]) -> list[int]:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(field, f"expected a list of {length} ints, got {type(v).__name__}")
    if len(v) != length:
        raise ConfigError(field, f"expected {length} values, got {len(v)}")
    out = []
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or int(x) != x or int(x) not in allowed:
            raise ConfigError(f"{field}.{i}", f"invalid value {x!r}", allowed)
        out.append(int(x))
    return out


COMPRESSION_KEYS = ("bits", "sparsity", "sparsity_pattern", "tokens")


def validate_arch(space: str, arch: Any, field: str = "arch") -> dict[str, Any]:
    """Check one arch dict of ``space`` (DESIGN.md contract 1) and return it normalised.

    Compression keys (``bits``, ``sparsity``, ``sparsity_pattern``, ``tokens``) are passed through untouched;
    :mod:`fitplan.predictors.latency` decides whether the device has data on them.
    """
    if not isinstance(arch, Mapping):
        raise ConfigError(field, f"expected an arch dict, got {type(arch).__name__}")
    extra = {k: arch[k] for k in arch if k in COMPRESSION_KEYS}
    if space == "fbnet":
        allowed = ("op_idx_list", "arch_str", *COMPRESSION_KEYS)
        unknown = [k for k in arch if k not in allowed]
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", "unknown key for space 'fbnet'", allowed)
        if "op_idx_list" not in arch:
            if "arch_str" not in arch:
                raise ConfigError(f"{field}.op_idx_list", "missing key (22 op indices 0..8)")
            names = arch["arch_str"]
            if not isinstance(names, (list, tuple)) or len(names) != FBNET_LAYERS:
                raise ConfigError(f"{field}.arch_str", f"expected a list of {FBNET_LAYERS} op names")
            bad = [i for i, s in enumerate(names) if s not in FBNET_OPS]
            if bad:
                raise ConfigError(f"{field}.arch_str.{bad[0]}", f"unknown op {names[bad[0]]!r}", FBNET_OPS)
            idx = [FBNET_OPS.index(s) for s in names]
        else:
            idx = _int_list(arch["op_idx_list"], f"{field}.op_idx_list", FBNET_LAYERS, range(len(FBNET_OPS)))
            if "arch_str" in arch:
                names = arch["arch_str"]
                if not isinstance(names, (list, tuple)) or len(names) != FBNET_LAYERS:
                    raise ConfigError(f"{field}.arch_str", f"expected a list of {FBNET_LAYERS} op names")
                for i, (s, j) in enumerate(zip(names, idx)):
                    if s != FBNET_OPS[j]:
                        raise ConfigError(f"{field}.arch_str.{i}",
                                          f"{s!r} disagrees with op_idx_list[{i}]={j} ({FBNET_OPS[j]!r})")
        return {"op_idx_list": idx, "arch_str": [FBNET_OPS[j] for j in idx], **extra}
    if space == "ofa_mbv3":
        allowed = ("ks", "e", "d", "r", *COMPRESSION_KEYS)
        unknown = [k for k in arch if k not in allowed]
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", "unknown key for space 'ofa_mbv3'", allowed)
        for k in ("ks", "e", "d", "r"):
            if k not in arch:
                raise ConfigError(f"{field}.{k}", "missing key")
        ks = _int_list(arch["ks"], f"{field}.ks", OFA_BLOCKS, OFA_KS)
        e = _int_list(arch["e"], f"{field}.e", OFA_BLOCKS, OFA_E)
        d = _int_list(arch["d"], f"{field}.d", 5, OFA_D)
        r = arch["r"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r != r or int(r) != r \
                or not OFA_R_RANGE[0] <= int(r) <= OFA_R_RANGE[1]:
            raise ConfigError(f"{field}.r", f"expected an int resolution in {OFA_R_RANGE[0]}..{OFA_R_RANGE[1]}, "
                                            f"got {r!r}")
        return {"ks": ks, "e": e, "d": d, "r": int(r), **extra}
    raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)


def featurize(space: str, archs: Sequence[Mapping[str, Any]], *, validate: bool = True) -> np.ndarray:
    """Feature matrix ``[len(archs), n_features]`` of arch dicts (validated unless ``validate=False``)."""
    if validate:
        archs = [validate_arch(space, a, f"archs.{i}") for i, a in enumerate(archs)]
    if space == "fbnet":
        if not archs:
            return np.zeros((0, FBNET_LAYERS * len(FBNET_OPS) + 1))
        return fbnet_arrays_features(np.array([a["op_idx_list"] for a in archs], dtype=np.int64))
    if space == "ofa_mbv3":
        if not archs:
            return np.zeros((0, OFA_NFEAT))
        return ofa_arrays_features(np.array([a["ks"] for a in archs]), np.array([a["e"] for a in archs]),
                                   np.array([a["d"] for a in archs]), np.array([a["r"] for a in archs]))
    raise UnknownNameError("latency-predictor space", space, PREDICTOR_SPACES)


def dataset_features(space: str) -> np.ndarray:
    """Features of the 5000 shipped archs of ``space`` (fast path from the arrays, no dicts)."""
    from fitplan.hw_profiles.latency_data import load_latency_dataset

    ds = load_latency_dataset(space)
    if space == "fbnet":
        return fbnet_arrays_features(ds.arrays["op_idx_list"])
    a = ds.arrays
    return ofa_arrays_features(a["ks"], a["e"], a["d"], a["r"])
