"""Materialise a config's compression keys (``bits``, ``sparsity``, ``sparsity_pattern``) on an extracted subnet.

Compression is applied to the static module that :meth:`Supernet.extract` returns, never inside the
supernet, using its ``fitplan_units`` (one list of dotted submodule names per compression unit). Every
``Conv1d/2d/3d`` and ``Linear`` found under a unit's submodules is a *compressed layer* of that unit.

Per layer (all via ``torch.nn.utils.parametrize``, so the original weight stays trainable and the
compression is part of ``forward`` -- exactly what quantisation-aware fine-tuning needs):

* **sparsity** -- a fixed magnitude mask (:class:`WeightMask`, a buffer): ``unstructured`` zeroes the
  ``round(ratio * n)`` smallest-magnitude weights of the layer (so each layer, and hence the unit, has the
  configured ratio); ``2:4`` keeps the 2 largest of every 4 consecutive weights along the reduction
  (input) dimension, taken in ``[out, kh, kw, in]`` order as sparse tensor cores expect. Masks are computed
  once, from the weights at the time of :func:`apply_compression`, and never change during fine-tuning
  (masked weights get zero gradient through the mask).
* **bits 8 / 4** -- fake quantisation for QAT with the straight-through estimator of
  ``torch.fake_quantize_per_*_affine``: weights symmetric per output channel (scale = max|w| / (2^(b-1)-1),
  so at most 2^b - 1 levels per channel), the layer's input activation per-tensor affine (unsigned b-bit
  range) with ranges observed on calibration batches (running min/max) or, while training, by an EMA.
  ``bits 32`` leaves the layer in float.

The mask is applied before the quantiser, so pruned weights stay exactly 0 after quantisation.
ONNX export turns the fake-quant ops into ``QuantizeLinear``/``DequantizeLinear`` pairs. ONNX only accepts
8-bit ranges, so 4-bit tensors are exported as int8/uint8 QDQ with the 4-bit scale (weights already lie on
the 4-bit grid, activations are clamped to the 4-bit range first): numerically identical.

Not modelled: BN folding into quantised convs (BN stays float after the conv), quantised biases, 4-bit
kernels on the runtime. ``finalize`` bakes masks (and optionally quantised weights) into plain tensors.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from fitplan.errors import ConfigError

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BITS_CHOICES = (4, 8, 32)
PATTERNS = ("unstructured", "2:4")


# ----------------------------------------------------------------------------------------- masks
def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unstructured mask zeroing the ``round(ratio * numel)`` smallest |w| (ties broken by position)."""
    n = weight.numel()
    k = int(round(float(ratio) * n))
    mask = torch.ones(n, dtype=weight.dtype, device=weight.device)
    if k > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = 0
    return mask.view_as(weight)


