"""Train a weight-sharing supernet on user data, recalibrate BN, evaluate subnets, fine-tune a compressed subnet.

Supernet training follows OFA / BigNAS:

* **sandwich rule** -- every step trains the largest subnet, the smallest subnet and ``n_random`` random
  subnets on the same batch, accumulating their gradients before one optimizer step, so the weights that
  small subnets share with big ones are trained from both ends;
* **in-place distillation** -- the largest subnet learns from the labels; all the others learn from the
  largest subnet's softened predictions of the same batch (KL divergence at temperature ``T``, scaled by
  ``T^2``), optionally mixed with the label loss (``kd_alpha``);
* SGD (Nesterov) or AdamW with linear warm-up and cosine decay, computed from the step number (so a
  resumed run follows the same schedule), optional gradient clipping;
* per-config input resolution: a batch is resized to ``space.input_shape(config)`` (:func:`resize_to`).

Before a subnet is evaluated its BN statistics are re-estimated (:func:`recalibrate_bn`): the running
statistics that training accumulated are a mixture over all sampled subnets and are wrong for any one of
them (OFA resets and re-estimates them with a cumulative average on a few thousand images).

**Checkpoints** (``checkpoint_dir``): ``step_XXXXXXXX/`` folders holding ``model.safetensors`` (module state),
``optimizer.safetensors`` (optimizer tensors + torch RNG states) and ``state.json`` (versioned: step,
epoch, batch position, optimizer scalars, seeds, train settings, loss history), plus ``latest.json``
pointing at the newest complete folder (written last, atomically). Resuming restores all of that; data
order and subnet sampling are functions of ``(seed, epoch)`` / ``(seed, step)``, so on the same device a
resumed run produces the same weights as an uninterrupted one (tested bit-for-bit on CPU).

:func:`finetune` trains a materialised (possibly compressed) subnet with knowledge distillation from a
teacher (e.g. the supernet's largest subnet); it shares the loop, checkpoints and resume.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from fitplan.data import resize_for_shape
from fitplan.errors import ConfigError
from fitplan.jsonio import load_versioned, save_versioned

CHECKPOINT_FORMAT = "fitplan-train-checkpoint"
CHECKPOINT_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------------------- settings
@dataclass
class TrainSettings:
    """Hyper-parameters of :func:`train_supernet` and :func:`finetune` (saved in every checkpoint).

    ``n_random``: random subnets per step besides largest and smallest (sandwich rule).
    ``step_resolution``: all subnets of a step share one input resolution drawn per step
    (:func:`sandwich_configs`); ``False`` (default): the largest at the highest, the smallest at the lowest.
    ``kd_temperature`` / ``kd_alpha``: distillation temperature and the weight of the KD term for the
    non-largest subnets (``1.0`` = pure in-place distillation as BigNAS does over long schedules; the default
    0.5 also keeps the label loss, which trains from scratch faster in the few epochs a CPU run affords).
    ``warmup_steps``: linear LR warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step.
    ``checkpoint_every``: steps between checkpoints (``0``: only at the end of each epoch).
    """

    epochs: int = 5
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 3e-5
    n_random: int = 2
    step_resolution: bool = False
    kd_temperature: float = 1.0
    kd_alpha: float = 0.5
    label_smoothing: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 5.0
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    max_steps: int | None = None

    def validate(self) -> "TrainSettings":
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"invalid value {self.optimizer!r}", OPTIMIZERS)
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError("device", f"invalid value {self.device!r}", DEVICES + ("cuda:N",))
        for name in ("epochs", "n_random", "warmup_steps", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {v!r}")
        if not isinstance(self.step_resolution, bool):
            raise ConfigError("step_resolution", f"must be true or false, got {self.step_resolution!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints", "must be >= 1")
        for name in ("lr", "kd_temperature"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError("kd_alpha", f"must be in [0, 1], got {self.kd_alpha}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError("max_steps", f"must be >= 0, got {self.max_steps}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA requested but not available", ["auto", "cpu"])
    return torch.device(device)


def lr_at(step: int, total: int, s: TrainSettings) -> float:
    """Linear warm-up then cosine decay, a pure function of the step (so resume needs no scheduler state)."""
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    t = (step - s.warmup_steps) / max(1, total - s.warmup_steps)
    t = min(max(t, 0.0), 1.0)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(params: Iterable[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on 1-D tensors (BN/LN/bias), as is usual."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.momentum > 0)
    return torch.optim.AdamW(groups, lr=s.lr)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times ``T^2`` (Hinton et al.)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


# ----------------------------------------------------------------------------------------- checkpoints
def _state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("state_scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``checkpoint_dir`` (None if there is none)."""
    d = Path(checkpoint_dir)
    ptr = d / "latest.json"
    if not ptr.exists():
        return None
    doc = load_versioned(ptr, CHECKPOINT_FORMAT + "-pointer", (CHECKPOINT_VERSION,))
    p = d / doc["path"]
    return p if (p / "state.json").exists() else None


