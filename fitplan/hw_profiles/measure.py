"""Real latency measurement with ONNX Runtime, and measured datasets that survive interruption.

How one config is measured (:func:`measure_config`):

1. ``space.build_supernet().extract(config)`` gives a standalone module with real, smaller tensors.
   Sparsity masks are applied first if :mod:`fitplan.search_spaces.compression` exists, but onnxruntime's
   CPU EP has no sparse Conv/Gemm kernels, so sparsity does not change the measured latency (the local
   profiles record ``sparse_kernels: no``).
2. Export to ONNX (:func:`fitplan.onnx_utils.export_onnx`, batch from the profile).
3. Numeric variant from the config's ``bits`` of the *active* units:

   * all 32 -> ``fp32``;
   * 8-bit units -> ``int8``: static QDQ quantization (``onnxruntime.quantization.quantize_static``,
     ``QuantFormat.QDQ``, per-channel int8 weights, int8 activations, MinMax calibration on real input
     batches passed as ``calib_inputs``; synthetic N(0,1) inputs otherwise, which is labelled in the
     record: for *latency* the scale values do not matter, only which nodes are quantized). When 8 and 32
     are mixed, only the nodes of the 8-bit units are quantized (``nodes_to_quantize``, found from the ONNX
     node scope names, every op type the quantizer handles: :func:`nodes_for_modules`); if that mapping finds
     no node, the whole model is quantized
     when no active unit is above 8 bits, else the config is recorded as not measurable.
     Dynamic int8 quantization is not used: on CPU it is slower than static QDQ for convolutions.
   * any active 4-bit unit -> **not measurable**: onnxruntime's CPU EP has no int4 Conv kernels.
4. Time with the shared loop of :mod:`fitplan.hw_profiles.bench_script` on a session with pinned
   ``intra_op_num_threads``: warm-up, then blocks of runs alternating with fitplan's reference model until
   the ~95% CI of the median per-block latency ratio is within 1% (with block / time caps). The reported
   latency is ``ratio x anchor``, the anchor being the reference's quiet-machine latency here (cached per
   machine and thread count, :mod:`fitplan.hw_profiles.reference`): on a shared VM whose speed drifts by
   10-20 % this cuts the run-to-run spread to a few percent. Raw medians are kept (``raw_median_ms``).

:func:`measure_configs` measures many configs into an append-only JSONL file (one header line, then one
line per measurement, flushed and fsynced) and skips configs already in the file, so an interrupted run
resumes where it stopped and nothing measured is lost. A measurement that ends *unstable* (its stopping rule
ran out of time before the ratio's CI closed) is measured again at the end of the run (``retries``): on a
shared VM whole seconds fall into slow or fast machine states that do not change every kernel alike, and a
measurement taken inside one can be off by 20-25 % although its blocks agree with each other. Every
attempt is kept in the file; readers (:func:`ok_records`) take one record per config whose latency is the
*geometric mean of its ok attempts* (:func:`combined_records`), not the single "best" attempt. Why: a
stable attempt (its CI closed) is no more right than an unstable one across machine states. The same 60
configs measured in two sessions on one AMD EPYC VM agreed within ±10 % for 87 % of configs with the best
attempt per session and 98 % with the geometric mean per session; a 10-fold cross-validated analytic
latency model (:mod:`fitplan.predictors.analytic`) erred less with mean labels on every measured dataset
(mean relative error 4.9 -> 4.0 % and 4.2 -> 3.7 % for those two sessions, 3.85 -> 3.79 % and
3.47 -> 3.46 % on the Xeon datasets). ``passes`` measures every config more than once (later passes after
all others) for less noise.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError
from fitplan.hw_profiles import bench_script
from fitplan.hw_profiles.profile import HardwareProfile, utc_now

MEASUREMENTS_FORMAT = "fitplan-measurements"
MEASUREMENTS_VERSION = 1
#: ONNX op types that quantization acts on (weights live there).
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")

log = logging.getLogger(__name__)


@dataclass
class Measurement:
    """One measured (or not measurable) latency.

    ``status`` is ``ok`` (numbers valid), ``not_measurable`` (``reason`` says why: e.g. int4 on CPU) or
    ``error``. Times are per batch of ``fingerprint["batch"]`` inputs, in milliseconds.
    """

    status: str
    variant: str
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    raw_median_ms: float | None = None
    anchor_ms: float | None = None
    ratio: float | None = None
    count: int = 0
    rel_ci: float | None = None
    stable: bool = False
    method: str = ""
    reason: str | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    measured_at: str = field(default_factory=utc_now)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def machine_fingerprint(threads: int, batch: int, provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """Where and how: host, CPU model (``/proc/cpuinfo``), cores, ORT / torch versions, threads, batch,
    provider, 1-minute load average (a loaded machine gives noisy numbers)."""
    info = bench_script.machine_info()
    info.pop("available_providers", None)
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    info.update({"threads": int(threads), "batch": int(batch), "provider": provider})
    return info


# --------------------------------------------------------------------------- quantization
class _ArrayReader:
    """``CalibrationDataReader`` over a float32 array ``[n, *input]``, in batches of ``batch``."""

    def __init__(self, x: np.ndarray, batch: int, input_name: str):
        self._batches = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)] or [x[:batch]]
        self._name = input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {self._name: self._batches[self._i - 1]}

    def rewind(self) -> None:
        self._i = 0


def scope_qualname(node_name: str) -> str:
    """Dotted module name from a TorchScript-exporter node name.

    ``/blocks/blocks.1/blocks.1.0/Conv`` -> ``blocks.1.0``; ``/blocks/blocks.0/conv/Conv`` ->
    ``blocks.0.conv`` (a scope part is either an attribute name or, under containers, the full dotted name).
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    cur = ""
    for p in parts:
        if cur and p.startswith(cur + "."):
            cur = p
        elif "." in p and not cur:
            cur = p
        else:
            cur = f"{cur}.{p}" if cur else p
    return cur


