"""The planner's stage API (used by :mod:`fitplan.jobs`) and the one-call :func:`plan`.

``prepare(request) -> PlanContext``
    resolve the model to a space + supernet (train the supernet on the user's data when it is not trained
    yet; cached in ``out_dir/supernet``), the device profile, the predictors, the compression
    capabilities, and check the budget is feasible at all (raises :class:`InfeasibleBudgetError` at once).
    Cheap to call again in every worker: everything expensive is cached in ``out_dir``.
``run_search(ctx, storage, study_name, n_trials)``
    add ``n_trials`` predictor-guided trials to a (shared) Optuna study. Safe with several workers at once.
``finish(ctx, study) -> Plan``
    feasible Pareto front -> verify the top-k on the real runtime (local devices) -> materialise ->
    fine-tune with KD (resumable) -> export ONNX -> report.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from fitplan.errors import ConfigError, DeliveredOverBudgetError, InfeasibleBudgetError, UnknownNameError
from fitplan.planner.budget import BUDGET_METRICS, Budget
from fitplan.planner.metrics import Evaluator, compression_speedups, restricted_dimensions
from fitplan.planner.band import add_band
from fitplan.planner.candidates import (ValidationScorer, add_uniform, rank_by_validation, refine_with_measurements,
                                        reverify_tightened, verify_candidates)
from fitplan.planner.entries import distinct_networks, feasible_predicted, make_entry, predicted_key
from fitplan.planner.gate import gate_exported, gate_with_headroom, time_delivered, uniform_after_gate
from fitplan.planner.plan import Plan
from fitplan.planner.race import finetune_dir, race_finetune, race_order, race_size, train_loader
from fitplan.planner.request import DEVICE_ALIASES, PlanContext, PlanRequest
from fitplan.planner.search import (SearchProblem, check_feasible, count_evaluations, create_study,
                                    enqueue_seeds, feasible_front, run_evolve, run_optuna)


# ====================================================================== resolving inputs
def resolve_profile(device: Any) -> Any:
    """A :class:`HardwareProfile` from a name, alias (``local``) or profile object."""
    if not isinstance(device, str):
        if hasattr(device, "runtime") and hasattr(device, "name"):
            return device
        raise ConfigError("device", f"expected a profile name or HardwareProfile, got {type(device).__name__}")
    from fitplan.hw_profiles.store import get_profile

    return get_profile(DEVICE_ALIASES.get(device, device))


def _load_data(data: Any, seed: int) -> Any:
    if data is None or hasattr(data, "loader"):
        return data
    from fitplan.data import load_dataset

    return load_dataset(str(data), seed=seed)


def _space_kwargs_from_data(space_name: str, options: dict[str, Any], data: Any) -> dict[str, Any]:
    """Fill ``num_classes``/``in_chans`` from the data when the space takes them and the user did not."""
    from fitplan.search_spaces.base import SPACES, _ensure_builtin_spaces

    _ensure_builtin_spaces()
    opts = dict(options)
    if data is None:
        return opts
    params = inspect.signature(SPACES.get(space_name)).parameters
    if "num_classes" in params and "num_classes" not in opts:
        opts["num_classes"] = data.info.num_classes
    if "in_chans" in params and "in_chans" not in opts:
        opts["in_chans"] = data.info.in_chans
    return opts


SUPERNET_FILE = "supernet.safetensors"


def supernet_epochs(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, or on a small dataset the fewest epochs that give ``min_steps`` optimizer steps (see
    ``PlanRequest.supernet_min_steps``); 0 epochs stays 0 (training skipped)."""
    if epochs <= 0 or steps_per_epoch <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:10]


def save_supernet(supernet: Any, directory: Path, trained: bool, info: Mapping[str, Any] | None = None) -> Path:
    """Save a supernet as ``DIR/supernet.safetensors`` + ``.json`` (space spec); loadable as ``model=DIR``."""
    from fitplan.search_spaces.training import save_weights

    return save_weights(supernet, Path(directory) / SUPERNET_FILE,
                        {"space": supernet.space.spec(), "trained": bool(trained), **dict(info or {})})


