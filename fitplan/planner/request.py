"""What a plan is asked for (:class:`PlanRequest`, validated, JSON-able) and what :func:`~fitplan.planner.api.prepare`
resolved from it (:class:`PlanContext`), the input of every later stage."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fitplan.errors import ConfigError
from fitplan.planner.budget import Budget
from fitplan.planner.metrics import Evaluator
from fitplan.planner.search import SearchProblem


#: device aliases accepted by :func:`~fitplan.planner.api.plan`
DEVICE_ALIASES = {"local": "local-cpu-1t"}


ENGINES = ("auto", "optuna", "evolve")


@dataclass
class PlanRequest:
    """Everything a plan needs. JSON-able when ``model``/``device``/``data`` are names or paths.

    Attributes:
        model: timm model or name, a :class:`Supernet`, a registered space name, or a saved supernet dir
            (``supernet.safetensors`` + ``supernet.safetensors.json`` as written by ``prepare``).
        device: profile name, :class:`HardwareProfile`, or ``"local"`` (= ``local-cpu-1t``, measured).
        budget: :class:`Budget` or its dict.
        data: dataset name (``mnist5k``, ``mnist5k-rot``, ``digits``), ImageFolder path, a ``DataSplits``, or ``None``.
        out_dir: where caches, checkpoints and artifacts go.
        space_options: constructor options of the space (``width_mult``, ``resolutions``...).
        seed: seeds samplers, evolution, data order.
        sampler: ``nsga2`` (default), ``tpe``, ``gp``, ``random``.
        n_trials: trials for :func:`~fitplan.planner.api.plan` (``run_search`` takes its own count).
        engine: ``auto`` (evolve for >= 2000 trials, else optuna), ``optuna`` or ``evolve``.
        top_k: candidates verified on the real runtime (local devices).
        uniform_candidates: uniformly scaled architectures (:meth:`SearchSpace.uniform_configs` predicted to
            fit; with data the best on validation among those using most of the budget, else the largest)
            verified beside the searched ones, so that the plan is compared with the plain scaled-down model
            on measured numbers (0 = off).
        band_candidates: with data, searched networks of the largest capacity (MACs) whose latency, corrected per
            precision class by the measurements so far, uses 80-100 % of the budget, the best of them on validation,
            verified beside the others (:func:`~fitplan.planner.band.add_band`; 0 = off). Why: the accuracy
            predictor learns from subnets before fine-tuning, so its front often ends far below the budget.
        validate_candidates: with data, rank the verified candidates by their measured top-1 (then
            cross-entropy) on the validation split, weights shared from the supernet and BN recalibrated,
            instead of by predicted accuracy alone. A direct measurement ranks subnets better than any
            predictor fitted to such measurements (``benchmarks/accuracy_predictor.py --n-check``).
        race_candidates: with data and fine-tuning, ``race_candidates`` candidates (the best by validation,
            the best two uniformly scaled, the best band one, the slowest; exported latency within the
            budget: :func:`~fitplan.planner.race.race_order`) are each fine-tuned for ``race_fraction`` of the full
            fine-tune and the one with the lowest validation cross-entropy wins; its run continues from that
            checkpoint (the same LR schedule), so the winner's race steps are not lost. Why: accuracy of
            weight-shared subnets before fine-tuning misjudges accuracy after it (uniform configs measured 0.87-0.92
            on val before and 0.93-0.955 on test after a 1-epoch fine-tune on MNIST-5k). 0 or 1 = off.
        race_fraction: share of the full fine-tune (steps) each raced candidate gets, in (0, 1].
        race_tolerance: the race winner is the slowest measured candidate (the most capacity the budget
            allows) whose validation cross-entropy is not worse than the lowest one by more than
            ``race_tolerance`` paired standard errors (per-image differences on the validation split);
            0 = the lowest cross-entropy wins. Why: a short race favours small networks, which adapt
            fastest, while larger ones gain more from the rest of the fine-tune; within the race's noise the
            larger network is the better bet (see :func:`~fitplan.planner.race.race_winner`).
        verify: measure candidates (default: when the device is local).
        latency_margin: headroom kept below a latency budget on the real runtime: a candidate passes
            verification only if measured <= budget x (1 - margin). It must exceed the harness's
            run-to-run spread (a few percent, ``benchmarks/measure_noise.py``) so that re-timing the
            delivered model does not land above the budget.
        deliver_attempts: candidates :func:`~fitplan.planner.api.finish` may materialise in one call when a
            delivered file re-times over the latency budget (each rejected one is recorded in ``chosen.json``), >=
            1.
        supernet_epochs / finetune_epochs: training lengths (0 = skip).
        supernet_min_steps: on a small dataset the supernet trains for as many more epochs as reach this many
            optimizer steps (0 = exactly ``supernet_epochs``). Why: a supernet needs steps, not passes over
            the data; on MNIST-5k (55 steps per epoch) 4 epochs left the middle of the space under-trained
            (subnets 0.78-0.93 val top-1 before fine-tuning); 12 epochs (660 steps) raised plan_quality's
            mean plan test top-1 from 0.943 to 0.975, 0.951 to 0.969 and 0.945 to 0.968 (seeds 0-2;
            docs/DEVELOPING.md).
        accuracy_subnets: subnets evaluated to fit the accuracy predictor.
        max_train_steps: cap on steps per training run (quick runs / tests).
        known_good: extra configs enqueued as seeds.
        quick: small calibrations and short timings (tests, examples' --quick).
    """

    model: Any
    device: Any = "local"
    budget: Any = None
    data: Any = None
    out_dir: str = "fitplan-out"
    space_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    sampler: str = "nsga2"
    n_trials: int = 2000
    engine: str = "auto"
    population: int = 50
    top_k: int = 5
    uniform_candidates: int = 3
    band_candidates: int = 2
    validate_candidates: bool = True
    race_candidates: int = 5
    race_fraction: float = 0.3
    race_tolerance: float = 1.0
    verify: bool | None = None
    latency_margin: float = 0.05
    deliver_attempts: int = 2
    supernet_epochs: int = 3
    supernet_min_steps: int = 600
    finetune_epochs: int = 1
    max_train_steps: int | None = None
    train_batch_size: int = 64
    accuracy_subnets: int = 80
    known_good: list[dict[str, Any]] = field(default_factory=list)
    quick: bool = False

    def validate(self) -> "PlanRequest":
        self.budget = Budget.from_dict(self.budget if self.budget is not None else {})
        from fitplan.planner.search import SAMPLERS

        SAMPLERS.get(self.sampler)
        if self.engine not in ENGINES:
            raise ConfigError("engine", f"invalid value {self.engine!r}", ENGINES)
        for name in ("n_trials", "top_k", "uniform_candidates", "band_candidates", "race_candidates",
                     "supernet_epochs", "supernet_min_steps", "finetune_epochs", "population", "train_batch_size",
                     "deliver_attempts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {v!r}")
        if not isinstance(self.validate_candidates, bool):
            raise ConfigError("validate_candidates", f"must be true or false, got {self.validate_candidates!r}")
        if self.population < 2:
            raise ConfigError("population", "must be >= 2")
        if self.deliver_attempts < 1:
            raise ConfigError("deliver_attempts", f"must be an integer >= 1, got {self.deliver_attempts!r}")
        f = self.race_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ConfigError("race_fraction", f"must be a number in (0, 1], got {f!r}")
        t = self.race_tolerance
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < float("inf"):
            raise ConfigError("race_tolerance", f"must be a finite number >= 0 (standard errors), got {t!r}")
        m = self.latency_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 0.5:
            raise ConfigError("latency_margin", f"must be a number in [0, 0.5), got {m!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import fields as _fields

        d = {f.name: getattr(self, f.name) for f in _fields(self)}
        if isinstance(self.budget, Budget):
            d["budget"] = self.budget.to_dict()
        for k in ("model", "device", "data"):
            if not isinstance(d[k], (str, type(None))):
                d[k] = repr(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanRequest":
        names = list(inspect.signature(cls).parameters)
        for k in d:
            if k not in names:
                raise ConfigError(k, "unknown plan option", names)
        return cls(**dict(d)).validate()


@dataclass
class PlanContext:
    """What :func:`~fitplan.planner.api.prepare` resolved; input of :func:`~fitplan.planner.api.run_search` and
    :func:`~fitplan.planner.api.finish`."""

    request: PlanRequest
    budget: Budget
    space: Any
    supernet: Any
    profile: Any
    data: Any
    evaluator: Evaluator
    problem: SearchProblem
    out_dir: Path
    notes: list[str] = field(default_factory=list)
    minimal: dict[str, float] = field(default_factory=dict)
    trained: bool = False

    @property
    def local(self) -> bool:
        return bool(getattr(self.profile.runtime, "local", False))

    def study_attrs(self) -> dict[str, Any]:
        return {"space": self.space.spec(), "device": self.profile.name, "budget": self.budget.to_dict(),
                "objectives": [n for n, _ in self.problem.objectives],
                "constraints": self.problem.constraint_names, "fixed": self.problem.fixed}