def quantizer_op_types() -> frozenset[str]:
    """Every op type ONNX Runtime's static quantizer handles in QDQ format (what ``quantize_static`` quantizes
    when it is given no node list): the weight ops plus Add, Mul, pooling, Sigmoid, Concat, Reshape, ..."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def nodes_for_modules(onnx_path: str | os.PathLike | Any, module_names: Iterable[str],
                      op_types: Iterable[str] | None = None) -> list[str]:
    """Names of the ONNX nodes that belong to the given (dotted) submodules and whose op type the quantizer
    handles (``op_types``, default :func:`quantizer_op_types`).

    Why every op type and not only Conv/Gemm/MatMul: in a mixed-precision graph the residual Add, the
    squeeze-excite Mul and pooling of an 8-bit unit left in float wrap each of its int8 convs in
    Dequantize/Quantize and layout reorders; quantized, they fuse into ``QLinearAdd`` / ``QLinearMul`` / ...
    and the unit runs as it does in an all-int8 graph. ``onnx_path`` may also be a loaded ``ModelProto``."""
    import onnx

    prefixes = [m for m in module_names if m]
    types = frozenset(op_types) if op_types is not None else quantizer_op_types()
    graph = (onnx_path if isinstance(onnx_path, onnx.ModelProto)
             else onnx.load(str(onnx_path), load_external_data=False)).graph
    out = []
    for node in graph.node:
        if node.op_type not in types:
            continue
        q = scope_qualname(node.name)
        if any(q == p or q.startswith(p + ".") for p in prefixes):
            out.append(node.name)
    return out


class UnmappedModulesError(ValueError):
    """No ONNX node of the exported graph belongs to the modules that were to be quantized."""

    def __init__(self, modules: Sequence[str]):
        self.modules = list(modules)
        super().__init__(f"no ONNX node could be mapped to the modules {self.modules[:4]}"
                         f"{' ...' if len(self.modules) > 4 else ''} (a quantizable op under their scope)")


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib_inputs: np.ndarray,
                  batch: int = 1, nodes_to_quantize: Sequence[str] | None = None,
                  modules: Sequence[str] | None = None) -> Path:
    """Static int8 QDQ quantization, calibrated on ``calib_inputs`` ``[n, *input]``: per-channel int8
    weights, uint8 activations (U8S8, the layout of the QAT exports of
    :mod:`fitplan.search_spaces.compression`), after onnxruntime's quantization pre-processing.

    Why both: on an x86 CPU (AVX2, this machine) int8 activations or an un-preprocessed graph (exporter
    ``Identity`` nodes, unfolded patterns) leave a third of the convs outside ONNX Runtime's
    ``QLinearConv`` fusion; they then run as float convs between Dequantize/Quantize nodes without the
    NCHWc float kernels, and the "int8" model measured 2-3x *slower* than fp32. Pre-processed U8S8 fuses
    every conv (``benchmarks/measure_noise.py --bits 8`` prints the int8/fp32 ratio). Node names survive
    the pre-processing, so ``nodes_to_quantize`` from :func:`nodes_for_modules` still apply. Initializers
    the exporter shared between nodes get one copy per node first
    (:func:`fitplan.onnx_utils.unshare_initializers`): a bias shared by an 8-bit and a float conv otherwise
    becomes a DequantizeLinear output for both and knocks the float one off ONNX Runtime's fast kernels.

    Weights use ``reduce_range`` (7-bit magnitudes): without VNNI, x86 U8S8 kernels sum pairs of u8 x s8
    products in int16 and saturate; on this AVX2 machine the full 8-bit range cost an MNIST subnet 2.4
    points of top-1 against its fake-quant torch model, 7 bits none (same kernels, same latency).

    ``modules`` (dotted module scopes, :func:`int8_module_names`) quantizes only their nodes, selected on
    the *pre-processed* graph after :func:`fitplan.onnx_utils.name_unnamed_nodes` (the pre-processing
    decomposes HardSwish into new, unnamed nodes that a list taken from the export would miss);
    ``nodes_to_quantize`` gives the node names directly; neither quantizes the whole graph. ``modules`` that
    select no node raise :class:`UnmappedModulesError` (onnxruntime would read the empty selection as "every
    node" and deliver an all-int8 model)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fitplan.onnx_utils import name_unnamed_nodes, unshare_initializers

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns through the root logger for every fused bias
    try:
        import onnx

        pre = Path(out_path).with_name(Path(out_path).stem + ".pre.onnx")
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre), load_external_data=False)
        if unshare_initializers(model, QUANTIZABLE_OPS) + name_unnamed_nodes(model):
            onnx.save(model, str(pre))
        if modules is not None:
            nodes_to_quantize = nodes_for_modules(model, modules)
            if not nodes_to_quantize:  # onnxruntime reads an empty node list as "quantize every node"
                raise UnmappedModulesError(list(modules))
        name = model.graph.input[0].name
        quantize_static(str(pre), str(out_path), _ArrayReader(calib_inputs.astype(np.float32), batch, name),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
                        reduce_range=True)
    finally:
        root.setLevel(level)
        Path(out_path).with_name(Path(out_path).stem + ".pre.onnx").unlink(missing_ok=True)
    return Path(out_path)


