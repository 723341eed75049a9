"""Turn a chosen config into a deployable model: extract, compress, fine-tune with KD, export, verify.

Files written to the plan's output folder:

``model.safetensors`` + ``model.json``
    the fine-tuned module's state (masks baked in; 8/4-bit units keep their fake quantisers) and what is
    needed to rebuild it without pickle: space spec, config. :func:`load_model` restores it.
``model.onnx``
    float export (quantised weights baked at their grid values, activations float) for any runtime.
``model_int8.onnx``
    only when some unit has bits < 32: the int8 QDQ model ONNX Runtime runs with integer kernels. For 8-bit
    units it is the fine-tuned float model quantized by ONNX Runtime's static QDQ quantizer
    (:func:`fitplan.hw_profiles.measure.quantize_int8`, the same path the latency measurements use), restricted
    to the 8-bit units, calibrated on the given inputs: the QAT weights already lie on the per-channel
    symmetric int8 grid that quantizer uses, and its graph fuses every conv into ``QLinearConv``. The QAT
    graph exported by torch (``QuantizeLinear``/``DequantizeLinear`` pairs on float weights) fuses only a
    fraction of the convs and measured 3.5x *slower* than fp32 on this machine. Configs with 4-bit units keep
    the QAT export (onnxruntime's quantizer has no 4-bit conv path here).

Each ONNX file is checked against the torch module on real (or random) inputs; the max absolute logit
difference is recorded in the plan's ``checks``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from fitplan.errors import ConfigError
from fitplan.jsonio import load_versioned, save_versioned

MODEL_FORMAT = "fitplan-model"
MODEL_VERSION = 1


def build_model(space: Any, supernet: Any, config: Mapping[str, Any],
                calib: Sequence[torch.Tensor] | None = None) -> nn.Module:
    """Extract the subnet of ``config``, recalibrate its BatchNorm statistics on ``calib`` (the supernet's
    shared running stats mix all subnets, as in OFA) and apply its bits and sparsity (masks + fake quant)."""
    from fitplan.search_spaces.compression import apply_compression
    from fitplan.search_spaces.training import recalibrate_bn

    module = supernet.extract(config)
    if calib:
        recalibrate_bn(module, None, calib)
    needs = any(b < 32 for b in config["bits"]) or any(s > 0 for s in config["sparsity"])
    if needs:
        shape = space.input_shape(config)
        batches = list(calib) if calib else [torch.randn(16, *shape)]
        apply_compression(module, config, batches)
    return module


def build_teacher(space: Any, supernet: Any, calib: Sequence[torch.Tensor] | None = None) -> nn.Module:
    """The knowledge-distillation teacher: the largest subnet, BatchNorm recalibrated on ``calib`` (resized
    to its input inside). Without recalibration the shared running statistics make it a poor teacher."""
    return build_model(space, supernet, space.largest(), calib).eval()


def save_model(module: nn.Module, out_dir: Path, space: Any, config: Mapping[str, Any]) -> dict[str, str]:
    """Write ``model.safetensors`` + ``model.json``. Call after :func:`finalize` (masks baked)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    path = out_dir / "model.safetensors"
    save_file(state, str(path))
    save_versioned(out_dir / "model.json", MODEL_FORMAT, MODEL_VERSION,
                   {"space": space.spec(), "config": dict(config), "weights": path.name})
    return {"model_safetensors": str(path), "model_config": str(out_dir / "model.json")}


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (a folder or its ``model.json``); no pickle involved."""
    from safetensors.torch import load_file

    from fitplan.search_spaces import create_space
    from fitplan.search_spaces.compression import apply_compression, finalize

    path = Path(path)
    meta_path = path / "model.json" if path.is_dir() else path
    doc = load_versioned(meta_path, MODEL_FORMAT, (MODEL_VERSION,))
    space = create_space(doc["space"])
    cfg = space.validate(doc["config"])
    module = space.build_supernet().extract(cfg)
    if any(b < 32 for b in cfg["bits"]) or any(s > 0 for s in cfg["sparsity"]):
        apply_compression(module, cfg, [torch.randn(2, *space.input_shape(cfg))])
        finalize(module)
    state = load_file(str(meta_path.parent / doc["weights"]))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError("model", f"weights do not match the config: missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}")
    return module.eval()


def save_and_export(module: nn.Module, space: Any, config: Mapping[str, Any], out_dir: Path,
                    check_x: torch.Tensor, batch: int = 1) -> tuple[dict[str, str], dict[str, Any]]:
    """Finalise ``module`` in place, save it, export ``model_int8.onnx`` (QDQ, when some bits < 32) and
    ``model.onnx`` (float), and check each export against torch on ``check_x``.

    Order matters: masks are baked first (weights saved with fake quantisers), the QDQ graph is exported,
    then fake quantisers are baked away for the float export (parametrised modules cannot be deep-copied).
    Returns ``(artifacts, checks)``; ``module`` ends as the plain float model.
    """
    from fitplan.hw_profiles.measure import active_unit_bits, int8_module_names, quantize_int8
    from fitplan.onnx_utils import export_onnx, max_abs_diff_vs_torch, run_onnx
    from fitplan.search_spaces.compression import finalize

    module = module.cpu().eval()
    shape = tuple(space.input_shape(config))
    compressed = getattr(module, "fitplan_compression", None) is not None
    if compressed:
        finalize(module)
    artifacts = save_model(module, out_dir, space, config)
    checks: dict[str, Any] = {}
    active = active_unit_bits(space, config, module)
    bits = [b for b, _ in active]
    int8_ptq = compressed and min(bits) == 8
    fake_quant_ref = None
    if compressed and min(bits) < 8:
        p8 = export_onnx(module, shape, out_dir / "model_int8.onnx", batch=batch, dynamic_batch=True)
        artifacts["model_int8_onnx"] = str(p8)
        checks["int8_onnx_max_abs_diff_vs_fake_quant_torch"] = max_abs_diff_vs_torch(module, p8, check_x)
    elif int8_ptq:
        with torch.no_grad():
            fake_quant_ref = module(check_x).detach().cpu().numpy()
    if compressed:
        finalize(module, remove_fake_quant=True)
    p = export_onnx(module, shape, out_dir / "model.onnx", batch=batch, dynamic_batch=True)
    artifacts["model_onnx"] = str(p)
    checks["onnx_max_abs_diff"] = max_abs_diff_vs_torch(module, p, check_x)
    if int8_ptq:
        names = int8_module_names(active)
        p8 = quantize_int8(p, out_dir / "model_int8.onnx", check_x.detach().cpu().numpy(), modules=names)
        artifacts["model_int8_onnx"] = str(p8)
        checks["int8_onnx_max_abs_diff_vs_fake_quant_torch"] = float(np.abs(run_onnx(p8, check_x) - fake_quant_ref).max())
    return artifacts, checks