def load_supernet(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    from fitplan.jsonio import load_versioned
    from fitplan.search_spaces import create_space
    from fitplan.search_spaces.training import load_weights

    path = Path(directory) / SUPERNET_FILE
    doc = load_versioned(path.with_suffix(path.suffix + ".json"), "fitplan-weights", (1,))
    spec = doc["meta"].get("space")
    if not spec:
        raise ConfigError("model", f"{directory} has no space spec in its supernet metadata")
    sn = create_space(spec).build_supernet()
    meta = load_weights(sn, path)
    return sn, meta


def resolve_model(model: Any, options: Mapping[str, Any], data: Any) -> tuple[Any, bool]:
    """``(supernet, trained)`` for any accepted ``model`` form."""
    from fitplan.search_spaces import Supernet, list_spaces
    from fitplan.search_spaces.timm_import import TIMM_CONVERTERS, from_timm

    if isinstance(model, Supernet):
        return model, True
    if isinstance(model, (str, Path)):
        p = Path(model)
        if p.is_dir():
            if not (p / SUPERNET_FILE).is_file():
                raise ConfigError("model", f"{p} is not a saved supernet dir (no {SUPERNET_FILE})")
            sn, meta = load_supernet(p)
            return sn, bool(meta.get("trained", True))
        name = str(model)
        if name in list_spaces():
            from fitplan.search_spaces import create_space

            return create_space(name, **_space_kwargs_from_data(name, dict(options), data)).build_supernet(), False
        if name in TIMM_CONVERTERS:
            return from_timm(name), False  # pretrained=False: weights are random until trained
        raise UnknownNameError("model", name, list(list_spaces()) + TIMM_CONVERTERS.names())
    if isinstance(model, nn.Module):
        try:
            return from_timm(model), True
        except UnknownNameError as e:
            raise ConfigError("model", f"unsupported module {type(model).__name__}: pass a timm model of a "
                                       f"supported family, a fitplan Supernet or a space name ({e})") from None
    raise ConfigError("model", f"unsupported type {type(model).__name__}",
                      ["timm name", "nn.Module (timm)", "Supernet", "space name", "supernet dir"])


def _measure_int8_factor(space: Any, supernet: Any, profile: Any, out_dir: Path, quick: bool,
                         batch: int) -> tuple[float | None, str]:
    """Measure fp32 vs all-int8 QDQ latency of the largest subnet here; cached in ``out_dir``."""
    from fitplan.planner.predict import measure_latency, timing_rule

    cache = out_dir / "int8_factor.json"
    if cache.is_file():
        doc = json.loads(cache.read_text())
        if doc.get("space") == space.spec() and doc.get("batch") == batch:
            return doc["factor"], doc["method"]
    cfg = space.largest()
    threads = int(profile.runtime.threads or 1)
    rule = timing_rule(quick)
    fp = measure_latency(space, cfg, profile, supernet=supernet, batch=batch, threads=threads, rule=rule)
    q = dict(cfg, bits=[8] * len(cfg["bits"]))
    i8 = measure_latency(space, q, profile, supernet=supernet, batch=batch, threads=threads, rule=rule)
    if fp.get("value") is None or i8.get("value") is None:
        return None, "int8 not measurable here"
    factor = float(fp["value"] / i8["value"])
    method = (f"measured here: largest subnet fp32 {fp['value']:.3f} ms vs all-int8 static QDQ "
              f"{i8['value']:.3f} ms -> factor {factor:.2f}")
    from fitplan.jsonio import atomic_write_text, dumps

    atomic_write_text(cache, dumps({"space": space.spec(), "batch": batch, "factor": factor, "method": method}))
    return factor, method


# ====================================================================== stage 1
def prepare(request: PlanRequest) -> PlanContext:
    """Resolve model, device, data and predictors; train the supernet if needed; check feasibility."""
    from fitplan.planner.predict import int8_searchable, resolve_accuracy, resolve_latency

    request.validate()
    budget: Budget = request.budget
    out = Path(request.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = resolve_profile(request.device)
    local = bool(profile.runtime.local)
    if not local and profile.runtime.batch != budget.batch_size:
        raise ConfigError("budget.batch_size", f"device {profile.name!r} has latency data for batch "
                                               f"{profile.runtime.batch} only", [profile.runtime.batch])
    power_w = getattr(profile, "power_w", None)
    if budget.energy_mj is not None and not (getattr(profile, "energy_available", False) and power_w):
        raise ConfigError("budget.energy_mj", f"device {profile.name!r} has no energy model (the planner needs "
                                              "energy_available and an average power_w in the profile); "
                                              "budget latency_ms instead")
    data = _load_data(request.data, request.seed)
    notes: list[str] = []

    # ---- model -> supernet (cached, trained on the data when given)
    cached = out / "supernet"
    supernet, trained = None, False
    source = json.dumps({"model": str(request.model), "space_options": request.space_options,
                         "data": getattr(getattr(data, "info", None), "name", None), "seed": request.seed},
                        sort_keys=True, default=str)
    if (cached / SUPERNET_FILE).is_file() and isinstance(request.model, str):
        sn, meta = load_supernet(cached)
        if meta.get("source") == source:
            supernet, trained = sn, bool(meta.get("trained"))
    if supernet is None:
        supernet, trained = resolve_model(request.model, request.space_options, data)
    space = supernet.space
    if data is not None and not trained and request.supernet_epochs > 0:
        from fitplan.search_spaces.training import train_supernet

        loader = data.loader("train", batch_size=request.train_batch_size, seed=request.seed)
        epochs = supernet_epochs(request.supernet_epochs, request.supernet_min_steps, len(loader))
        train_supernet(supernet, loader, epochs=epochs, seed=request.seed,
                       checkpoint_dir=out / f"supernet_ckpt_{_short_hash(source)}",
                       max_steps=request.max_train_steps, device="cpu")
        if epochs > request.supernet_epochs:
            steps = epochs * len(loader)
            if request.max_train_steps is not None and request.max_train_steps < steps:
                steps = f"stopped at max_train_steps {request.max_train_steps} of {steps}"
            notes.append(f"supernet trained on a schedule of {epochs} epochs ({steps} steps) instead of "
                         f"{request.supernet_epochs}: supernet_min_steps {request.supernet_min_steps}")
        trained = True
        save_supernet(supernet, cached, trained, {"source": source, "data": data.info.name})
        for stale in ("accuracy_predictor.json", "accuracy_predictor.npz", "accuracy_samples.json", "chosen.json"):
            (out / stale).unlink(missing_ok=True)  # fitted to / chosen with the previous supernet
    elif not (cached / SUPERNET_FILE).is_file() and isinstance(request.model, str):
        save_supernet(supernet, cached, trained, {"source": source})
    if not trained:
        notes.append("supernet weights are not trained (no data given): exported weights are untrained; "
                     "accuracy is a proxy")
    supernet.eval()

    # ---- latency predictor and compression capabilities (never assume an unknown speed-up)
    lat_fn, lat_desc, lat_models_comp, learned = resolve_latency(space, profile, out_dir=out, batch=budget.batch_size,
                                                        quick=request.quick, seed=request.seed)
    factors: dict[str, float] = dict(learned)
    if local and int8_searchable(space, profile) and not lat_models_comp:
        f, how = _measure_int8_factor(space, supernet, profile, out, request.quick, budget.batch_size)
        if f is not None:
            factors["int8"] = f
            notes.append(f"int8 speed-up {how}")
    speedups = compression_speedups(profile, factors)
    restrict, cap_notes = restricted_dimensions(space, speedups, list(budget.limits()), profile)
    notes += cap_notes
    compression_searched = any(len(v) > 1 for k, v in restrict.items()) or any(
        k not in restrict for k in ("bits", "sparsity") if k in space.dimensions)
    acc_fn, acc_desc = resolve_accuracy(space, supernet if trained else None, data if trained else None,
                                        out_dir=out, seed=request.seed, quick=request.quick,
                                        n_subnets=request.accuracy_subnets, sensitivity=compression_searched and not request.quick,
                                        restrict=restrict)
    evaluator = Evaluator(space, lat_fn, acc_fn, speedups=speedups, batch_size=budget.batch_size,
                          power_w=float(power_w) if budget.energy_mj is not None else None,
                          latency_models_compression=lat_models_comp,
                          predicted_by={"accuracy": acc_desc, "latency_ms": lat_desc + (
                              "" if lat_models_comp else "; compression via the profile's known speed-ups "
                                                         f"{ {k: v for k, v in speedups.items() if v} }"),
                              "size_mb": "analytic: params x bits x (1 - sparsity) + mask overhead",
                              "memory_mb": "analytic: stored weights + fp32 input + two largest activations"})
    problem = SearchProblem(space, evaluator, budget, restrict)
    minimal = check_feasible(problem)  # raises InfeasibleBudgetError before any search
    return PlanContext(request, budget, space, supernet, profile, data, evaluator, problem, out, notes,
                       minimal, trained)


# ====================================================================== stage 2
def run_search(ctx: PlanContext, storage: Any, study_name: str, n_trials: int) -> None:
    """Add ``n_trials`` predictor-guided trials to the study ``study_name`` in ``storage`` (created if
    missing, metric names set). Several workers may run this on the same study at once."""
    req = ctx.request
    study = create_study(storage, study_name, ctx.problem, req.sampler, req.seed, req.population,
                         ctx.study_attrs())
    n_seeds = enqueue_seeds(study, ctx.problem, req.known_good)
    engine = req.engine if req.engine != "auto" else ("evolve" if n_trials >= 2000 else "optuna")
    progress = not req.quick
    if engine == "optuna":
        run_optuna(study, ctx.problem, n_trials, batch=max(req.population, 1), progress=progress)
        return
    first = min(n_seeds, n_trials)
    if first:
        run_optuna(study, ctx.problem, first, batch=first, progress=False)
    seed = req.seed + len(study.get_trials(deepcopy=False))
    population = max(req.population, min(200, (n_trials - first) // 50))
    run_evolve(study, ctx.problem, n_trials - first, seed=seed, population=population, progress=progress)


# ====================================================================== stage 3
def finish(ctx: PlanContext, study: Any) -> Plan:
    """Front -> verify -> materialise -> fine-tune (resumable) -> export -> report; returns the Plan.

    A delivered file that re-times over the latency budget is never returned: its config is recorded as
    rejected (``chosen.json``) and the next candidate is verified, fine-tuned and exported, up to
    ``deliver_attempts`` materialisations in this call; then :class:`DeliveredOverBudgetError` (running
    ``finish`` again goes on from the rejections). Why: sub-millisecond graphs can time 10-20 % apart in
    two runs, so a candidate that passed the export gate can still land just over the budget."""
    for attempt in range(ctx.request.deliver_attempts):
        try:
            return _finish_once(ctx, study)
        except DeliveredOverBudgetError as e:
            if attempt + 1 >= ctx.request.deliver_attempts:
                raise
            ctx.notes.append(f"deliver: attempt {attempt + 1} rejected ({e}); the next candidate is materialised")
    raise AssertionError("unreachable")  # deliver_attempts >= 1 (validated)


def _finish_once(ctx: PlanContext, study: Any) -> Plan:
    """One materialisation: see :func:`finish`."""
    t0 = time.perf_counter()
    req, problem, out = ctx.request, ctx.problem, ctx.out_dir
    front = feasible_front(study, problem)
    if not front:
        raise InfeasibleBudgetError(_closest_violation(study, problem))
    configs = [problem.decode_params(t.params) for t in front]
    metrics, _, _ = problem.score(configs)
    entries = [make_entry(problem, c, metrics, i, t.number) for i, (c, t) in enumerate(zip(configs, front))]
    entries = [e for e in entries if feasible_predicted(problem, e["predicted"])]  # the final choice is checked
    entries.sort(key=predicted_key)
    entries = distinct_networks(ctx.space, entries)
    if not entries:
        raise InfeasibleBudgetError(_closest_violation(study, problem))

    # ---- verify on the real runtime (local) and re-rank on measured numbers
    verify = ctx.local if req.verify is None else (req.verify and ctx.local)
    chosen = None
    notes = list(ctx.notes)
    chosen_path = out / "chosen.json"
    previous = json.loads(chosen_path.read_text()) if chosen_path.is_file() else {}
    rejected = list(previous.get("rejected", []))
    if rejected:
        entries = [e for e in entries if e["config"] not in rejected]
        notes.append(f"{len(rejected)} candidate(s) rejected by an earlier run (exported model over the latency "
                     "budget when re-timed) are skipped")
        if not entries:
            raise InfeasibleBudgetError("every candidate of the front was rejected by earlier runs; relax the "
                                        "latency budget or run the search again with more trials")
    from fitplan.planner.materialize import build_model, save_and_export

    raw_calib = None
    if ctx.data is not None:
        from fitplan.data import calibration_batches

        raw_calib = calibration_batches(ctx.data, n_batches=4, seed=req.seed)

    def calib_for(c: Mapping[str, Any]) -> Any:
        if raw_calib is None:
            return None
        from fitplan.data import resize_for_shape

        return [resize_for_shape(b, ctx.space.input_shape(c)) for b in raw_calib]

    teacher_cache: list[Any] = []

    def teacher() -> Any:  # the largest subnet, BN recalibrated: built once, for the race and the fine-tune
        if not teacher_cache:
            from fitplan.planner.materialize import build_teacher

            teacher_cache.append(build_teacher(ctx.space, ctx.supernet, calib_for(ctx.space.largest())))
        return teacher_cache[0]

    resumed = next((e for e in entries if previous.get("config") is not None and e["config"] == previous["config"]),
                   None)
    if resumed is not None:  # a re-run (e.g. after a crash in fine-tuning) keeps the choice and its checkpoints
        resumed["measured"] = previous.get("measured", {})
        chosen = resumed
        notes.append("resumed: the candidate chosen by an earlier run of finish() (chosen.json) is kept")
    elif verify and "latency_ms" in problem.limits:
        chosen = _choose_measured(ctx, entries, calib_for, teacher, notes, validate=raw_calib is not None)
    elif verify:
        chosen = entries[0]
    else:
        if not ctx.local:
            notes.append(f"device {ctx.profile.name!r} is not local: latency is predicted, not measured")
        chosen = entries[0]
    chosen["chosen"] = True
    cfg = chosen["config"]
    from fitplan.jsonio import atomic_write_text, dumps

    atomic_write_text(chosen_path, dumps({"config": cfg, "measured": chosen["measured"], "rejected": rejected}))

    # ---- materialise, fine-tune, export
    calib = calib_for(cfg)
    model = build_model(ctx.space, ctx.supernet, cfg, calib)
    measured: dict[str, Any] = {}
    finetune_info: dict[str, Any] = {}
    if ctx.data is not None:
        from fitplan.search_spaces.training import evaluate, finetune

        test = ctx.data.loader("test", batch_size=256)
        t_acc = evaluate(teacher(), None, test)
        if req.finetune_epochs > 0:
            res = finetune(model, teacher(), train_loader(ctx), epochs=req.finetune_epochs,
                           checkpoint_dir=finetune_dir(out, cfg), seed=req.seed, max_steps=req.max_train_steps,
                           device="cpu")
            finetune_info = {"epochs": req.finetune_epochs, "teacher": "largest subnet of the supernet",
                             "result": _jsonable(res)}
        acc = evaluate(model, None, test)
        how = f"measured: top-1 on the {ctx.data.info.sizes['test']} test images of {ctx.data.info.name}"
        measured["accuracy"] = {"value": float(acc), "method": how}
        measured["teacher_accuracy"] = {"value": float(t_acc), "method": how + " (largest subnet, uncompressed)"}
        measured["accuracy_drop"] = {"value": float(t_acc - acc), "method": "teacher_accuracy - accuracy"}
        if ctx.budget.max_accuracy_drop is not None and t_acc - acc > ctx.budget.max_accuracy_drop:
            notes.append(f"measured accuracy drop {t_acc - acc:.4f} exceeds max_accuracy_drop "
                         f"{ctx.budget.max_accuracy_drop} (predicted drop was within budget)")
    model.eval()
    shape = ctx.space.input_shape(cfg)
    check_x = (calib[0][:8] if calib else torch.randn(4, *shape))
    artifacts, checks = save_and_export(model, ctx.space, cfg, out, check_x, batch=ctx.budget.batch_size)
    if "latency_ms" in chosen["measured"]:
        measured["latency_ms"] = chosen["measured"]["latency_ms"]
    lim = problem.limits.get("latency_ms")
    if verify:
        art = artifacts.get("model_int8_onnx") or artifacts["model_onnx"]
        final = time_delivered(ctx, art, shape, lim)
        measured["latency_ms_exported"] = final
        if "latency_ms" not in measured:
            measured["latency_ms"] = final
        if lim is not None and final["value"] > lim:
            gate_v = chosen["measured"].get("latency_ms_exported_gate", {}).get("value", float("nan"))
            rejected.append(cfg)
            atomic_write_text(chosen_path, dumps({"rejected": rejected}))
            import shutil

            shutil.rmtree(finetune_dir(out, cfg), ignore_errors=True)
            raise DeliveredOverBudgetError(
                f"the fine-tuned model {art} measured {final['value']:.3f} ms > latency budget {lim:g} ms on this "
                f"machine (before fine-tuning: {gate_v:.3f} ms): no plan is returned for it. It is recorded as rejected in chosen.json; "
                "run finish() again to materialise the next candidate, or raise latency_margin")
    checks["budget_met_predicted"] = feasible_predicted(problem, chosen["predicted"])
    if "latency_ms" in measured and lim is not None:
        checks["budget_met_measured_latency"] = bool(measured["latency_ms"]["value"] <= lim)
        if "latency_ms_exported" in measured:
            checks["budget_met_measured_exported"] = bool(measured["latency_ms_exported"]["value"] <= lim)
    plan = Plan(
        space=ctx.space.spec(),
        device={"name": ctx.profile.name, "kind": ctx.profile.kind, "runtime": ctx.profile.runtime.to_dict(),
                "local": ctx.local},
        budget=ctx.budget.to_dict(), config=cfg, predicted=chosen["predicted"],
        predicted_by=dict(ctx.evaluator.predicted_by), measured=measured, pareto=entries,
        artifacts={}, checks=checks,
        search={"study_name": study.study_name, "sampler": req.sampler, "engine": req.engine,
                "n_trials": len(study.get_trials(deepcopy=False)),
                "predictor_evaluations": count_evaluations(study),
                "reference_accuracy_predicted": problem.reference_accuracy,
                "minimal_achievable_predicted": ctx.minimal, "fixed_params": len(problem.fixed),
                "searched_params": len(problem.genes), "finish_seconds": None},
        finetune=finetune_info, notes=notes)
    from fitplan.planner.report import write_report

    pts = [(t.values[1], t.values[0]) for t in study.get_trials(deepcopy=False) if t.values is not None]
    artifacts.update(write_report(plan, out, pts[-5000:]))
    artifacts["plan_json"] = str(out / "plan.json")
    plan.artifacts = artifacts
    plan.search["finish_seconds"] = round(time.perf_counter() - t0, 2)
    plan.save(out / "plan.json")
    atomic_write_text(out / "summary.txt", plan.summary() + "\n")
    return plan


def _choose_measured(ctx: PlanContext, entries: list[dict[str, Any]], calib_for: Callable[[Any], Any],
                     teacher: Callable[[], Any], notes: list[str], validate: bool) -> dict[str, Any]:
    """The candidate to materialise on a local device with a latency budget: verify the front on the real
    runtime (re-searching when the predictor was biased), add uniformly scaled and band candidates, rank by
    validation (``validate``: with data), time the exported files, and race the gated ones (each step in its
    module: candidates, band, gate, race)."""
    try:
        ranked = verify_candidates(ctx, entries, notes)
    except InfeasibleBudgetError as first_error:
        ranked = reverify_tightened(ctx, entries, notes, first_error)
    else:
        ranked = refine_with_measurements(ctx, entries, ranked, notes)
    # one scorer for the whole choice: each network is evaluated on the validation split at most once
    score = ValidationScorer(ctx, calib_for) if ctx.request.validate_candidates and validate else None
    ranked = add_uniform(ctx, entries, ranked, notes, score=score)
    if score is not None:
        ranked = add_band(ctx, entries, ranked, notes, score)
        ranked = rank_by_validation(ctx, ranked, score, notes)
    want = race_size(ctx)
    try:
        gated = gate_exported(ctx, race_order(ranked, want), calib_for, notes, want=want)
    except InfeasibleBudgetError as gate_error:
        gated = gate_with_headroom(ctx, entries + ranked, calib_for, notes, gate_error, want=want)
    gated = uniform_after_gate(ctx, entries, ranked, gated, calib_for, notes, want, score)
    return race_finetune(ctx, gated, calib_for, teacher, notes) if len(gated) > 1 else gated[0]


def _jsonable(obj: Any) -> Any:
    try:
        from dataclasses import asdict as _a, is_dataclass

        d = _a(obj) if is_dataclass(obj) else dict(getattr(obj, "__dict__", {}))
        return json.loads(json.dumps(d, default=str))
    except Exception:  # noqa: BLE001
        return str(obj)


def _closest_violation(study: Any, problem: SearchProblem) -> str:
    from optuna.trial import TrialState

    best, best_v = None, float("inf")
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        v = sum(max(0.0, c) for c in t.constraints.values())
        if v < best_v:
            best, best_v = t, v
    if best is None:
        return "no trial completed: run the search first"
    parts = []
    for name, c in best.constraints.items():
        if c > 0:
            lim = problem.limits[name]
            unit = BUDGET_METRICS.get(name).unit
            parts.append(f"{name}: {lim + c:.3g} {unit} predicted > budget {lim:g} {unit}")
    return "no trial meets the budget; closest: " + "; ".join(parts)


# ====================================================================== one call
def plan(model: Any, device: Any = "local", budget: Any = None, data: Any = None, *,
         storage: Any = None, study_name: str | None = None, **options: Any) -> Plan:
    """Plan in one process: :func:`prepare`, :func:`run_search`, :func:`finish`.

    ``budget`` is a :class:`Budget` or dict (``{"latency_ms": 5}``); ``options`` are :class:`PlanRequest`
    fields (``out_dir``, ``n_trials``, ``sampler``, ``seed``, ``space_options``, ``quick``...).
    ``storage`` defaults to in-memory; pass a journal path or an SQL URL to keep / share the study.
    """
    import optuna

    req = PlanRequest.from_dict({"model": model, "device": device, "budget": budget, "data": data, **options})
    ctx = prepare(req)
    name = study_name or f"fitplan-{ctx.space.name}-{ctx.profile.name}"
    st = storage
    if st is None:
        st = optuna.storages.InMemoryStorage()
    run_search(ctx, st, name, req.n_trials)
    from fitplan.planner.search import make_storage

    study = optuna.load_study(study_name=name, storage=make_storage(st))
    return finish(ctx, study)