def _reduction_last(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in, *k]`` -> ``[out, *k, in]`` flattened to ``[out, R]`` (input channels innermost)."""
    if weight.dim() <= 2:
        return weight.reshape(weight.shape[0], -1)
    perm = (0, *range(2, weight.dim()), 1)
    return weight.permute(*perm).reshape(weight.shape[0], -1)


def _from_reduction_last(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() <= 2:
        return flat.reshape(like.shape)
    shape = (like.shape[0], *like.shape[2:], like.shape[1])
    inv = (0, like.dim() - 1, *range(1, like.dim() - 1))
    return flat.reshape(shape).permute(*inv).contiguous()


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """2:4 semi-structured mask: in every group of 4 consecutive reduction-dim weights keep the 2 largest |w|.

    The reduction dimension is ``in * kh * kw`` in ``[out, kh, kw, in]`` order. When its length is not a
    multiple of 4 (depthwise 3x3: 9) the last group is partial and keeps ``min(len, 2)`` weights, so the
    layer's sparsity is then a little below 0.5; :func:`compression_report` shows the real value.
    """
    flat = _reduction_last(weight.detach().abs())
    out, r = flat.shape
    pad = (-r) % 4
    padded = torch.cat([flat, torch.full((out, pad), -1.0, dtype=flat.dtype, device=flat.device)], dim=1)
    groups = padded.view(out, -1, 4)
    top = groups.topk(2, dim=-1).indices
    m = torch.zeros_like(groups).scatter_(-1, top, 1.0).view(out, -1)[:, :r]
    return _from_reduction_last(m, weight).to(weight.dtype)


def check_2to4(weight: torch.Tensor) -> bool:
    """True when every full group of 4 consecutive reduction-dim weights has at most 2 non-zeros."""
    flat = _reduction_last(weight.detach())
    r = flat.shape[1] - flat.shape[1] % 4
    if r == 0:
        return True
    nz = (flat[:, :r] != 0).view(flat.shape[0], -1, 4).sum(-1)
    return bool((nz <= 2).all())


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed mask buffer (saved in the state dict)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


# ----------------------------------------------------------------------------------------- quantisers
class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric per-output-channel fake quantisation of a weight to ``bits`` (STE).

    The scale follows the current weights (max |w| per channel / (2^(b-1)-1)); the int8 quant range is
    used for every ``bits`` (values never exceed the b-bit grid), which keeps 4-bit exportable to ONNX.
    """

    def __init__(self, bits: int):
        super().__init__()
        if bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ConfigError("bits", f"weight fake-quant needs 2..8 bits, got {bits}", [4, 8])
        self.bits = int(bits)
        self.qmax = 2 ** (self.bits - 1) - 1

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
        return (amax / self.qmax).clamp_min(1e-8).float()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        if _exporting():  # constant scales, so the exporter emits plain QuantizeLinear/DequantizeLinear
            scale = torch.tensor(scale.tolist(), dtype=torch.float32, device=w.device)
        zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -128, 127)


