"""Analytic few-shot latency predictor for any registered search space, compression modelled per unit.

Why. The meta-learned predictor (:mod:`fitplan.predictors.latency`) needs a space with shipped multi-device
data (``fbnet``, ``ofa_mbv3``, default spec) and learns compression only as one whole-network factor per
effect. A device measured *here* (a local CPU, a calibration kit run) of *any* space needs a model that
uses nothing but the space's own analytic costs (:meth:`SearchSpace.unit_costs`) and that prices each
compression unit by its own bit-width, so that fp32, all-int8 and mixed 8/32-bit configs are predicted from
one fit (on ONNX Runtime CPUs static int8 QDQ can be *slower* than fp32; nothing is assumed about the sign).

Model. Every unit ``u`` of a config falls in a *class* -- ``"fp32"`` (32 bits, dense) or the compression it
uses, e.g. ``"bits=8"``, ``"sparsity=0.5:2:4"``, ``"bits=8+sparsity=0.5:unstructured"`` -- and costs
``z_u · w_class`` with the per-unit features ``z_u = [dense MACs/1e6, depthwise MACs/1e6, output activation
elements/1e5, 1 launch, strided depthwise MACs/1e6, unaligned depthwise MACs/1e6, parameters/1e5]``
(:data:`UNIT_FEATURES`;
depthwise MACs are :attr:`UnitCost.dw_macs <fitplan.search_spaces.base.UnitCost.dw_macs>`, dense MACs the
rest of ``macs``, strided depthwise MACs :attr:`UnitCost.strided_dw_macs
<fitplan.search_spaces.base.UnitCost.strided_dw_macs>` and unaligned ones :attr:`UnitCost.unaligned_dw_macs
<fitplan.search_spaces.base.UnitCost.unaligned_dw_macs>`, parts of ``dw_macs`` counted again; the launch is
counted for active units that do work). A mixed-precision config also pays for its precision *boundaries*
``β = [changes, activation elements/1e5 crossing them]`` (:data:`BOUNDARY_FEATURES`). The latency is::

    ms(cfg) = b + Σ_u z_u · w_class(u) + β · w_boundary,      b >= 0, w >= 0

Depthwise MACs are a feature of their own because they run at a very different speed per MAC than dense /
pointwise ones (low arithmetic intensity), and differently again in int8, so the int8/fp32 latency ratio
of an MBConv net can change with its kernel sizes and resolution. Spaces without depthwise convs have a zero
column (its coefficient stays at its tie).

Strided depthwise MACs carry an *extra* cost per MAC, for compressed classes only (fp32's is 0): int8
stride-2 depthwise kernels can be much slower per MAC than stride-1 ones, so an int8 net's cost depends on how
much of its depthwise work sits in the stride-2 blocks. Spaces that leave ``strided_dw_macs`` at 0 have a
zero column and fit as before. (The figures that motivated the depthwise split and this feature -- int8
depthwise ~5x an int8 dense MAC, strided ~3.5x -- were fitted on this machine's data measured with
fitplan's earlier int8 export, which left a third of the convs unfused; since that export was fixed, all-int8
nets here run at ~1.0x fp32, see :func:`fitplan.hw_profiles.measure.quantize_int8`.)

Unaligned depthwise MACs -- those of depthwise convs whose channel count is not a multiple of 16 -- carry an
extra cost for compressed classes the same way (``lam_dw_unaligned``). Why: ONNX Runtime's x86 int8
depthwise kernels work on vectors of 16 channels; ofa_mbv3's 72- and 120-channel expansions (expand ratio 3
in the first two stages) ran up to ~25 % slower in int8 than their MACs say. On the shipped dataset the
int8 in-sample residuals correlated +0.69 with the share of such MACs, and re-measuring configs in another
session reproduced those residuals (``benchmarks/predictor_local.py --remeasure``): structure, not noise.

Parameters (weight traffic, format 6): at batch 1 the late, channel-heavy pointwise convs of an MBConv net
read more weight bytes per MAC than the early ones; before this feature the in-sample residuals of fp32
configs correlated +0.45 with the share of MACs in expand-ratio-6 blocks. Shrunk toward 0 in the tied stage
(``lam_params``, weak).

Precision boundaries (format 6): every change between a float and a compressed unit is a Quantize or
Dequantize plus layout reorders that no unit owns; before these features the in-sample residual of mixed
configs correlated +0.70 with their number of changes. Their costs are shrunk toward 0 in the tied stage
(``lam_boundary``, strong: with few mixed samples they stay small) and fitted in the free stage.

Mixed-precision graphs: the *compressed* units of a config that also runs uncompressed units form classes of
their own, ``"<class>@mixed"`` (e.g. ``"bits=8@mixed"``, :func:`mixed_class`), fitted like any compressed
class and shrunk toward the same class in pure graphs (``lam_mixed`` on the factor, ``lam_dev`` on the
coefficients). Why: on ONNX Runtime's x86 CPU EP an int8 unit inside a mixed graph does not cost what it
costs in an all-int8 graph. With fitplan's earlier mixed export (only the convs of 8-bit units quantized) it
cost ~1.4x, nearly all per activation element (Dequantize/Quantize and reorders around every int8 conv); the
export now quantizes every op of those units (:func:`fitplan.hw_profiles.measure.quantize_int8`), yet
precision boundaries still cost. On the shipped dataset re-measured with that export (a third of its mixed
configs float-first / int8-first splits), N=20 calibrations (``benchmarks/predictor_local.py``) reached 77 %
of predictions within ±10 % with the class and 71 % without (mixed configs 67 % vs 54 %; Spearman 0.952 vs
0.937); labelling only the int8 units next to a float one did no better (75 %). With the unaligned-depthwise,
weight-traffic and boundary features (format 6): N=10 Spearman 0.946 / 71 % within ±10 %, N=20 0.973 / 87 %
(fp32 95, int8 84, mixed 84), N=40 0.979 / 91 %; in-sample 96 % (was 86 %). The three features come from
correlations of the in-sample residuals; their shrinkage defaults were chosen on the same dataset (as the
other defaults were), so a new machine's numbers may be lower. Per unit, int8 is cheaper
than fp32 for dense (pointwise) MACs and dearer for depthwise MACs and activations, so a net that keeps its
early layers float and its late ones int8 can run faster than both pure versions of its architecture
(``benchmarks/mixed_precision.py``). A predictor fitted without mixed samples prices a mixed config's
compressed units with their pure-graph class. (Format 4 states priced the *float* units of mixed graphs as a
class ``"fp32@mixed"`` instead, :data:`MIXED_BASE_CLASS`; they still load and predict as they did.)

Source prior. With N = 5-10 samples the fit above has more cost terms than data (a mixed class and its
boundary costs from 3 mixed samples), yet the *shape* of these costs -- which features cost what, relative to
each other -- carries over between machines of one kind far better than their speed does: the model
fitted on all of one cloud VM's measurements predicted another VM's ranking with Spearman 0.98 while its
milliseconds were off by 2x overall and by a different factor for int8. So :meth:`CostModelPredictor.fit`
takes a ``prior`` model of another device (:func:`source_prior`: the one fitted on the shipped measured
dataset of builtin profile ``local-cpu-1t``) and (1) rescales it to the samples by one factor per class
group (fp32 with the intercept and the boundary costs; each compressed class, its factor shrunk toward
fp32's by ``lam_prior_scale``), then (2) fits every coefficient shrunk toward the rescaled prior (``lam_prior``
on the compressed classes and boundaries, where samples are scarce; the weaker ``lam_prior_base`` on fp32 and
the intercept, which every sample informs), with the same Huber IRLS. A class the samples lack stays unknown.
Because a prior from an unlike device (a GPU, a phone runtime) would mislead,
:func:`fit_with_source_prior` fits with and without it and keeps the prior unless the plain fit
cross-validates better on the samples by more than one standard error (:func:`prefer_prior`);
``calibrate_predictor`` and the planner's local fit use it. Measured
(``benchmarks/predictor_local.py``, this machine's datasets measured on three VMs -- the shipped one,
``benchmarks/data/local_cpu_1t_ofa_mbv3_vm2.jsonl`` (both Intel Xeon) and
``benchmarks/data/local_cpu_1t_ofa_mbv3_vm3_epyc.jsonl`` (AMD EPYC) -- calibrated with the shipped one as prior,
the shipped one with VM 2's; a third of the samples per variant, 30 draws; Spearman / share within ±10 %;
latencies are the geometric mean of a config's measured attempts,
:func:`fitplan.hw_profiles.measure.combined_records`)::

    target (prior)       N   plain           with prior      fit_with_source_prior
    VM 2 (shipped)      10   0.957 / 76 %    0.986 / 89 %    0.985 / 87 %
                        20   0.985 / 89 %    0.989 / 91 %    0.989 / 91 %
    shipped (VM 2)      10   0.945 / 73 %    0.979 / 90 %    0.978 / 89 %
                        20   0.970 / 85 %    0.982 / 93 %    0.982 / 93 %
    VM 3, AMD (shipped) 10   0.978 / 85 %    0.984 / 88 %    0.983 / 88 %
                        20   0.986 / 91 %    0.990 / 92 %    0.988 / 92 %

Mixed-precision configs gain most (VM 2, N=10: 63 -> 78 %). The cross-validated choice
(:func:`prefer_prior`, a one-standard-error rule; the lower CV mean alone lost 1-3 points at N=10) costs
0-2 points against always using the prior; it is the guard against a prior from an unlike device. The two
penalties were chosen on the two Xeon directions (lam_prior 10-100 differed by < 1 point; lam_prior_base 1 beat
0.1-10 by ~1 point). On VM 3, int8 runs at fp32 speed, so the Xeon prior's int8 shape is off there (int8 configs
N=10: 96 % within ±10 % without the prior, 93 % with it) while it still helps the mixed ones (68 -> 76 %); the
penalties re-checked on all three directions (lam_prior 3 / 10, lam_prior_scale 0.3 / 3, lam_prior_base 3) moved
no direction by more than a point, so the defaults stay.

Fit (:meth:`CostModelPredictor.fit`), on relative errors because latencies span 10x and we score relative
error: every row is divided by the measured latency (non-negative least squares on ``X/y ≈ 1``).

1. *Tied* model: each compressed class costs a scalar multiple of fp32, ``w_c = s_c · v`` (one factor per
   class, found by a log-grid line search, coordinate-wise) -- except its depthwise-MAC coefficient, which
   is fitted on its own and only shrunk toward ``s_c · v_dw`` (``lam_dw_class``, weak: compression changes
   depthwise speed most), and its extra strided-depthwise coefficient, fitted on its own and shrunk toward 0
   (``lam_dw_strided``). The activation coefficient is shrunk toward 0 (``lam_act``) and the fp32
   depthwise-MAC coefficient toward the dense one (``lam_dw``), so with few samples the model is MACs +
   launches, with depthwise MACs priced apart only as far as the data ask for it.
2. *Free* model: every class gets its own coefficients, shrunk toward the tied solution (``lam_dev`` for the
   compressed classes, ``lam_act`` / ``lam_dw`` for the fp32 activation / depthwise terms). With few
   compressed samples the fit stays at "compressed = s x fp32 per unit (depthwise apart)"; with many,
   per-unit int8 MAC and activation/launch costs separate.
3. Both stages are repeated with Huber weights on the relative residuals (IRLS), so one noisy measurement
   (a run disturbed by another process) does not pull the whole fit.

Penalties are in units of the relative prediction change (columns scaled by their RMS over the samples).
The defaults (:class:`CostModelHyper`) were chosen with ``benchmarks/predictor_local.py`` on this machine's
measured ofa_mbv3 datasets (the shipped one and a less noisy re-measurement, ``--data``); differences
between nearby settings were within the draw-to-draw noise. Splitting depthwise from dense MACs raised the
share of int8 / mixed predictions within ±10 % by ~5 points at N = 10-40 (fp32 unchanged); the extra
strided-depthwise cost raised int8 by a further ~5-8 points (Spearman .93 -> .94-.95), mixed and fp32
unchanged.

Unknown effects. A class that no calibration sample contains (e.g. ``bits=8`` when only fp32 configs were
measured) has no data: :meth:`~CostModelPredictor.predict` raises :class:`~fitplan.errors.ConfigError`
naming the config's field (``unknown="raise"``, default) or prices those units as fp32 and reports the
effect in :meth:`~CostModelPredictor.predict_with_flags` (``unknown="fp32"``) -- exactly as
:class:`~fitplan.predictors.latency.AdaptedPredictor` does. It never invents a speed-up.

State: :meth:`~CostModelPredictor.state_dict` is plain JSON (format ``fitplan.analytic_latency``, version
:data:`ANALYTIC_FORMAT_VERSION`), storable under ``profile.predictors[space]`` or in a file with
:meth:`~CostModelPredictor.save`. Version 4 added the mixed-graph class :data:`MIXED_BASE_CLASS`; version 3 states
(the same five features, no such class: mixed configs priced as before) still load, as do version 4 states
(:data:`MIXED_BASE_CLASS`); version 5 prices compressed units of mixed graphs by ``"<class>@mixed"`` classes;
older states (version 2:
no strided-depthwise feature; version 1: one MAC column) are refused with a :class:`~fitplan.errors.ConfigError`
asking to recalibrate.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from functools import lru_cache
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.jsonio import check_finite, load_versioned, save_versioned
from fitplan.predictors.samples import iter_samples

ANALYTIC_FORMAT = "fitplan.analytic_latency"
ANALYTIC_FORMAT_VERSION = 6
#: versions :meth:`CostModelPredictor.from_state` reads (3: no mixed-graph class; 4: the float units of mixed
#: graphs as :data:`MIXED_BASE_CLASS`; 3-5: no unaligned-depthwise feature, read with its coefficient 0).
READABLE_VERSIONS = (3, 4, 5, 6)
#: per-unit features, in order (names stored in the state; a state with other names is refused).
UNIT_FEATURES = ("dense_macs_1e6", "dw_macs_1e6", "act_elems_1e5", "launches", "strided_dw_macs_1e6",
                 "unaligned_dw_macs_1e6", "params_1e5")
#: the features of format 3-5 states (the first five of :data:`UNIT_FEATURES`).
_V5_FEATURES = UNIT_FEATURES[:5]
_FEATURE_SCALE = np.array([1e6, 1e6, 1e5, 1.0, 1e6, 1e6, 1e5])
#: per-config features of the precision boundaries of mixed-precision graphs (appended after the class
#: columns): how many times the precision changes between consecutive working units, and the activation
#: elements (/1e5) that cross those changes. Why: each change is a Quantize / Dequantize plus layout
#: reorders that no unit owns; on this machine's dataset the in-sample residual of mixed configs correlated
#: +0.70 with their number of changes before these features.
BOUNDARY_FEATURES = ("precision_changes", "boundary_act_elems_1e5")
#: class of uncompressed units (32-bit, dense); the reference the compressed classes are tied to.
BASE_CLASS = "fp32"
#: suffix of the class of compressed units in a config that also runs uncompressed units (a *mixed-precision
#: graph*): ``"bits=8@mixed"``. Why apart: on ONNX Runtime's x86 CPU EP the int8 units of a mixed QDQ graph
#: pay layout reorders and Quantize/Dequantize at the precision boundaries that an all-int8 graph does not
#: (module doc).
MIXED_SUFFIX = "@mixed"
#: format-4 states only: the class of the *uncompressed* units of mixed graphs (read, no longer fitted).
MIXED_BASE_CLASS = "fp32" + MIXED_SUFFIX
#: fewest distinct calibration configs accepted.
MIN_SAMPLES = 3
_ACT = UNIT_FEATURES.index("act_elems_1e5")
_PAR = UNIT_FEATURES.index("params_1e5")
_DENSE = UNIT_FEATURES.index("dense_macs_1e6")
_DW = UNIT_FEATURES.index("dw_macs_1e6")
_SDW = UNIT_FEATURES.index("strided_dw_macs_1e6")
_UDW = UNIT_FEATURES.index("unaligned_dw_macs_1e6")
#: features that are an *extra* cost of compressed classes only (fp32's coefficient stays 0), each shrunk
#: toward 0 in the tied stage by its own penalty (:class:`CostModelHyper`).
_EXTRA = (_SDW, _UDW)


@dataclass(frozen=True)
class CostModelHyper:
    """Fit settings (see the module docstring).

    Attributes:
        lam_dev: shrinkage of a compressed class's coefficients toward ``s_c`` x the fp32 ones (a mixed-graph class's
            toward its pure-graph class's, times the ratio of their factors).
        lam_act: shrinkage of the activation-traffic coefficient (toward 0 in the tied stage, toward the tied
            value in the free stage).
        lam_dw: shrinkage of the fp32 depthwise-MAC coefficient toward the dense-MAC one in the tied stage,
            and toward its tied value in the free stage (large: one MAC coefficient, as if depthwise and
            dense MACs cost the same).
        lam_dw_class: shrinkage of a compressed class's depthwise-MAC coefficient toward ``s_c`` x the fp32
            one in the tied stage.
        lam_dw_strided: shrinkage of a compressed class's extra cost per *strided* depthwise MAC toward 0 in
            the tied stage (fp32 has none: its strided depthwise MACs cost what its other ones do).
        lam_dw_unaligned: the same for a compressed class's extra cost per depthwise MAC on a channel count
            that is not a multiple of 16 (:attr:`UnitCost.unaligned_dw_macs
            <fitplan.search_spaces.base.UnitCost.unaligned_dw_macs>`).
        lam_params: shrinkage of the weight-traffic coefficient (per parameter) toward 0 in the tied stage and
            toward its tied value in the free stage (weak: late-stage pointwise convs with large weights
            run slower per MAC than their MACs say).
        lam_boundary: shrinkage of the precision-boundary costs (:data:`BOUNDARY_FEATURES`) toward 0 in the
            tied stage (toward the tied value, with ``lam_dev``, in the free stage).
        lam_prior: only when fitted with a ``prior`` model (:meth:`CostModelPredictor.fit`): shrinkage of every
            compressed-class and boundary coefficient toward the prior's, rescaled per class to the samples
            (module doc, "Source prior").
        lam_prior_base: the same fit: the (weaker) shrinkage of the fp32 coefficients and the intercept, which
            every sample informs.
        lam_prior_scale: the same fit: shrinkage of a compressed class's rescaling factor toward fp32's.
        lam_mixed: prior weight on ``log(s_mixed / s_c)²``, a mixed-graph class's factor (``"<c>@mixed"``,
            :data:`MIXED_SUFFIX`) relative to its pure-graph class's: a few mixed samples with ordinary noise
            then leave it near the pure class, a real slow-down still shows.
        huber: Huber threshold in robust standard deviations of the relative residuals (0: plain least squares).
        irls_iters: reweighting rounds when ``huber > 0``.
        factor_min, factor_max, factor_grid: log-grid of the per-class factor ``s_c`` (refined to ~1 %).
    """

    lam_dev: float = 3.0
    lam_act: float = 1.0
    lam_dw: float = 1.0
    lam_dw_class: float = 0.01
    lam_dw_strided: float = 1.0
    lam_dw_unaligned: float = 10.0
    lam_boundary: float = 100.0
    lam_params: float = 0.1
    lam_mixed: float = 0.05
    lam_prior: float = 30.0
    lam_prior_base: float = 1.0
    lam_prior_scale: float = 1.0
    huber: float = 1.5
    irls_iters: int = 5
    factor_min: float = 0.05
    factor_max: float = 20.0
    factor_grid: int = 61

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, field_name: str = "hyper") -> CostModelHyper:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(field_name, "expected an object of fit settings", list(cls().to_dict()))
        known = cls().to_dict()
        out = {}
        for k, v in d.items():
            if k not in known:
                raise ConfigError(f"{field_name}.{k}", "unknown setting", list(known))
            if k in ("irls_iters", "factor_grid"):
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "irls_iters" else 3):
                    raise ConfigError(f"{field_name}.{k}", f"expected an integer >= "
                                                           f"{0 if k == 'irls_iters' else 3}, got {v!r}")
                out[k] = v
            else:
                out[k] = check_finite(f"{field_name}.{k}", v, positive=k.startswith("factor"))
                if out[k] < 0:
                    raise ConfigError(f"{field_name}.{k}", f"must be >= 0, got {v!r}")
        h = cls(**{**known, **out})
        if h.factor_min >= h.factor_max:
            raise ConfigError(f"{field_name}.factor_max", "must be larger than factor_min")
        return h


def unit_class(bits: Any, sparsity: Any, pattern: Any) -> str:
    """Class label of one unit: ``"fp32"``, ``"bits=8"``, ``"sparsity=0.5:2:4"``, ``"bits=8+sparsity=..."``."""
    parts = []
    if int(bits) != 32:
        parts.append(f"bits={int(bits)}")
    if float(sparsity) > 0:
        parts.append(f"sparsity={float(sparsity):g}:{pattern}")
    return "+".join(parts) or BASE_CLASS


def mixed_class(label: str) -> str:
    """Class of a compressed unit of class ``label`` inside a mixed-precision graph: ``"bits=8@mixed"``."""
    return label + MIXED_SUFFIX


def pure_class(label: str) -> str | None:
    """The pure-graph class of a mixed-graph class (``"bits=8@mixed"`` -> ``"bits=8"``), else ``None``."""
    return label[:-len(MIXED_SUFFIX)] if label.endswith(MIXED_SUFFIX) else None


def _space_of(space: Any) -> Any:
    from fitplan.search_spaces import create_space

    if isinstance(space, (str, Mapping)):
        try:
            return create_space(space)
        except UnknownNameError as e:
            raise ConfigError("space", str(e)) from None
        except TypeError as e:  # bad spec keyword
            raise ConfigError("space", f"invalid space spec ({e})") from None
    if not hasattr(space, "unit_costs") or not hasattr(space, "spec"):
        raise ConfigError("space", f"expected a search space, its name or spec, got {type(space).__name__}")
    return space


class UnitFeaturizer:
    """Per-unit features and classes of configs of one space (unit costs memoised on the architecture keys;
    compression does not change them)."""

    def __init__(self, space: Any, cache_size: int = 50_000):
        self.space = space
        self._arch_keys = [d.name for d in space.arch_dimensions()]
        self._n_units = len(space.units())
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._labels: dict[tuple, str] = {}

    def _z(self, cfg: Mapping[str, Any]) -> np.ndarray:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in (cfg.get(k) for k in self._arch_keys))
        z = self._cache.get(key)
        if z is None:
            units = self.space.unit_costs(cfg)
            z = np.array([[u.macs - u.dw_macs, u.dw_macs, u.act_elems,
                           1.0 if u.active and (u.macs > 0 or u.act_elems > 0) else 0.0,
                           getattr(u, "strided_dw_macs", 0), getattr(u, "unaligned_dw_macs", 0), u.params]
                          for u in units], dtype=np.float64).reshape(len(units), len(UNIT_FEATURES))
            z /= _FEATURE_SCALE
            self._cache[key] = z
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return z

    def classes(self, cfg: Mapping[str, Any]) -> list[str]:
        """Class label of every unit of one config (:func:`unit_class`, memoised per (bits, sparsity))."""
        n = self._n_units
        bits = cfg.get("bits", [32] * n)
        sp = cfg.get("sparsity", [0.0] * n)
        pattern = cfg.get("sparsity_pattern", "unstructured")
        memo = self._labels
        out = []
        for b, s in zip(bits, sp):
            key = (b, s, pattern)
            lab = memo.get(key)
            if lab is None:
                lab = memo[key] = unit_class(b, s, pattern)
            out.append(lab)
        return out

    def design(self, configs: Sequence[Mapping[str, Any]], classes: Sequence[str], fallback: str | None = None
               ) -> tuple[np.ndarray, list[list[str]]]:
        """Design rows ``[n, 1 + J * len(classes) + len(BOUNDARY_FEATURES)]`` (intercept, then per class the summed
        unit features, then the precision-boundary features) and,
        per config, the classes of working units that are not in ``classes`` (their features go to the
        ``fallback`` class's columns when given, else they are dropped).

        In a config whose working units are partly uncompressed and partly compressed (a mixed graph), a
        compressed unit of class ``c`` is labelled ``"c@mixed"`` (:func:`mixed_class`) when ``classes`` is
        empty (discovering the labels) or has that class; else it keeps ``c`` (a predictor fitted without
        mixed samples). Format-4 classes (:data:`MIXED_BASE_CLASS` in ``classes``) label the uncompressed
        units of mixed graphs instead, as those states were fitted; format 3 splits nothing."""
        j = len(UNIT_FEATURES)
        pos = {c: k for k, c in enumerate(classes)}
        fb = pos.get(fallback, -1) if fallback is not None else -1
        legacy = MIXED_BASE_CLASS in pos
        split_mixed = not classes or legacy or any(c.endswith(MIXED_SUFFIX) for c in pos)
        n, u, c = len(configs), self._n_units, len(classes)
        z = np.zeros((n, u, j))
        onehot = np.zeros((n, u, c))
        missing: list[list[str]] = []
        for i, cfg in enumerate(configs):
            zi = self._z(cfg)
            z[i] = zi
            miss = set()
            labels = self.classes(cfg)
            if split_mixed:
                working = {lab for k, lab in enumerate(labels) if zi[k].any()}
                if BASE_CLASS in working and len(working) > 1:
                    if legacy:
                        labels = [MIXED_BASE_CLASS if lab == BASE_CLASS else lab for lab in labels]
                    else:
                        labels = [lab if lab == BASE_CLASS or (classes and mixed_class(lab) not in pos)
                                  else mixed_class(lab) for lab in labels]
            for k, lab in enumerate(labels):
                col = pos.get(lab, -1)
                if col < 0:
                    if not zi[k].any():
                        continue  # an inactive unit: its class does not matter
                    miss.add(lab)
                    col = fb
                if col >= 0:
                    onehot[i, k, col] = 1.0
            missing.append(sorted(miss))
        x = np.empty((n, 1 + j * c + len(BOUNDARY_FEATURES)))
        x[:, 0] = 1.0
        x[:, 1:1 + j * c] = np.einsum("nuc,nuj->ncj", onehot, z).reshape(n, c * j)
        x[:, 1 + j * c:] = [self.boundaries(cfg, z[i]) for i, cfg in enumerate(configs)]
        return x, missing

    def boundaries(self, cfg: Mapping[str, Any], zi: np.ndarray) -> list[float]:
        """:data:`BOUNDARY_FEATURES` of one config: precision changes between consecutive working units (in
        unit order, which follows the network) and the output activation elements (/1e5) of the unit before
        each change."""
        bits = cfg.get("bits", [32] * self._n_units)
        work = [k for k in range(len(zi)) if zi[k].any()]
        cuts = [a for a, b in zip(work, work[1:]) if (bits[a] == 32) != (bits[b] == 32)]
        return [float(len(cuts)), float(sum(zi[a, _ACT] for a in cuts))]


def _nnls_rel(x: np.ndarray, y: np.ndarray, wts: np.ndarray, lam: np.ndarray, ref: np.ndarray,
              scale: np.ndarray, ties: Sequence[tuple[int, int, float, float]] = ()) -> tuple[np.ndarray, float]:
    """``min Σ wts_i² (x_i·w / y_i - 1)² + Σ_k lam_k scale_k² (w_k - ref_k)² + Σ_(a,b,l,m) l scale_a² (w_a - m w_b)²``,
    ``w >= 0``; returns (w, loss). ``ties`` pull coefficient ``a`` toward ``m`` times coefficient ``b``."""
    from scipy.optimize import nnls

    a = x / y[:, None] * wts[:, None]
    b = wts.astype(np.float64).copy()
    pen = lam > 0
    rows, rhs = [], []
    if pen.any():
        d = np.zeros((int(pen.sum()), x.shape[1]))
        d[np.arange(d.shape[0]), np.flatnonzero(pen)] = np.sqrt(lam[pen]) * scale[pen]
        rows.append(d)
        rhs.append(d @ ref)
    ties = [t for t in ties if t[2] > 0]
    if ties:
        d = np.zeros((len(ties), x.shape[1]))
        for r, (ka, kb, lt, mult) in enumerate(ties):
            d[r, ka] = math.sqrt(lt) * scale[ka]
            d[r, kb] = -math.sqrt(lt) * scale[ka] * mult
        rows.append(d)
        rhs.append(np.zeros(len(ties)))
    if rows:
        a = np.vstack([a] + rows)
        b = np.concatenate([b] + rhs)
    try:
        w, _ = nnls(a, b, maxiter=50 * x.shape[1])
    except RuntimeError:  # iteration limit on an ill-conditioned system: bounded least squares instead
        from scipy.optimize import lsq_linear

        w = np.maximum(lsq_linear(a, b, bounds=(0.0, np.inf)).x, 0.0)
    r = a @ w - b
    return w, float(r @ r)


@dataclass
class _Fit:
    intercept: float
    coef: dict[str, np.ndarray]
    factors: dict[str, float]
    boundary: np.ndarray


def _fit_weighted(x: np.ndarray, y: np.ndarray, classes: Sequence[str], wts: np.ndarray,
                  h: CostModelHyper) -> _Fit:
    """Tied stage (per-class factor line search), then the free stage shrunk toward it (module doc)."""
    j = len(UNIT_FEATURES)
    nb = len(BOUNDARY_FEATURES)
    base = classes.index(BASE_CLASS)
    x = x.copy()
    for f in _EXTRA:  # fp32 has no extra strided / unaligned depthwise cost (its coefficients stay 0)
        x[:, 1 + j * base + f] = 0.0
    blocks = [x[:, 1 + j * k:1 + j * (k + 1)] for k in range(len(classes))]
    comp = [k for k, c in enumerate(classes) if c != BASE_CLASS]
    # a mixed-graph class's factor is tied (weakly) to its pure-graph class's factor
    parent = {k: classes.index(pure_class(classes[k])) for k in comp if pure_class(classes[k]) in classes}
    factors = {k: 1.0 for k in comp}
    grid = np.exp(np.linspace(math.log(h.factor_min), math.log(h.factor_max), h.factor_grid))
    step = (math.log(h.factor_max) - math.log(h.factor_min)) / max(h.factor_grid - 1, 1)
    lam_t = np.zeros(1 + j)
    lam_t[1 + _ACT] = h.lam_act
    lam_t[1 + _PAR] = h.lam_params
    lam_extra = {_SDW: h.lam_dw_strided, _UDW: h.lam_dw_unaligned}
    lam_t = np.concatenate([lam_t, np.zeros(len(comp))] + [np.full(len(comp), lam_extra[f]) for f in _EXTRA]
                           + [np.full(nb, h.lam_boundary)])
    bnd = x[:, 1 + j * len(classes):]  # precision-boundary columns (all 0 without mixed samples)

    def tied(fac: Mapping[int, float]) -> tuple[np.ndarray, float]:
        # [1, fp32 + Σ s_c · class c features, then per compressed class its own depthwise-MAC column, then
        # per extra feature (strided, unaligned depthwise MACs) per compressed class its own column (shrunk
        # toward 0)]
        merged = blocks[base] + sum((fac[k] * blocks[k] for k in comp), 0.0)
        merged[:, _DW] = blocks[base][:, _DW]
        merged[:, list(_EXTRA)] = 0.0
        xr = np.column_stack([x[:, 0], merged] + [blocks[k][:, _DW] for k in comp]
                             + [blocks[k][:, f] for f in _EXTRA for k in comp] + [bnd])
        sc = np.sqrt(np.mean((xr / y[:, None]) ** 2, axis=0)) + 1e-12
        ties = [(1 + _DW, 1 + _DENSE, h.lam_dw, 1.0)] + [(1 + j + i, 1 + _DW, h.lam_dw_class, fac[k])
                                                         for i, k in enumerate(comp)]
        w_t, loss = _nnls_rel(xr, y, wts, lam_t, np.zeros(xr.shape[1]), sc, ties)
        return w_t, loss + sum(h.lam_mixed * math.log(fac[k] / fac[p]) ** 2 for k, p in parent.items())

    for _ in range(2 if len(comp) > 1 else 1):  # coordinate search over the class factors (pure classes first)
        for k in sorted(comp, key=lambda k: k in parent):
            vals = [tied({**factors, k: s})[1] for s in grid]
            best = float(grid[int(np.argmin(vals))])
            fine = best * np.exp(np.linspace(-step, step, 11))
            fvals = [tied({**factors, k: s})[1] for s in fine]
            factors[k] = float(fine[int(np.argmin(fvals))])
    vt, _ = tied(factors)
    v = vt[:1 + j]
    ref = np.zeros(x.shape[1])
    ref[0] = v[0]
    lam = np.zeros(x.shape[1])
    ties: list[tuple[int, int, float, float]] = []
    for k in range(len(classes)):
        sl = slice(1 + j * k, 1 + j * (k + 1))
        if k == base:
            ref[sl] = v[1:]
            lam[1 + j * k + _ACT] = h.lam_act
            lam[1 + j * k + _PAR] = h.lam_params
            lam[1 + j * k + _DW] = h.lam_dw
        elif k in parent:  # mixed-graph class: shrunk toward its pure class's (free) coefficients x s / s_pure
            ties += [(1 + j * k + f, 1 + j * parent[k] + f, h.lam_dev, factors[k] / factors[parent[k]])
                     for f in range(j)]
        else:
            ref[sl] = factors[k] * v[1:]
            ref[1 + j * k + _DW] = vt[1 + j + comp.index(k)]
            for e, f in enumerate(_EXTRA):
                ref[1 + j * k + f] = vt[1 + j + (1 + e) * len(comp) + comp.index(k)]
            lam[sl] = h.lam_dev
    ref[-nb:] = vt[-nb:]  # boundary costs: shrunk toward their tied values
    lam[-nb:] = h.lam_dev
    scale = np.sqrt(np.mean((x / y[:, None]) ** 2, axis=0)) + 1e-12
    w, _ = _nnls_rel(x, y, wts, lam, ref, scale, ties)
    coef = {c: w[1 + j * k:1 + j * (k + 1)].copy() for k, c in enumerate(classes)}
    boundary = w[-nb:].copy()
    eff = _effective_factors(x, classes, coef, {classes[k]: f for k, f in factors.items()})
    return _Fit(float(w[0]), coef, eff, boundary)


def _effective_factors(x: np.ndarray, classes: Sequence[str], coef: Mapping[str, np.ndarray],
                       fallback: Mapping[str, float]) -> dict[str, float]:
    """Per compressed class, what its units of the samples ``x`` cost relative to fp32 (the reported factor:
    with depthwise MACs priced apart, a tied ``s_c`` alone would understate a class whose depthwise convs
    are the slow part)."""
    j = len(UNIT_FEATURES)
    eff = {}
    for k, c in enumerate(classes):
        if c == BASE_CLASS:
            continue
        block = x[:, 1 + j * k:1 + j * (k + 1)]
        num, den = float(np.sum(block @ coef[c])), float(np.sum(block @ coef[BASE_CLASS]))
        eff[c] = num / den if num > 0 and den > 0 else float(fallback.get(c, 1.0))
    return eff


def _fit_toward_prior(x: np.ndarray, y: np.ndarray, classes: Sequence[str], wts: np.ndarray, h: CostModelHyper,
                      w_prior: np.ndarray) -> _Fit:
    """Prior-anchored fit (module doc, "Source prior"): rescale the prior per class group to the samples,
    then fit every coefficient shrunk toward the rescaled prior."""
    j, nb = len(UNIT_FEATURES), len(BOUNDARY_FEATURES)
    base = classes.index(BASE_CLASS)
    x = x.copy()
    for f in _EXTRA:
        x[:, 1 + j * base + f] = 0.0
    groups = []
    for k in range(len(classes)):
        g = np.zeros(x.shape[1], bool)
        g[1 + j * k:1 + j * (k + 1)] = True
        if k == base:  # fp32 carries the intercept and the precision-boundary costs
            g[0] = True
            g[-nb:] = True
        groups.append(g)
    contrib = np.column_stack([x[:, g] @ w_prior[g] for g in groups])
    sc = np.sqrt(np.mean((contrib / y[:, None]) ** 2, axis=0)) + 1e-12
    ties = [(k, base, h.lam_prior_scale, 1.0) for k in range(len(classes)) if k != base]
    scales, _ = _nnls_rel(contrib, y, wts, np.zeros(len(groups)), np.zeros(len(groups)), sc, ties)
    ref = np.zeros(x.shape[1])
    for g, s_g in zip(groups, scales):
        ref[g] = s_g * w_prior[g]
    scale = np.sqrt(np.mean((x / y[:, None]) ** 2, axis=0)) + 1e-12
    lam = np.full(x.shape[1], h.lam_prior)
    lam[0] = h.lam_prior_base
    lam[1 + j * base:1 + j * (base + 1)] = h.lam_prior_base
    w, _ = _nnls_rel(x, y, wts, lam, ref, scale)
    coef = {c: w[1 + j * k:1 + j * (k + 1)].copy() for k, c in enumerate(classes)}
    return _Fit(float(w[0]), coef, _effective_factors(x, classes, coef, {}), w[-nb:].copy())


def fit_cost_model(x: np.ndarray, y: np.ndarray, classes: Sequence[str], h: CostModelHyper,
                   w_prior: np.ndarray | None = None) -> _Fit:
    """Robust (Huber IRLS) fit of the per-class cost model on design rows ``x`` (:meth:`UnitFeaturizer.design`);
    with ``w_prior`` (coefficients in the layout of ``x``) the prior-anchored fit instead of the tied one."""
    def weighted(wts: np.ndarray) -> _Fit:
        if w_prior is None:
            return _fit_weighted(x, y, classes, wts, h)
        return _fit_toward_prior(x, y, classes, wts, h, w_prior)

    wts = np.ones(len(y))
    fit = weighted(wts)
    if h.huber <= 0:
        return fit
    for _ in range(h.irls_iters):
        w = np.concatenate([[fit.intercept]] + [fit.coef[c] for c in classes] + [fit.boundary])
        r = x @ w / y - 1.0
        s = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-3
        u = np.abs(r) / (h.huber * s)
        new = np.where(u <= 1.0, 1.0, 1.0 / np.sqrt(np.maximum(u, 1e-12)))  # row weight = sqrt(Huber weight)
        if np.allclose(new, wts, atol=1e-3):
            break
        wts = new
        fit = weighted(wts)
    return fit


# ------------------------------------------------------------------------------------------ samples
def _prior_weights(prior: Any, space: Any, classes: Sequence[str]) -> np.ndarray:
    """The prior's coefficients in the layout of design rows over ``classes``; :class:`ConfigError` naming
    ``prior`` when it does not fit (another space spec, a class it lacks, a format-4 state)."""
    if not isinstance(prior, CostModelPredictor):
        raise ConfigError("prior", f"expected a CostModelPredictor, got {type(prior).__name__}")
    if prior.space.name != space.name:  # coefficients are per unit feature: any spec of one space shares them
        raise ConfigError("prior", f"the prior was fitted on space {prior.space.name!r}, not {space.name!r}")
    missing = [c for c in classes if c not in prior.coef]
    if missing or MIXED_BASE_CLASS in prior.coef:
        raise ConfigError("prior", f"the prior has no coefficients for classes {missing or [MIXED_BASE_CLASS]}",
                          prior.classes)
    return np.concatenate([[prior.intercept_ms]] + [np.asarray(prior.coef[c], dtype=np.float64) for c in classes]
                          + [np.asarray(prior.boundary_coef, dtype=np.float64)])


def validate_config(space: Any, cfg: Any, prefix: str) -> dict[str, Any]:
    """``space.validate(cfg)`` with the error's field prefixed (``samples.2.arch.ks.4``). The HELP datasets'
    informational ``arch_str`` key is dropped first."""
    if isinstance(cfg, Mapping) and "arch_str" in cfg:
        cfg = {k: v for k, v in cfg.items() if k != "arch_str"}
    try:
        return space.validate(cfg)
    except ConfigError as e:
        message = str(e).split(": ", 1)[-1].split(" (allowed:")[0]
        raise ConfigError(f"{prefix}.{e.field}", message, e.allowed) from None


def parse_cost_samples(space: Any, samples: Any) -> tuple[list[dict[str, Any]], np.ndarray, int]:
    """Validate ``[{"arch" | "config": cfg, "latency_ms": float}, ...]`` (or ``{"samples": [...]}``) against
    ``space``; returns (validated configs, ms, number of merged repeats).

    Repeated configs are merged into one sample (geometric mean of their latencies): repeats are
    measurements, not errors. Raises :class:`ConfigError` naming the field (``samples.3.latency_ms``,
    ``samples.2.arch.ks.4``) for anything malformed, and ``samples`` for too few distinct configs.
    """
    index: dict[str, int] = {}
    configs: list[dict[str, Any]] = []
    logs: list[list[float]] = []
    merged = 0
    for _, field_, cfg, ms in iter_samples(samples):
        cfg = validate_config(space, cfg, field_)
        key = json.dumps(cfg, sort_keys=True)
        if key in index:
            logs[index[key]].append(math.log(ms))
            merged += 1
            continue
        index[key] = len(configs)
        configs.append(cfg)
        logs.append([math.log(ms)])
    if len(configs) < MIN_SAMPLES:
        raise ConfigError("samples", f"need at least {MIN_SAMPLES} distinct measured configs, got {len(configs)} "
                                     "(10 or more recommended)")
    y = np.exp([float(np.mean(v)) for v in logs])
    return configs, y, merged


# ------------------------------------------------------------------------------------------ predictor
@dataclass
class CostModelPredictor:
    """Few-shot latency predictor of one device in one space spec: ``ms = b + Σ_u z_u · w_class(u)``.

    Build with :meth:`fit` from measured samples; :meth:`predict` works on any batch of configs of the space
    (validated configs are used as they are; :meth:`predict` validates unless ``validate=False``).

    Attributes:
        space: the search space (a :class:`~fitplan.search_spaces.base.SearchSpace`).
        intercept_ms: fixed per-inference cost ``b``.
        coef: per class, the ``len(UNIT_FEATURES)`` non-negative per-unit coefficients (ms per feature unit).
        factors: per compressed class, its cost factor ``s_c``: the class's units in the calibration samples
            cost ``s_c`` times what they would cost in fp32 (fitted coefficients; ``s_c > 1`` means compression
            is *slower* on this device). Informational: predictions use ``coef``.
        device: device name (free text).
        n_samples: distinct calibration configs used.
        hyper: fit settings.
        provenance: how the fit was made (method, sample counts per class, in-sample error).
    """

    space: Any
    intercept_ms: float
    coef: dict[str, np.ndarray]
    factors: dict[str, float] = field(default_factory=dict)
    device: str = "unknown"
    n_samples: int = 0
    hyper: CostModelHyper = field(default_factory=CostModelHyper)
    provenance: dict[str, Any] = field(default_factory=dict)
    boundary_coef: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.space = _space_of(self.space)
        self._feat = UnitFeaturizer(self.space)
        self._classes = [BASE_CLASS] + sorted(c for c in self.coef if c != BASE_CLASS)
        if self.boundary_coef is None:  # states before the boundary features: no boundary cost
            self.boundary_coef = np.zeros(len(BOUNDARY_FEATURES))
        self.boundary_coef = np.asarray(self.boundary_coef, dtype=np.float64)
        self._w = np.concatenate([[self.intercept_ms]] + [np.asarray(self.coef[c], dtype=np.float64)
                                                           for c in self._classes] + [self.boundary_coef])

    # -------------------------------------------------------------- fit
    @classmethod
    def fit(cls, space: Any, samples: Any, device: str = "unknown",
            hyper: CostModelHyper | Mapping[str, Any] | None = None,
            prior: CostModelPredictor | None = None) -> CostModelPredictor:
        """Fit to measured samples ``[{"arch" | "config", "latency_ms"}]`` of ``space`` (instance, name or spec).

        Needs at least :data:`MIN_SAMPLES` distinct configs, one of them with uncompressed units. Every
        compression class present in the samples gets coefficients; others stay unknown (module doc).
        ``prior``: a model of the same space spec fitted on another device (e.g. :func:`source_prior`) with
        every class the samples have; the fit then rescales it and shrinks toward it (module doc, "Source
        prior") instead of tying the compressed classes to fp32. A class the samples lack stays unknown even
        if the prior knows it.
        """
        space = _space_of(space)
        h = hyper if isinstance(hyper, CostModelHyper) else CostModelHyper.from_dict(hyper)
        configs, y, merged = parse_cost_samples(space, samples)
        feat = UnitFeaturizer(space)
        _, present = feat.design(configs, [])
        counts: dict[str, int] = {}
        for labels in present:
            for c in labels:
                counts[c] = counts.get(c, 0) + 1
        if BASE_CLASS not in counts:
            raise ConfigError("samples", "no sample has uncompressed (32-bit, dense) units: the fp32 costs the "
                                         "compressed classes are tied to are unknown; add fp32 or mixed configs")
        classes = [BASE_CLASS] + sorted(c for c in counts if c != BASE_CLASS)
        x, _ = feat.design(configs, classes)
        w_prior = None if prior is None else _prior_weights(prior, space, classes)
        fit = fit_cost_model(x, y, classes, h, w_prior)
        w = np.concatenate([[fit.intercept]] + [fit.coef[c] for c in classes] + [fit.boundary])
        ape = np.abs(x @ w - y) / y
        prov = {"method": "analytic per-unit cost model (dense MACs, depthwise MACs, activation elements, "
                          "launches, parameters, extra per strided / channel-unaligned depthwise MAC, per "
                          "compression "
                          "class; precision changes and the activations crossing them; intercept), "
                          "relative-error NNLS tied to fp32 then "
                          "shrunk, Huber IRLS",
                "space": space.spec(), "n_samples": len(configs), "merged_repeats": merged,
                "samples_per_class": dict(sorted(counts.items())),
                "calibration_in_sample_median_ape_pct": float(np.median(ape) * 100)}
        if prior is not None:
            prov["method"] += f"; shrunk toward a source prior rescaled per class (lam_prior={h.lam_prior:g})"
            prov["prior"] = {"device": prior.device, "n_samples": prior.n_samples,
                             "source": (prior.provenance or {}).get("source", "")}
        return cls(space, fit.intercept, fit.coef, fit.factors, device, len(configs), h, prov, fit.boundary)

    # -------------------------------------------------------------- predict
    @property
    def classes(self) -> list[str]:
        """Classes with coefficients (``"fp32"`` first)."""
        return list(self._classes)

    @property
    def effects(self) -> dict[str, float]:
        """Known compression effects as :class:`AdaptedPredictor` states them (``lat = fp32 · (1 - f · share)``,
        ``f = 1 - s_c``): ``{"bits=8": -1.1}`` means int8 units cost 2.1x their fp32 cost."""
        return {c: 1.0 - s for c, s in sorted(self.factors.items())}

    @property
    def models_compression(self) -> bool:
        """Whether any compression class has coefficients (the planner then adds no speed-up of its own)."""
        return len(self._classes) > 1

    def predict_with_flags(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any], validate: bool = True
                           ) -> tuple[np.ndarray, list[list[str]]]:
        """Predicted ms per config and, per config, the compression classes (``"bits=8"``, ...) this device
        has no data on (their units are priced as fp32)."""
        if isinstance(configs, Mapping):
            configs = [configs]
        configs = list(configs)
        if validate:
            configs = [self._validate(c, f"configs.{i}") for i, c in enumerate(configs)]
        x, missing = self._feat.design(configs, self._classes, fallback=BASE_CLASS)
        return x @ self._w, missing

    def predict(self, configs: Sequence[Mapping[str, Any]] | Mapping[str, Any], unknown: str = "raise",
                validate: bool = True) -> np.ndarray:
        """Predicted milliseconds, shape ``[len(configs)]`` (a single dict gives shape ``[1]``).

        ``unknown``: ``"raise"`` (default) raises :class:`ConfigError` naming ``configs.<i>.bits`` (or
        ``.sparsity``) when a config uses a compression this device has no data on; ``"fp32"`` prices those
        units as fp32 instead. ``validate=False`` skips config validation (configs already validated).
        """
        if unknown not in ("raise", "fp32"):
            raise ConfigError("unknown", f"invalid value {unknown!r}", ["raise", "fp32"])
        ms, flags = self.predict_with_flags(configs, validate=validate)
        if unknown == "raise":
            for i, f in enumerate(flags):
                if f:
                    key = "bits" if f[0].startswith("bits") else "sparsity"
                    raise ConfigError(f"configs.{i}.{key}",
                                      f"no {f[0]} latency data for device {self.device!r}: its cost is unknown "
                                      f"(calibrate with samples that use it, or pass unknown='fp32' for the "
                                      f"uncompressed prediction); known: {', '.join(self._classes)}")
        return ms

    def _validate(self, cfg: Any, f: str) -> dict[str, Any]:
        return validate_config(self.space, cfg, f)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (format :data:`ANALYTIC_FORMAT`; storable under ``profile.predictors[space]``)."""
        return {"format": ANALYTIC_FORMAT, "format_version": ANALYTIC_FORMAT_VERSION, **self._payload()}

    def _payload(self) -> dict[str, Any]:
        return {"space": self.space.spec(), "device": self.device, "n_samples": self.n_samples,
                "unit_features": list(UNIT_FEATURES), "intercept_ms": float(self.intercept_ms),
                "coef": {c: [float(v) for v in self.coef[c]] for c in self._classes},
                "boundary_features": list(BOUNDARY_FEATURES),
                "boundary_coef": [float(v) for v in self.boundary_coef],
                "factors": {c: float(v) for c, v in sorted(self.factors.items())},
                "hyper": self.hyper.to_dict(), "provenance": self.provenance,
                "note": "predicted latency in ms, batch as measured by the calibration samples"}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CostModelPredictor:
        """Rebuild from :meth:`state_dict` output; :class:`ConfigError` naming the field on a foreign, stale
        or malformed state."""
        if not isinstance(state, Mapping) or state.get("format") != ANALYTIC_FORMAT:
            raise ConfigError("format", "not a fitplan analytic latency-predictor state", [ANALYTIC_FORMAT])
        if state.get("format_version") not in READABLE_VERSIONS:
            raise ConfigError("format_version", f"unsupported version {state.get('format_version')!r} (version 3 "
                                                "added a compressed class's extra cost per strided depthwise MAC; "
                                                "recalibrate)",
                              list(READABLE_VERSIONS))
        names = list(state.get("unit_features") or [])
        legacy = state.get("format_version") in (3, 4, 5)
        if names != list(_V5_FEATURES if legacy else UNIT_FEATURES):
            raise ConfigError("unit_features", f"state was made with features {state.get('unit_features')!r}; "
                                               "recalibrate", [list(UNIT_FEATURES)])
        spec = state.get("space")
        if not isinstance(spec, Mapping) or "space" not in spec:
            raise ConfigError("space", "expected the space spec ({\"space\": name, ...})")
        coef = state.get("coef")
        if not isinstance(coef, Mapping) or BASE_CLASS not in coef:
            raise ConfigError("coef", f"expected {{class: [{len(UNIT_FEATURES)} floats]}} with a {BASE_CLASS!r} "
                                      "entry")
        arrs = {}
        for c, v in coef.items():
            a = np.asarray(v, dtype=np.float64) if isinstance(v, list) else np.zeros(0)
            if a.shape != (len(names),) or not np.isfinite(a).all() or (a < 0).any():
                raise ConfigError(f"coef.{c}", f"expected {len(names)} finite non-negative floats")
            arrs[str(c)] = np.concatenate([a, np.zeros(len(UNIT_FEATURES) - len(names))])  # new features: 0
        b = check_finite("intercept_ms", state.get("intercept_ms"))
        if b < 0:
            raise ConfigError("intercept_ms", f"must be >= 0, got {b!r}")
        factors = state.get("factors", {})
        if not isinstance(factors, Mapping):
            raise ConfigError("factors", "expected {class: float}")
        fac = {str(k): check_finite(f"factors.{k}", v, positive=True) for k, v in factors.items()}
        bcoef = state.get("boundary_coef")
        if bcoef is not None:
            if list(state.get("boundary_features") or []) != list(BOUNDARY_FEATURES):
                raise ConfigError("boundary_features", f"state was made with {state.get('boundary_features')!r}; "
                                                       "recalibrate", [list(BOUNDARY_FEATURES)])
            bcoef = np.asarray(bcoef, dtype=np.float64) if isinstance(bcoef, list) else np.zeros(0)
            if bcoef.shape != (len(BOUNDARY_FEATURES),) or not np.isfinite(bcoef).all() or (bcoef < 0).any():
                raise ConfigError("boundary_coef", f"expected {len(BOUNDARY_FEATURES)} finite non-negative floats")
        n = state.get("n_samples", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError("n_samples", f"expected a non-negative integer, got {n!r}")
        return cls(space=dict(spec), intercept_ms=b, coef=arrs, factors=fac, device=str(state.get("device", "unknown")),
                   n_samples=n, hyper=CostModelHyper.from_dict(state.get("hyper")),
                   provenance=dict(state.get("provenance") or {}), boundary_coef=bcoef)

    def save(self, path: str | Path) -> None:
        """Write the state as a versioned JSON file (:func:`fitplan.jsonio.save_versioned`)."""
        save_versioned(path, ANALYTIC_FORMAT, ANALYTIC_FORMAT_VERSION, self._payload())

    @classmethod
    def load(cls, path: str | Path) -> CostModelPredictor:
        """Read a file written by :meth:`save`."""
        return cls.from_state(load_versioned(path, ANALYTIC_FORMAT, READABLE_VERSIONS))


#: builtin profile whose shipped measured dataset is the source prior of :func:`source_prior`.
SOURCE_PRIOR_PROFILE = "local-cpu-1t"


@lru_cache(maxsize=8)
def _source_prior(name: str) -> CostModelPredictor | None:
    from fitplan.hw_profiles import get_profile
    from fitplan.hw_profiles.datasets import profile_samples
    from fitplan.search_spaces import create_space

    try:
        space = create_space(name)  # the shipped datasets are of the default spec
    except (UnknownNameError, TypeError):  # a space instance that is not registered: nothing shipped for it
        return None
    data = profile_samples(get_profile(SOURCE_PRIOR_PROFILE), space.name)
    if data is None or len(data) < 20:
        return None
    prior = CostModelPredictor.fit(space, data.to_calibration(), device=SOURCE_PRIOR_PROFILE)
    prior.provenance["source"] = f"builtin profile {SOURCE_PRIOR_PROFILE}: {data.provenance}"[:300]
    return prior


def source_prior(space: Any) -> CostModelPredictor | None:
    """The analytic model fitted on the shipped measured dataset of builtin profile
    :data:`SOURCE_PRIOR_PROFILE` in ``space``'s search space (``None`` where nothing is shipped). The data are
    of the default spec; the model's coefficients are per unit feature, so they serve as the prior of any
    spec of that space (on the MNIST-sized ofa_mbv3 variant of the examples, 60 configs measured here,
    20 draws: N=10 Spearman 0.86 -> 0.93 with the prior, 0.92 with the cross-validated choice of
    :func:`fit_with_source_prior`; N=20 0.93 either way). Rebuilt deterministically from the shipped JSONL on first
    use (about a second), then cached."""
    space = _space_of(space)
    return _source_prior(space.name)


def prefer_prior(err_plain: np.ndarray, err_prior: np.ndarray) -> bool:
    """One-standard-error rule between a fit with a prior and one without, from their per-sample
    cross-validated errors: keep the prior unless the plain fit's errors are lower by more than one standard
    error of the paired difference. Why not the lower mean: with ~10 samples the CV means are noisy, and the
    prior-anchored fit has far fewer effective parameters (it is the "simpler" model of the rule)."""
    d = np.asarray(err_prior, dtype=np.float64) - np.asarray(err_plain, dtype=np.float64)
    if not np.isfinite(d).all():
        return bool(np.isfinite(err_prior).all())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()) <= se


def fit_with_source_prior(space: Any, samples: Any, device: str = "unknown",
                          prior: CostModelPredictor | None | str = "source", folds: int = 10
                          ) -> CostModelPredictor:
    """:meth:`CostModelPredictor.fit` with and without ``prior`` (``"source"``: :func:`source_prior`), keeping
    the prior unless the plain fit cross-validates (leave-one-out, at most ``folds`` folds) clearly better on
    the samples (:func:`prefer_prior`): the prior helps on devices like its source and is dropped on devices
    unlike it. The choice and both errors are in ``provenance["prior_selected_by"]``; without a usable prior
    this is a plain fit."""
    space = _space_of(space)
    plain = CostModelPredictor.fit(space, samples, device=device)
    if isinstance(prior, str) and prior == "source":
        prior = source_prior(space)
    if prior is None:
        return plain
    configs, y, _ = parse_cost_samples(space, samples)
    try:
        with_prior = CostModelPredictor.fit(space, samples, device=device, prior=prior)
    except ConfigError as e:  # the samples have a class the prior lacks
        plain.provenance["prior_selected_by"] = {"chosen": "none", "why": str(e)}
        return plain
    items = [{"config": c, "latency_ms": float(v)} for c, v in zip(configs, y)]
    errs = cross_validated_errors(
        {name: (lambda tr, pr=pr: CostModelPredictor.fit(space, [items[i] for i in tr], device=device, prior=pr))
         for name, pr in (("plain", None), ("prior", prior))},
        configs, y, folds=folds, unknown="fp32", validate=False)
    pick = with_prior if prefer_prior(errs["plain"], errs["prior"]) else plain
    pick.provenance["prior_selected_by"] = {
        "rule": f"the prior unless the plain fit's cross-validated relative error (leave-one-out, at most {folds} "
                "folds) is lower by more than one standard error of the paired difference",
        "chosen": "prior" if pick is with_prior else "plain",
        "cv_mean_ape_pct": {k: (float(np.mean(v) * 100) if np.isfinite(v).all() else None) for k, v in errs.items()},
        "prior_device": prior.device}
    return pick


def cross_validated_errors(fits: Mapping[str, Any], configs: Sequence[Mapping[str, Any]], y: np.ndarray,
                           folds: int = 10, **predict_kw: Any) -> dict[str, np.ndarray]:
    """Per candidate model, :func:`loo_relative_errors` of ``fits[name](train_idx).predict(test configs,
    **predict_kw)`` on the same folds; a candidate that cannot be fitted on some fold (``ConfigError``, e.g.
    a fold without an uncompressed sample) gets infinite errors, so it is never chosen."""
    errs: dict[str, np.ndarray] = {}
    for name, fit in fits.items():
        def fit_predict(tr: np.ndarray, te: np.ndarray, fit: Any = fit) -> np.ndarray:
            return fit(tr).predict([configs[i] for i in te], **predict_kw)

        try:
            errs[name] = loo_relative_errors(fit_predict, configs, y, folds=folds)
        except ConfigError:
            errs[name] = np.full(len(y), np.inf)
    return errs


def loo_relative_errors(fit_predict: Any, configs: Sequence[Mapping[str, Any]], y: np.ndarray,
                        folds: int = 20, seed: int = 0) -> np.ndarray:
    """Held-out relative errors ``|pred/y - 1|`` of ``fit_predict(train_idx, test_idx) -> ms`` by
    leave-one-out (``len(y) <= folds``) or ``folds``-fold cross-validation (used to choose a method)."""
    n = len(y)
    idx = np.arange(n)
    groups = [np.array([i]) for i in idx] if n <= folds else np.array_split(
        np.random.default_rng(seed).permutation(n), folds)
    err = np.empty(n)
    for g in groups:
        tr = np.setdiff1d(idx, g)
        err[g] = np.abs(np.asarray(fit_predict(tr, g), dtype=np.float64) / y[g] - 1.0)
    return err


__all__ = [
    "ANALYTIC_FORMAT",
    "ANALYTIC_FORMAT_VERSION",
    "BASE_CLASS",
    "BOUNDARY_FEATURES",
    "MIXED_BASE_CLASS",
    "MIXED_SUFFIX",
    "UNIT_FEATURES",
    "CostModelHyper",
    "CostModelPredictor",
    "UnitFeaturizer",
    "cross_validated_errors",
    "fit_with_source_prior",
    "loo_relative_errors",
    "prefer_prior",
    "mixed_class",
    "parse_cost_samples",
    "source_prior",
    "unit_class",
]