def _calib_array(calib_inputs: Any, input_shape: Sequence[int], n_default: int = 8) -> tuple[np.ndarray, str]:
    """Calibration inputs of exactly ``input_shape`` (resized bilinearly if the resolution differs)."""
    if calib_inputs is None:
        x = np.random.default_rng(0).standard_normal((n_default, *input_shape)).astype(np.float32)
        return x, "synthetic N(0,1) inputs (latency only: quantization scales do not change the kernels)"
    import torch

    t = torch.as_tensor(np.asarray(calib_inputs, dtype=np.float32))
    if t.dim() != len(input_shape) + 1:
        raise ConfigError("calib_inputs", f"expected [n, {', '.join(map(str, input_shape))}], got {list(t.shape)}")
    if tuple(t.shape[1:]) != tuple(input_shape):
        if t.dim() == 4 and t.shape[1] == input_shape[0]:
            t = torch.nn.functional.interpolate(t, size=tuple(input_shape[1:]), mode="bilinear",
                                                align_corners=False)
        else:
            raise ConfigError("calib_inputs", f"shape {list(t.shape[1:])} does not match input {list(input_shape)}")
    return t.numpy(), f"{t.shape[0]} real input samples"


# --------------------------------------------------------------------------- measuring
def measure_onnx(path: str | os.PathLike, input_shape: Sequence[int], *, threads: int = 1, batch: int = 1,
                 variant: str = "fp32", provider: str = "CPUExecutionProvider", note: str = "",
                 anchored: bool = True, **rule: Any) -> Measurement:
    """Time an ONNX model on a fixed random input of ``(batch, *input_shape)`` with pinned threads.

    ``anchored`` (default): timed interleaved with fitplan's reference model and reported as
    ``ratio x anchor`` (:mod:`fitplan.hw_profiles.reference`), which removes most of a shared machine's
    drift; the raw median is kept in ``raw_median_ms``. ``anchored=False``: the plain median.
    """
    import onnxruntime as ort

    reference = None
    if anchored:
        from fitplan.hw_profiles.reference import REFERENCE_ID, REFERENCE_INPUT, get_anchor, reference_path

        anchor = get_anchor(threads, provider)
        reference = (str(reference_path()), REFERENCE_INPUT, anchor["anchor_ms"])
    stats = bench_script.time_onnx(str(path), [batch, *input_shape], threads, provider, reference=reference, **rule)
    r = stats["rule"]
    method = (f"onnxruntime {ort.__version__} {provider}, intra_op_num_threads={threads}, inter_op=1, "
              f"sequential, ORT_ENABLE_ALL; batch {batch}; {variant}; fixed random input; {stats['warmup']} "
              f"warm-up runs (>= {r['warmup_s']} s)")
    if anchored:
        method += (f"; then blocks of runs (>= {r['block_s']:g} s) alternating with the reference model "
                   f"{REFERENCE_ID} for equal wall time, until the ~95% CI of the median per-block latency ratio "
                   f"is within {r['rel_tol'] * 100:g}% (min {r['min_blocks']} blocks, max {r['max_seconds']:g} s); "
                   f"ratio over the {stats['quiet_blocks']} of {stats['blocks']} blocks whose reference run was "
                   f"within {(r.get('quiet_tol') or 0) * 100:g}% of its fastest (slow-machine blocks dropped); "
                   f"reported = median ratio {stats['ratio']:.4f} x anchor {anchor['anchor_ms']:.4f} ms (the "
                   f"reference on this machine, {anchor['method']}, {anchor['measured_at']}); raw median "
                   f"{stats['raw_median_ms']:.4f} ms")
    else:
        method += (f", then repeats until the ~95% CI of the median is within {r['rel_tol'] * 100:g}% (min "
                   f"{r['min_repeats']}, max {r['max_repeats']} runs, max {r['max_seconds']:g} s)")
    if note:
        method += f"; {note}"
    return Measurement(status="ok", variant=variant, median_ms=stats["median_ms"], p10_ms=stats["p10_ms"],
                       p90_ms=stats["p90_ms"], min_ms=stats["min_ms"], raw_median_ms=stats.get("raw_median_ms"),
                       anchor_ms=stats.get("anchor_ms"), ratio=stats.get("ratio"), count=stats["count"],
                       rel_ci=stats["rel_ci"], stable=stats["stable"], method=method,
                       fingerprint=machine_fingerprint(threads, batch, provider))