class ActivationFakeQuant(nn.Module):
    """Per-tensor affine fake quantisation of an activation to unsigned ``bits`` (STE).

    Ranges: running min/max over calibration batches (:func:`calibrate`), then, in training mode, an EMA of
    the batch min/max (``momentum``); in eval mode the ranges are frozen. Before any observation it passes
    the input through unchanged (and observes it).
    """

    def __init__(self, bits: int, momentum: float = 0.01):
        super().__init__()
        if bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ConfigError("bits", f"activation fake-quant needs 2..8 bits, got {bits}", [4, 8])
        self.bits = int(bits)
        self.qmin, self.qmax = 0, 2 ** self.bits - 1
        self.momentum = float(momentum)
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(0, dtype=torch.long))
        self.calibrating = False

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point from the observed range (range always includes 0, as torch observers do)."""
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = ((hi - lo) / float(self.qmax - self.qmin)).clamp_min(1e-8)
        zp = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax).to(torch.int32)
        return scale.float(), zp

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if int(self.observed) == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        elif self.calibrating:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        self.observed += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or self.calibrating) and not _exporting():
            self.observe(x)
        if self.calibrating or int(self.observed) == 0:
            return x
        scale, zp = self.qparams()
        if _exporting():  # constants in the graph: QuantizeLinear(x, scale, zp) with initialisers
            s, z = float(scale), int(zp)
            if self.bits < 8:  # clamp to the b-bit range so the 8-bit (exportable) op gives b-bit numerics
                x = torch.clamp(x, (self.qmin - z) * s, (self.qmax - z) * s)
            return torch.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
        if self.bits < 8:
            x = torch.clamp(x, (self.qmin - zp.float()) * scale, (self.qmax - zp.float()) * scale)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _act_pre_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.act_fq(args[0]), *args[1:])


# ----------------------------------------------------------------------------------------- apply
def unit_layers(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """Per unit of ``model.fitplan_units``: the compressible layers ``(dotted name, module)`` under it."""
    units = getattr(model, "fitplan_units", None)
    if units is None:
        raise ConfigError("model", "has no fitplan_units; compress modules returned by Supernet.extract")
    named = dict(model.named_modules())
    seen: set[int] = set()
    out: list[list[tuple[str, nn.Module]]] = []
    for u, names in enumerate(units):
        layers = []
        for base in names:
            if base not in named:
                raise ConfigError(f"fitplan_units.{u}", f"no submodule named {base!r}")
            for sub, m in named[base].named_modules():
                if isinstance(m, COMPRESSIBLE) and id(m) not in seen:
                    seen.add(id(m))
                    layers.append((f"{base}.{sub}" if sub else base, m))
        out.append(layers)
    return out


def _check_config(config: Mapping[str, Any], n_units: int) -> tuple[list[int], list[float], str]:
    bits = list(config.get("bits", [32] * n_units))
    sparsity = [float(s) for s in config.get("sparsity", [0.0] * n_units)]
    pattern = config.get("sparsity_pattern", "unstructured")
    for key, vals in (("bits", bits), ("sparsity", sparsity)):
        if len(vals) != n_units:
            raise ConfigError(key, f"expected {n_units} values (one per unit), got {len(vals)}")
    for i, b in enumerate(bits):
        if b not in BITS_CHOICES:
            raise ConfigError(f"bits.{i}", f"invalid value {b!r}", BITS_CHOICES)
    for i, s in enumerate(sparsity):
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsity.{i}", f"ratio must be in [0, 1), got {s}")
    if pattern not in PATTERNS:
        raise ConfigError("sparsity_pattern", f"invalid value {pattern!r}", PATTERNS)
    if pattern == "2:4":
        for i, s in enumerate(sparsity):
            if s not in (0.0, 0.5):
                raise ConfigError(f"sparsity.{i}", f"{s} is not possible with sparsity_pattern '2:4'", [0.0, 0.5])
    return [int(b) for b in bits], sparsity, pattern


def apply_compression(model: nn.Module, config: Mapping[str, Any] | None = None,
                      calib_batches: Iterable[torch.Tensor] | None = None, *,
                      act_momentum: float = 0.01) -> nn.Module:
    """Add masks and fake quantisers to ``model`` (in place) as ``config`` asks; returns ``model``.

    Args:
        model: an extracted subnet (has ``fitplan_units``; ``fitplan_config`` is used when ``config`` is None).
        config: a validated config (only ``bits``, ``sparsity``, ``sparsity_pattern`` are read).
        calib_batches: real input batches; when given, activation ranges are calibrated on them
            (:func:`calibrate`). Without them, ranges come from the first training batches (EMA).
        act_momentum: EMA momentum of activation ranges during training.
    """
    if getattr(model, "fitplan_compression", None) is not None:
        raise ConfigError("model", "is already compressed; extract a fresh subnet")
    config = config if config is not None else getattr(model, "fitplan_config", None)
    if config is None:
        raise ConfigError("config", "no config given and the model has no fitplan_config")
    layers = unit_layers(model)
    bits, sparsity, pattern = _check_config(config, len(layers))
    for u, unit in enumerate(layers):
        for _, m in unit:
            if sparsity[u] > 0:
                mask = mask_2to4(m.weight) if pattern == "2:4" else magnitude_mask(m.weight, sparsity[u])
                parametrize.register_parametrization(m, "weight", WeightMask(mask))
            if bits[u] < 32:
                parametrize.register_parametrization(m, "weight", WeightFakeQuant(bits[u]))
                m.act_fq = ActivationFakeQuant(bits[u], act_momentum).to(m.weight.device)
                m.fitplan_act_hook = m.register_forward_pre_hook(_act_pre_hook)
    model.fitplan_compression = {"bits": bits, "sparsity": sparsity, "sparsity_pattern": pattern}
    if calib_batches is not None:
        calibrate(model, calib_batches)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set activation ranges from real batches (running min/max, eval mode, no fake quant meanwhile).

    Returns the number of batches used. Inputs must already have the model's input size.
    """
    fqs = [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]
    if not fqs:
        return 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for fq in fqs:
        fq.observed.zero_()
        fq.calibrating = True
    n = 0
    try:
        for x in batches:
            model(x.to(device))
            n += 1
    finally:
        for fq in fqs:
            fq.calibrating = False
        model.train(was_training)
    if n == 0:
        raise ConfigError("calib_batches", "is empty")
    return n