# ----------------------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What a training run did: per-step losses (mean per epoch too), steps, wall time, checkpoint path."""

    steps: int
    epochs_done: float
    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from: int | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Loop:
    """Epoch/batch loop with deterministic data order, LR schedule, checkpoint/resume and tqdm."""

    def __init__(self, kind: str, module: nn.Module, loader: DataLoader, settings: TrainSettings,
                 step_fn: Callable[[torch.Tensor, torch.Tensor, int], float], *,
                 checkpoint_dir: str | os.PathLike | None, resume: bool, desc: str, extra: dict[str, Any]):
        self.kind, self.module, self.loader, self.s = kind, module, loader, settings
        self.step_fn, self.desc, self.extra = step_fn, desc, extra
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = next(module.parameters()).device
        self.opt = make_optimizer(module.parameters(), settings)
        self.batch_size = loader.batch_size or 1
        self.drop_last = bool(loader.drop_last)
        n = len(loader.dataset)
        self.steps_per_epoch = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        if self.steps_per_epoch == 0:
            raise ConfigError("loader", f"no full batch: {n} samples, batch_size {self.batch_size}")
        # the LR schedule spans all epochs; max_steps only stops early (a later run resumes the same schedule)
        self.schedule_total = self.steps_per_epoch * settings.epochs
        self.total = self.schedule_total
        if settings.max_steps is not None:
            self.total = min(self.total, settings.max_steps)
        self.step = 0
        self.result = TrainResult(steps=0, epochs_done=0.0)
        if resume and self.ckpt_dir is not None:
            path = latest_checkpoint(self.ckpt_dir)
            if path is not None:
                self.load(path)
                self.result.resumed_from = self.step

    # --------------------------------------------------------------- data
    def _epoch_loader(self, epoch: int, start_batch: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.s.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.loader.dataset), generator=g).tolist()
        idx = perm[start_batch * self.batch_size:]
        # own generator: creating a DataLoader iterator must not consume the global RNG (dropout), or a
        # run resumed mid-epoch would draw different dropout masks than an uninterrupted one
        return DataLoader(Subset(self.loader.dataset, idx), batch_size=self.batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(self.s.seed + epoch),
                          drop_last=self.drop_last, num_workers=self.loader.num_workers,
                          collate_fn=self.loader.collate_fn, pin_memory=self.device.type == "cuda")

    # --------------------------------------------------------------- checkpoint
    def save(self) -> Path | None:
        if self.ckpt_dir is None:
            return None
        from safetensors.torch import save_file

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:08d}"
        final = self.ckpt_dir / name
        tmp = self.ckpt_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_state_tensors(self.module), str(tmp / "model.safetensors"))
        otensors, ometa = _optimizer_tensors(self.opt)
        otensors["rng.torch_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            otensors["rng.torch_cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(otensors, str(tmp / "optimizer.safetensors"))
        save_versioned(tmp / "state.json", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, {
            "kind": self.kind, "step": self.step, "total_steps": self.schedule_total,
            "epoch": self.step // self.steps_per_epoch, "batch_in_epoch": self.step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
            "optimizer": ometa, "settings": self.s.to_dict(), "seeds": {"seed": self.s.seed},
            "losses": self.result.losses, "epoch_losses": self.result.epoch_losses,
            "wall_s": self.result.wall_s, **self.extra,
        })
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        save_versioned(self.ckpt_dir / "latest.json", CHECKPOINT_FORMAT + "-pointer", CHECKPOINT_VERSION,
                       {"path": name, "step": self.step})
        olds = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and p.name != name)
        for p in olds[: max(0, len(olds) - (self.s.keep_checkpoints - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        doc = load_versioned(path / "state.json", CHECKPOINT_FORMAT, (CHECKPOINT_VERSION,))
        if doc.get("kind") != self.kind:
            raise ConfigError("checkpoint", f"{path} is a {doc.get('kind')!r} checkpoint, not {self.kind!r}")
        if doc["steps_per_epoch"] != self.steps_per_epoch or doc["batch_size"] != self.batch_size:
            raise ConfigError("checkpoint", f"{path} was written with {doc['steps_per_epoch']} steps/epoch of "
                              f"batch {doc['batch_size']}; this run has {self.steps_per_epoch} of {self.batch_size}")
        state = load_file(str(path / "model.safetensors"), device=str(self.device))
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError("checkpoint", f"{path} does not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        otensors = load_file(str(path / "optimizer.safetensors"), device=str(self.device))
        _load_optimizer(self.opt, otensors, doc["optimizer"])
        torch.set_rng_state(otensors["rng.torch_cpu"].cpu())
        if "rng.torch_cuda" in otensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(otensors["rng.torch_cuda"].cpu(), self.device)
        self.step = int(doc["step"])
        self.result.losses = list(doc.get("losses", []))
        self.result.epoch_losses = list(doc.get("epoch_losses", []))
        self.result.wall_s = float(doc.get("wall_s", 0.0))

    # --------------------------------------------------------------- run
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        t0 = time.perf_counter() - self.result.wall_s
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, unit="step", dynamic_ncols=True,
                   leave=False)
        self.module.train()
        try:
            while self.step < self.total:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                epoch_sum, epoch_n = 0.0, 0
                for batch in self._epoch_loader(epoch, start):
                    if self.step >= self.total:
                        break
                    x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
                    lr = lr_at(self.step, self.schedule_total, self.s)
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                    self.opt.zero_grad(set_to_none=True)
                    loss = self.step_fn(x, y, self.step)
                    if self.s.grad_clip:
                        nn.utils.clip_grad_norm_(self.module.parameters(), self.s.grad_clip)
                    self.opt.step()
                    self.step += 1
                    self.result.losses.append(float(loss))
                    epoch_sum, epoch_n = epoch_sum + float(loss), epoch_n + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}", epoch=epoch)
                    self.result.wall_s = time.perf_counter() - t0
                    if self.s.checkpoint_every and self.step % self.s.checkpoint_every == 0:
                        self.result.checkpoint = str(self.save())
                if self.step % self.steps_per_epoch == 0 and epoch_n and start == 0:
                    self.result.epoch_losses.append(epoch_sum / epoch_n)
                if self.step % self.steps_per_epoch == 0 and not self.s.checkpoint_every:
                    self.result.checkpoint = str(self.save()) if self.ckpt_dir else None
        finally:
            bar.close()
        if self.ckpt_dir is not None and (self.result.checkpoint is None or
                                          not self.result.checkpoint.endswith(f"step_{self.step:08d}")):
            self.result.checkpoint = str(self.save())
        self.result.steps = self.step
        self.result.epochs_done = self.step / self.steps_per_epoch
        self.result.wall_s = time.perf_counter() - t0
        self.module.eval()
        return self.result


# ----------------------------------------------------------------------------------------- supernet
def sandwich_configs(space, step: int, seed: int, n_random: int,
                     step_resolution: bool = False) -> list[dict[str, Any]]:
    """Largest, smallest and ``n_random`` random architectures (no compression) for one step.

    ``step_resolution``: every subnet of the step uses one input resolution drawn for the step (OFA's
    elastic resolution: one image size per batch) instead of the largest subnet always at the highest and
    the smallest always at the lowest resolution, so that the extremes' weights also learn the resolutions
    in between. Off by default: on the small ofa_mbv3 / MNIST-5k (220 steps) mean validation top-1 of 10
    fixed subnets went 0.892 -> 0.925 with seed 0 but 0.919 -> 0.919 with seed 1 (see docs/DEVELOPING.md).

    Random subnets (and the step's resolution) come from ``numpy.random.default_rng([seed, step])``, so
    step ``k`` always trains the same subnets, resumed or not.
    """
    rng = np.random.default_rng([int(seed), int(step)])
    cfgs = [space.largest(), space.smallest()] + [space.sample(rng, compression=False) for _ in range(n_random)]
    if step_resolution:
        for dim in space.arch_dimensions():
            if dim.kind == "resolution" and dim.length is None:
                value = dim.choices[int(rng.integers(len(dim.choices)))]
                for cfg in cfgs:
                    cfg[dim.name] = value
    return cfgs


def train_supernet(supernet: nn.Module, loader: DataLoader, settings: TrainSettings | None = None, *,
                   checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                   **overrides: Any) -> TrainResult:
    """Train ``supernet`` on ``loader`` (``(x, y)`` batches) with the sandwich rule and in-place distillation.

    Args:
        supernet: a :class:`~fitplan.search_spaces.supernet.Supernet`; moved to the settings' device.
        loader: training batches; its dataset, batch size and ``drop_last`` are used (the order is
            re-drawn per epoch from ``settings.seed``).
        settings: hyper-parameters; keyword ``overrides`` replace single fields (``epochs=3``).
        checkpoint_dir: where to write checkpoints; with ``resume=True`` the newest one there is resumed.

    Returns a :class:`TrainResult`; the supernet is left in eval mode with its largest subnet active.
    """
    s = _settings(settings, overrides)
    space = supernet.space
    device = resolve_device(s.device)
    supernet.to(device)
    torch.manual_seed(s.seed)

    def step_fn(x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        cfgs = sandwich_configs(space, step, s.seed, s.n_random, s.step_resolution)
        total = 0.0
        teacher = None
        for i, cfg in enumerate(cfgs):
            supernet.set_active(cfg)
            logits = supernet(resize_for_shape(x, space.input_shape(cfg)))
            if i == 0:
                loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
                teacher = logits.detach()
            else:
                loss = s.kd_alpha * kd_loss(logits, teacher, s.kd_temperature)
                if s.kd_alpha < 1.0:
                    loss = loss + (1 - s.kd_alpha) * F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
            loss.backward()
            total += float(loss.detach())
        return total / len(cfgs)

    loop = _Loop("supernet", supernet, loader, s, step_fn, checkpoint_dir=checkpoint_dir, resume=resume,
                 desc="supernet", extra={"space": space.spec()})
    res = loop.run()
    supernet.set_largest()
    return res


def finetune(model: nn.Module, teacher: nn.Module | None, loader: DataLoader, epochs: int = 1, *,
             settings: TrainSettings | None = None, checkpoint_dir: str | os.PathLike | None = None,
             resume: bool = True, input_shape: Sequence[int] | None = None,
             teacher_input_shape: Sequence[int] | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune a materialised (possibly compressed) subnet with knowledge distillation.

    Loss: ``kd_alpha * KD(student, teacher, T) + (1 - kd_alpha) * CE(student, y)`` (pure CE without a
    teacher). Masks stay fixed (masked weights receive no gradient) and fake quantisers keep their STE,
    so this is quantisation-aware training of exactly the model that will be exported.

    Args:
        model: the student (e.g. ``apply_compression(supernet.extract(cfg), cfg, calib)``).
        teacher: any module (e.g. the supernet with its largest subnet active); run in eval mode, no grad.
        epochs: passes over ``loader``.
        input_shape / teacher_input_shape: per-sample input shapes; default from the module's
            ``fitplan_config`` + ``fitplan_space`` (student) or the supernet's active config (teacher);
            batches are resized to them.
        settings / overrides: as :func:`train_supernet` (defaults here: AdamW, lr 5e-4, kd_alpha 0.5).
    """
    base = settings or TrainSettings(optimizer="adamw", lr=5e-4, kd_alpha=0.5, weight_decay=1e-4)
    s = _settings(base, {"epochs": epochs, **overrides})
    if teacher is None:
        s.kd_alpha = 0.0
    device = resolve_device(s.device)
    model.to(device)
    torch.manual_seed(s.seed)
    in_shape = tuple(input_shape) if input_shape is not None else _module_input_shape(model)
    t_shape = tuple(teacher_input_shape) if teacher_input_shape is not None else _module_input_shape(teacher)
    if teacher is not None:
        teacher.to(device).eval()

    def step_fn(x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        xs = resize_for_shape(x, in_shape) if in_shape else x
        logits = model(xs)
        loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
        if teacher is not None and s.kd_alpha > 0:
            with torch.no_grad():
                t_logits = teacher(resize_for_shape(x, t_shape) if t_shape else x)
            loss = s.kd_alpha * kd_loss(logits, t_logits, s.kd_temperature) + (1 - s.kd_alpha) * loss
        loss.backward()
        return float(loss.detach())

    loop = _Loop("finetune", model, loader, s, step_fn, checkpoint_dir=checkpoint_dir, resume=resume,
                 desc="finetune", extra={"config": getattr(model, "fitplan_config", None)})
    return loop.run()


def _settings(settings: TrainSettings | None, overrides: Mapping[str, Any]) -> TrainSettings:
    base = asdict(settings) if settings is not None else asdict(TrainSettings())
    unknown = [k for k in overrides if k not in base]
    if unknown:
        raise ConfigError(unknown[0], "unknown training setting", sorted(base))
    return TrainSettings(**{**base, **overrides}).validate()


def _module_input_shape(module: nn.Module | None) -> tuple[int, ...] | None:
    if module is None:
        return None
    space = getattr(module, "space", None)
    cfg = getattr(module, "active_config", None)
    if space is not None and cfg is not None:
        return tuple(space.input_shape(cfg))
    cfg, spec = getattr(module, "fitplan_config", None), getattr(module, "fitplan_space", None)
    if cfg is not None and spec is not None:
        from fitplan.search_spaces.base import create_space

        try:
            return tuple(create_space(spec).input_shape(cfg))
        except Exception:  # a space not registered in the package (e.g. user-defined): no resizing
            return None
    return None


# ----------------------------------------------------------------------------------------- BN + eval
def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, config: Mapping[str, Any] | None, batches: Iterable[torch.Tensor], *,
                   input_shape: Sequence[int] | None = None) -> int:
    """Re-estimate BN running statistics for one subnet, as OFA does before evaluating it.

    Activates ``config`` (when ``model`` is a supernet and a config is given), resets the running stats
    of every BN layer, and forwards ``batches`` (resized to the config's input size) with only BN in
    training mode and ``momentum=None``, i.e. an exact cumulative average over the batches. Dropout and
    everything else stay in eval mode. The dynamic BN layers of a supernet update only the active channel
    slice; the rest is left at its reset value (it is recalibrated when another subnet is evaluated).
    Returns the number of batches used; the model is left in eval mode.
    """
    if config is not None and hasattr(model, "set_active"):
        config = model.set_active(config)
    shape = tuple(input_shape) if input_shape is not None else _module_input_shape(model)
    bns = _bn_modules(model)
    device = next(model.parameters()).device
    model.eval()
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    n = 0
    try:
        for x in batches:
            x = x[0] if isinstance(x, (list, tuple)) else x
            x = x.to(device)
            model(resize_for_shape(x, shape) if shape else x)
            n += 1
    finally:
        for bn, mom in saved:
            bn.momentum = mom
        model.eval()
    if n == 0:
        raise ConfigError("calib_batches", "is empty: BN recalibration needs at least one batch")
    return n


@torch.no_grad()
def evaluate(model: nn.Module, config: Mapping[str, Any] | None, loader: Iterable, calib_batches:
             Iterable[torch.Tensor] | None = None, *, input_shape: Sequence[int] | None = None,
             max_batches: int | None = None) -> float:
    """Top-1 accuracy of ``config`` (supernet) or of ``model`` itself (``config=None``) on ``loader``.

    With ``calib_batches`` BN statistics are recalibrated first (:func:`recalibrate_bn`). Inputs are
    resized to the config's input size. Leaves the model in eval mode.
    """
    return evaluate_metrics(model, config, loader, calib_batches, input_shape=input_shape,
                            max_batches=max_batches)["accuracy"]


@torch.no_grad()
def evaluate_metrics(model: nn.Module, config: Mapping[str, Any] | None, loader: Iterable, calib_batches:
                     Iterable[torch.Tensor] | None = None, *, input_shape: Sequence[int] | None = None,
                     max_batches: int | None = None, per_sample: bool = False) -> dict[str, Any]:
    """``{"accuracy", "nll", "n"}`` of ``config`` / ``model`` on ``loader`` (as :func:`evaluate`).

    ``nll`` is the mean cross-entropy of the true labels. On a small validation split it separates
    subnets far better than top-1 accuracy, which moves in steps of ``1 / n`` and saturates (the accuracy
    predictor ranks subnets on it, see :mod:`fitplan.predictors.accuracy`). ``per_sample``: also
    ``"nll_per_sample"`` (float64) and ``"correct_per_sample"`` (bool) arrays in loader order, so that two
    models scored on the same loader can be compared with a paired standard error.
    """
    if calib_batches is not None:
        recalibrate_bn(model, config, calib_batches, input_shape=input_shape)
    elif config is not None and hasattr(model, "set_active"):
        model.set_active(config)
    shape = tuple(input_shape) if input_shape is not None else _module_input_shape(model)
    device = next(model.parameters()).device
    model.eval()
    losses: list[torch.Tensor] = []
    right: list[torch.Tensor] = []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(resize_for_shape(x, shape) if shape else x)
        right.append((logits.argmax(-1) == y).cpu())
        losses.append(F.cross_entropy(logits.float(), y, reduction="none").double().cpu())
    nll = torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)
    total = len(nll)
    if total == 0:
        raise ConfigError("loader", "is empty")
    ok = torch.cat(right)
    out: dict[str, Any] = {"accuracy": int(ok.sum()) / total, "nll": float(nll.sum()) / total, "n": total}
    if per_sample:
        out["nll_per_sample"], out["correct_per_sample"] = nll.numpy(), ok.numpy()
    return out


# ----------------------------------------------------------------------------------------- weights only
def save_weights(module: nn.Module, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Save a module's state as ``path`` (safetensors) + ``path.json`` (versioned metadata, e.g. space spec)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_state_tensors(module), str(tmp))
    os.replace(tmp, path)
    save_versioned(path.with_suffix(path.suffix + ".json"), "fitplan-weights", 1, {"meta": dict(meta or {})})
    return path


def load_weights(module: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load weights written by :func:`save_weights` into ``module`` (strict); returns the metadata."""
    from safetensors.torch import load_file

    path = Path(path)
    doc = load_versioned(path.with_suffix(path.suffix + ".json"), "fitplan-weights", (1,))
    if not path.exists():
        raise ConfigError("weights", f"file not found: {path}")
    module.load_state_dict(load_file(str(path), device=str(next(module.parameters()).device)))
    return doc["meta"]