def measure_module(module: Any, input_shape: Sequence[int], *, threads: int = 1, batch: int = 1,
                   variant: str = "fp32", calib_inputs: Any = None, int8_modules: Sequence[str] | None = None,
                   workdir: str | os.PathLike | None = None, **rule: Any) -> Measurement:
    """Measure an ``nn.Module`` for inputs ``(batch, *input_shape)``.

    ``variant="int8"`` quantizes with static QDQ; ``int8_modules`` (dotted submodule names) restricts it
    to those modules' nodes (:func:`nodes_for_modules`), ``None`` quantizes the whole graph.
    """
    from fitplan.onnx_utils import export_onnx

    if variant not in ("fp32", "int8"):
        raise ConfigError("variant", f"invalid value {variant!r}", ["fp32", "int8"])
    with tempfile.TemporaryDirectory(prefix="fitplan-measure-") as tmp:
        d = Path(workdir) if workdir is not None else Path(tmp)
        fp32 = export_onnx(module, input_shape, d / "model.onnx", batch=batch)
        if variant == "fp32":
            return measure_onnx(fp32, input_shape, threads=threads, batch=batch, variant="fp32", **rule)
        scope = "the whole graph" if int8_modules is None else (
            "the nodes of the 8-bit units (every op type the quantizer handles under their scope, incl. the "
            "ops quantization pre-processing splits off them)")
        x, calib_note = _calib_array(calib_inputs, input_shape)
        try:
            q = quantize_int8(fp32, d / "model.int8.onnx", x, batch=batch, modules=int8_modules)
        except UnmappedModulesError:
            return Measurement(status="not_measurable", variant="int8",
                               reason="no ONNX node could be mapped to the 8-bit units",
                               fingerprint=machine_fingerprint(threads, batch))
        note = (f"int8 static QDQ (onnxruntime.quantization after its pre-processing, per-channel int8 weights, uint8 "
                f"activations, MinMax "
                f"calibration on {calib_note}) of {scope}")
        return measure_onnx(q, input_shape, threads=threads, batch=batch, variant="int8", note=note, **rule)