def finalize(model: nn.Module, *, remove_fake_quant: bool = False) -> nn.Module:
    """Bake the masks into plain weight tensors (for export / plain state dicts), in place.

    With ``remove_fake_quant=True`` the weights are also baked at their quantised values and activation
    quantisers are removed, leaving a plain float module (weights on the b-bit grid, float activations).
    Otherwise weight fake-quant stays (as the only parametrization), so ONNX export still emits QDQ.
    """
    for m in list(model.modules()):
        if not isinstance(m, COMPRESSIBLE) or not parametrize.is_parametrized(m, "weight"):
            continue
        plist = m.parametrizations["weight"]
        fq = [p for p in plist if isinstance(p, WeightFakeQuant)]
        with torch.no_grad():
            w = m.parametrizations["weight"].original.detach()
            for p in plist:
                if isinstance(p, WeightMask) or remove_fake_quant:
                    w = p(w)
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        with torch.no_grad():
            m.weight.copy_(w)
        if fq and not remove_fake_quant:
            parametrize.register_parametrization(m, "weight", fq[0])
        if remove_fake_quant and hasattr(m, "act_fq"):
            m.fitplan_act_hook.remove()
            del m.act_fq
            del m.fitplan_act_hook
    if remove_fake_quant and getattr(model, "fitplan_compression", None) is not None:
        model.fitplan_compression = {**model.fitplan_compression, "fake_quant_removed": True}
    return model


# ----------------------------------------------------------------------------------------- reports
def effective_weight(m: nn.Module) -> torch.Tensor:
    """The weight ``forward`` uses (mask and fake quant applied)."""
    with torch.no_grad():
        return m.weight.detach()


def _mask_of(m: nn.Module) -> torch.Tensor | None:
    if not parametrize.is_parametrized(m, "weight"):
        return None
    masks = [p.mask for p in m.parametrizations["weight"] if isinstance(p, WeightMask)]
    return masks[0] if masks else None


def weight_sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the effective weights of all compressible layers."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, COMPRESSIBLE):
            w = effective_weight(m)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


def max_levels_per_channel(weight: torch.Tensor) -> int:
    """Largest number of distinct values in any output channel of ``weight``."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    return max(int(torch.unique(row).numel()) for row in flat)


def compression_report(model: nn.Module, space_units: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per unit: configured bits/sparsity and what was measured on the effective weights.

    Keys: ``unit``, ``layers``, ``weights``, ``bits``, ``sparsity`` (configured), ``mask_sparsity`` (share
    of weights the masks remove), ``measured_sparsity`` (exact zeros of the effective weights: also counts
    weights that quantisation rounds to 0),
    ``max_levels`` (distinct weight values in the worst output channel), ``is_2to4`` (pattern holds).
    """
    comp = getattr(model, "fitplan_compression", None) or {}
    layers = unit_layers(model)
    rows = []
    for u, unit in enumerate(layers):
        zeros = total = levels = masked = 0
        ok24 = True
        for _, m in unit:
            w = effective_weight(m)
            mk = _mask_of(m)
            masked += int((mk == 0).sum()) if mk is not None else 0
            zeros += int((w == 0).sum())
            total += w.numel()
            levels = max(levels, max_levels_per_channel(w))
            ok24 = ok24 and check_2to4(w)
        rows.append({
            "unit": space_units[u] if space_units is not None else str(u),
            "layers": [n for n, _ in unit], "weights": total,
            "bits": comp.get("bits", [32] * len(layers))[u],
            "sparsity": comp.get("sparsity", [0.0] * len(layers))[u],
            "mask_sparsity": masked / total if total else 0.0,
            "measured_sparsity": zeros / total if total else 0.0, "max_levels": levels, "is_2to4": ok24,
        })
    return rows