def active_unit_bits(space: Any, cfg: Mapping[str, Any], module: Any) -> list[tuple[int, list[str]]]:
    """``(bits, dotted module names)`` of every active unit of an extracted ``module`` (names empty when the
    module does not list its units)."""
    units = getattr(module, "fitplan_units", None)
    if units is None:
        active = [u.active for u in space.unit_costs(cfg)]
        return [(b, []) for b, a in zip(cfg["bits"], active) if a]
    return [(b, list(names)) for b, names in zip(cfg["bits"], units) if names]


def unit_scope(names: Sequence[str]) -> list[str]:
    """The dotted scope of one unit's modules: their longest common prefix (``blocks.4`` for
    ``blocks.4.depth_conv.conv``, ``blocks.4.point_linear.bn``, ...), which also holds the unit's functional
    ops (residual Add, squeeze-excite Mul) that no leaf module owns; the names themselves when they share
    no prefix."""
    common: list[str] = []
    for parts in zip(*(n.split(".") for n in names)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return [".".join(common)] if common else list(names)


def int8_module_names(active: Sequence[tuple[int, Sequence[str]]]) -> list[str] | None:
    """Dotted scopes of the 8-bit units (:func:`unit_scope` of each unit's modules, :func:`active_unit_bits`),
    or ``None`` when every active unit is 8-bit (quantize the whole graph)."""
    if all(b == 8 for b, _ in active):
        return None
    return [s for b, ns in active if b == 8 for s in unit_scope(ns)]


def _apply_sparsity(module: Any, cfg: Mapping[str, Any]) -> Any:
    """Apply the config's sparsity masks when the compression module exists (bits handled by ORT)."""
    if not any(s > 0 for s in cfg.get("sparsity", [])):
        return module
    try:
        from fitplan.search_spaces.compression import apply_compression  # written by another module
    except ImportError:
        return module
    masked_cfg = dict(cfg)
    masked_cfg["bits"] = [32] * len(cfg["bits"])
    out = apply_compression(module, masked_cfg)
    return out if out is not None else module


def measure_config(space: Any, config: Mapping[str, Any], profile: HardwareProfile | None = None, *,
                   threads: int | None = None, batch: int | None = None, supernet: Any = None,
                   calib_inputs: Any = None, **rule: Any) -> Measurement:
    """Measure one config of ``space`` on a measurable profile (default ``local-cpu-1t``).

    ``supernet`` may be passed to avoid rebuilding it per config. ``threads`` / ``batch`` override the
    profile's runtime. Returns a :class:`Measurement` (``not_measurable`` for 4-bit units).
    """
    if profile is None:
        from fitplan.hw_profiles.store import get_profile

        profile = get_profile("local-cpu-1t")
    require_measurable(profile)
    thr = int(threads or profile.runtime.threads or 1)
    bsz = int(batch or profile.runtime.batch)
    cfg = space.validate(config)
    net = supernet if supernet is not None else space.build_supernet()
    module = _apply_sparsity(net.extract(cfg).eval(), cfg)
    active = active_unit_bits(space, cfg, module)
    bits = sorted({b for b, _ in active})
    shape = tuple(space.input_shape(cfg))
    if any(b < 8 for b in bits):
        return Measurement(status="not_measurable", variant=f"int{min(bits)}",
                           reason=f"{min(bits)}-bit units: onnxruntime's CPU EP has no int{min(bits)} Conv "
                                  "kernels, so this latency cannot be measured here",
                           fingerprint=machine_fingerprint(thr, bsz))
    if bits == [32] or not bits:
        m = measure_module(module, shape, threads=thr, batch=bsz, variant="fp32", **rule)
    elif bits == [8]:
        m = measure_module(module, shape, threads=thr, batch=bsz, variant="int8", calib_inputs=calib_inputs,
                           **rule)
    else:
        m = measure_module(module, shape, threads=thr, batch=bsz, variant="int8", calib_inputs=calib_inputs,
                           int8_modules=int8_module_names(active), **rule)
        if m.ok:
            m.variant = "mixed-int8"
    if m.ok and getattr(module, "fitplan_compression", None) is not None:
        m.method += ("; weight sparsity applied as magnitude masks before export (onnxruntime CPU runs dense "
                     "kernels, so it does not change latency)")
    return m


def require_measurable(profile: HardwareProfile) -> None:
    """Raise :class:`ConfigError` unless fitplan can time models on ``profile`` from here."""
    if not profile.measurable:
        from fitplan.hw_profiles.store import list_profiles, get_profile

        local = [n for n in list_profiles() if get_profile(n).measurable]
        raise ConfigError("device", f"profile {profile.name!r} is not measurable from this machine (runtime "
                                    f"{profile.runtime.engine!r}, local={profile.runtime.local}); use "
                                    "'fitplan calibrate kit' to measure it on the device itself", local)


# --------------------------------------------------------------------------- JSONL datasets
def config_key(config: Mapping[str, Any]) -> str:
    """Stable identity of a (validated) config: sha1 of its canonical JSON."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def read_measurements(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Read a measurement JSONL file: ``(header, records)``.

    A torn last line (the process was killed mid-write) is skipped with a warning; a wrong header or
    version is a :class:`ConfigError`.
    """
    path = Path(path)
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    if not path.exists():
        return None, []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is incomplete or corrupted; skipped", path, i + 1)
            continue
        if header is None:
            if not isinstance(doc, dict) or doc.get("format") != MEASUREMENTS_FORMAT:
                raise ConfigError("out", f"{path} is not a fitplan measurements file", [MEASUREMENTS_FORMAT])
            if doc.get("format_version") != MEASUREMENTS_VERSION:
                raise ConfigError("format_version", f"{path} has unsupported version "
                                                    f"{doc.get('format_version')!r}", [MEASUREMENTS_VERSION])
            header = doc
            continue
        if isinstance(doc, dict) and "config" in doc and "status" in doc:
            records.append(doc)
    return header, records


def measurement_rank(rec: Mapping[str, Any]) -> tuple[int, float]:
    """Sort key of one attempt, best first: ``ok`` and stable, ``ok`` (tighter CI first), not measurable,
    error."""
    status = rec.get("status")
    if status == "ok":
        ci = rec.get("rel_ci")
        return (0 if rec.get("stable") else 1, float(ci) if isinstance(ci, (int, float)) else math.inf)
    return (2 if status == "not_measurable" else 3, 0.0)


def _attempts_by_key(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("key") or config_key(r["config"]), []).append(dict(r))
    return groups


def _best_attempt(attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    best = attempts[0]
    for r in attempts[1:]:
        if measurement_rank(r) <= measurement_rank(best):  # on ties the later one
            best = r
    return {**best, "attempts": len(attempts)}


def best_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per config ``key`` (first-appearance order) from a measurements file's lines: the best
    attempt by :func:`measurement_rank` (a stable ``ok`` measurement, else the ``ok`` one with the tightest CI;
    on ties the later one), as measured. Its ``attempts`` field says how many lines the file holds for the
    config. Readers of latencies use :func:`combined_records` instead."""
    return [_best_attempt(v) for v in _attempts_by_key(records).values()]


def combine_latencies(values: Sequence[float]) -> float:
    """The latency of repeated attempts of one config: their geometric mean (module doc: on a shared VM no
    single attempt is reliably the right one; latencies are compared as ratios, hence the log-space mean)."""
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def combined_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per config ``key`` (first-appearance order): :func:`best_records`' attempt, whose
    ``median_ms`` becomes the geometric mean of the ``median_ms`` of every ``ok`` attempt of the config
    (:func:`combine_latencies`); with several, ``attempt_median_ms`` lists them in file order and
    ``best_attempt_median_ms`` keeps the best attempt's own value. Single attempts are returned as measured."""
    return [_combined(v) for v in _attempts_by_key(records).values()]


def _combined(attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rec = _best_attempt(attempts)
    ok = [float(r["median_ms"]) for r in attempts if r.get("status") == "ok" and r.get("median_ms")]
    if rec.get("status") == "ok" and len(ok) > 1:
        rec["best_attempt_median_ms"] = rec["median_ms"]
        rec["attempt_median_ms"] = ok
        rec["median_ms"] = combine_latencies(ok)
    return rec


def ok_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The :func:`combined_records` whose measurement succeeded (status ``ok``): what readers of a measurements
    file use as its data."""
    return [r for r in combined_records(records) if r.get("status") == "ok"]


def _append_line(path: Path, doc: Mapping[str, Any]) -> None:
    """Append one JSON line, flushed and fsynced; first repairs a torn last line (adds the newline)."""
    need_nl = False
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            need_nl = f.read(1) != b"\n"
    with open(path, "a") as f:
        if need_nl:
            f.write("\n")
        f.write(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def measure_configs(space: Any, configs: Iterable[Mapping[str, Any]], profile: HardwareProfile,
                    out: str | os.PathLike, *, calib_inputs: Any = None, progress: bool = True,
                    retry_errors: bool = True, retries: int = 1, passes: int = 1, **rule: Any
                    ) -> list[dict[str, Any]]:
    """Measure ``configs`` into the JSONL file ``out``; resume when it already holds some of them.

    Each line: ``config``, ``key``, ``status``, ``variant``, ``median_ms``, ``p10_ms``, ``p90_ms``,
    ``count``, ``rel_ci``, ``stable``, ``method``, ``fingerprint``, ``measured_at``, ``seconds`` (wall time
    spent). Configs already in the file (``ok`` or ``not_measurable``) are skipped; ``error`` lines are
    retried when ``retry_errors``. Every config is measured ``passes`` times, a config whose ``ok`` attempts
    are all unstable up to ``retries`` times more; each further attempt comes after every other config of the
    run (see the module doc; a resumed run continues the count from the file, so running again with a larger
    ``passes`` adds a pass). The file's header pins space spec, profile, threads and batch: adding to a file
    measured for something else is a :class:`ConfigError`. Returns the combined record of the file for each
    given config (:func:`combined_records`: latency = geometric mean of its ok attempts), in the given order.
    """
    from tqdm.auto import tqdm

    require_measurable(profile)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError("retries", f"expected an integer >= 0, got {retries!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ConfigError("passes", f"expected an integer >= 1, got {passes!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": MEASUREMENTS_FORMAT, "format_version": MEASUREMENTS_VERSION, "space": space.spec(),
              "profile": profile.name, "threads": profile.runtime.threads, "batch": profile.runtime.batch,
              "created": utc_now()}
    old_header, old = read_measurements(out)
    if old_header is None:
        if out.exists() and out.stat().st_size > 0:
            raise ConfigError("out", f"{out} exists but has no fitplan measurements header; refusing to append")
        _append_line(out, header)
    else:
        for k in ("space", "profile", "threads", "batch"):
            if old_header.get(k) != header[k]:
                raise ConfigError("out", f"{out} was measured with {k}={old_header.get(k)!r}, not {header[k]!r}; "
                                         "use another --out file")
    # attempts per config; a config whose attempts all failed starts afresh when errors are retried
    by_key = {k: v for k, v in _attempts_by_key(old).items()
              if not (retry_errors and _best_attempt(v)["status"] == "error")}
    done = {k: _best_attempt(v) for k, v in by_key.items()}
    todo: list[tuple[str, dict[str, Any]]] = []
    order: list[str] = []
    cfgs: dict[str, dict[str, Any]] = {}
    for c in configs:
        cfg = space.validate(c)
        k = config_key(cfg)
        order.append(k)
        cfgs[k] = cfg
        if k not in done and all(k != t[0] for t in todo):
            todo.append((k, cfg))

    def needs_retry(k: str) -> bool:
        r = done.get(k)
        if r is None or r["status"] != "ok":
            return False
        n = r.get("attempts", 1)
        return n < passes or (not r.get("stable") and n < passes + retries)

    todo += [(k, cfgs[k]) for k in dict.fromkeys(order) if needs_retry(k)]
    supernet = space.build_supernet().eval() if todo else None
    bar = tqdm(total=len(todo), desc=f"measure {space.name} on {profile.name}", unit="cfg", disable=not progress)
    while todo:
        k, cfg = todo.pop(0)
        t0 = time.time()
        try:
            m = measure_config(space, cfg, profile, supernet=supernet, calib_inputs=calib_inputs, **rule)
        except ConfigError:
            raise
        except Exception as e:  # record and continue: one failing subnet must not lose the others
            log.warning("measuring config %s failed: %s", k, e)
            m = Measurement(status="error", variant="?", reason=f"{type(e).__name__}: {e}",
                            fingerprint=machine_fingerprint(profile.runtime.threads or 1, profile.runtime.batch))
        rec = {"key": k, "config": cfg, **m.to_dict(), "seconds": round(time.time() - t0, 3)}
        _append_line(out, rec)
        by_key.setdefault(k, []).append(rec)
        done[k] = _best_attempt(by_key[k])
        bar.update(1)
        if m.ok:
            bar.set_postfix_str(f"{m.variant} {m.median_ms:.2f} ms" + ("" if m.stable else " (unstable)"))
            if needs_retry(k):  # measured again after the others: the machine state has changed by then
                todo.append((k, cfg))
                bar.total += 1
                bar.refresh()
    bar.close()
    return [_combined(by_key[k]) for k in order if k in by_key]


def split_bits(n_units: int, active: Sequence[int], k: int, first: int, rest: int, fill: int = 32) -> list[int]:
    """Per-unit bits of a precision split: the first ``k`` of the ``active`` unit indices get ``first``, the
    other active ones ``rest``, inactive units ``fill`` (a float-first split is ``first=32, rest=8``)."""
    bits = [fill] * n_units
    for j, i in enumerate(active):
        bits[i] = first if j < k else rest
    return bits


def precision_changes(space: Any, cfg: Mapping[str, Any]) -> int:
    """How often the bit-width changes along the active units of ``cfg`` (1: a float-first or int8-first
    split; 0: one precision)."""
    seq = [b for b, u in zip(cfg["bits"], space.unit_costs(cfg)) if u.active]
    return sum(1 for a, b in zip(seq, seq[1:]) if a != b)


def sample_measure_configs(space: Any, n: int, seed: int = 0, bits: Sequence[int] = (8, 32)) -> list[dict[str, Any]]:
    """``n`` distinct configs for a measured dataset, in groups of three: an architecture in fp32 and the
    *same* architecture all-int8 (so the int8 speed-up is measured pairwise), then another architecture
    with a mix of ``bits`` over its active units -- in alternate groups a coin flip per unit, or a split at a
    random point (the first units float and the rest low-bit, or the reverse: the contiguous patterns a
    latency-guided search ends up with, whose cost differs from scattered mixes). The first two
    architectures are the smallest and largest; the rest sample every arch / resolution dimension.
    Sparsity stays 0 (onnxruntime CPU has no sparse kernels, so it would not change latency)."""
    if n < 1:
        raise ConfigError("n", f"must be >= 1, got {n}")
    bad = [b for b in bits if b not in space.bits_choices]
    if bad:
        raise ConfigError("bits", f"{bad[0]} is not a bits choice of {space.name!r}", space.bits_choices)
    rng = np.random.default_rng(seed)
    units = len(space.units())
    hi, lo = max(bits), min(bits)
    fixed = [space.smallest(), space.largest()]

    def next_arch() -> dict[str, Any]:
        return fixed.pop(0) if fixed else space.sample(rng, compression=False)

    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(cfg: dict[str, Any]) -> None:
        cfg = space.validate(cfg)
        k = config_key(cfg)
        if k not in seen and len(out) < n:
            seen.add(k)
            out.append(cfg)

    def split(arch: dict[str, Any]) -> list[int]:
        active = [i for i, u in enumerate(space.unit_costs(arch)) if u.active] or list(range(units))
        k = int(rng.integers(1, max(len(active), 2)))
        first, rest = (hi, lo) if rng.random() < 0.5 else (lo, hi)
        return split_bits(units, active, k, first, rest, fill=hi)

    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        tries += 1
        a = next_arch()
        add({**a, "bits": [hi] * units})
        if lo != hi:
            add({**a, "bits": [lo] * units})
            b = next_arch()
            mix = split(b) if tries % 2 == 0 else [int(bits[int(j)]) for j in rng.integers(len(bits), size=units)]
            add({**b, "bits": mix})
    return out
