"""The joint search: one Optuna multi-objective study per plan over one flat config.

Every searchable element of ``space.dimensions`` (architecture, per-unit bits, per-unit sparsity, the
sparsity pattern, token keep ratios) is one categorical Optuna parameter named as ``space.to_params``
names it (``ks.3``, ``bits.7``). Objectives: predicted accuracy (maximise), predicted latency (minimise),
plus predicted size/memory when budgeted. Each budgeted metric is a constraint set with
``trial.set_constraint(name, value - limit)`` (feasible when <= 0), which NSGA-II, TPE and GP samplers use.

Two engines add trials to the same study:

``optuna``
    ask/tell in generations: the sampler proposes a batch, the predictors score the whole batch at once,
    results are told back. Costs Optuna's per-trial overhead (~100 trials/s in memory, less on SQL).
``evolve``
    a vectorised NSGA-II (same algorithm as the default sampler: constrained domination, crowding
    distance, uniform crossover, per-gene mutation) over choice indices, scoring whole generations with
    batch prediction; seeded from the study's current front, and its final non-dominated archive is written
    back to the study as completed trials (``user_attrs["engine"] = "evolve"``, ``"evaluations"`` = how many
    configs that run scored). Used for large budgets of trials (the >= 10k-in-60-s goal).

Both are deterministic for a given seed with one worker; several workers may share one study (storage URL).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from fitplan.errors import ConfigError, InfeasibleBudgetError
from fitplan.planner.budget import BUDGET_METRICS, Budget
from fitplan.planner.metrics import Evaluator
from fitplan.registry import Registry

Config = dict[str, Any]

#: sampler name -> factory(seed, population_size) -> optuna sampler
SAMPLERS: Registry[Callable[..., Any]] = Registry("sampler")


@SAMPLERS.register("nsga2")
def _nsga2(seed: int | None, population_size: int = 50) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)


@SAMPLERS.register("tpe")
def _tpe(seed: int | None, population_size: int = 50) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


@SAMPLERS.register("gp")
def _gp(seed: int | None, population_size: int = 50) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


@SAMPLERS.register("random")
def _random(seed: int | None, population_size: int = 50) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def make_storage(storage: Any) -> Any:
    """``None`` -> in-memory; ``sqlite:///...``/``postgresql://...``/any SQLAlchemy URL -> RDB storage;
    another string/path -> an Optuna journal file (``JournalStorage(JournalFileBackend(path))``);
    a storage object is returned as is."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    s = str(storage)
    if "://" in s:
        return optuna.storages.RDBStorage(s, engine_kwargs={"pool_pre_ping": True} if not s.startswith("sqlite") else None)
    from pathlib import Path

    Path(s).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(s))


#: share of genes an initial :meth:`SearchProblem.spread_genotypes` genotype takes from the cheapest or
#: largest config (the rest are random). Ad hoc, at the settings of ``benchmarks/plan_quality.py --part
#: search``: fbnet and ofa_mbv3 hypervolume at 2000 evaluations were within noise for 0.5-1.0, all above
#: uniformly random genotypes
SPREAD_KEEP = 0.7


@dataclass
class Gene:
    """One searchable parameter: flat name and its allowed choices."""

    name: str
    choices: tuple[Any, ...]


@dataclass
class SearchProblem:
    """The joint config search of one plan: genes, fixed values, objectives and constraints.

    Args:
        space: the search space.
        evaluator: predicted metrics.
        budget: the limits.
        restrict: dimension name -> allowed values (from device capabilities); a single value fixes it.
    """

    space: Any
    evaluator: Evaluator
    budget: Budget
    restrict: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dims = self.space.dimensions
        self.genes: list[Gene] = []
        self.fixed: dict[str, Any] = {}
        for dname, dim in self.dims.items():
            allowed = tuple(c for c in dim.choices if c in self.restrict.get(dname, dim.choices))
            for pname in dim.param_names():
                if len(allowed) == 1:
                    self.fixed[pname] = allowed[0]
                else:
                    self.genes.append(Gene(pname, allowed))
        self.limits = self.budget.limits()
        self.objectives: list[tuple[str, str]] = [("accuracy", "maximize"), ("latency_ms", "minimize")]
        for m in ("size_mb", "memory_mb", "energy_mj"):
            if m in self.limits and BUDGET_METRICS.get(m).objective:
                self.objectives.append((m, "minimize"))
        self.constraint_names = list(self.limits)
        self.reference_accuracy = float(self.evaluator.evaluate([self.space.largest()])["accuracy"][0])

    # ----------------------------------------------------------------- configs <-> params <-> genotypes
    def decode_params(self, params: Mapping[str, Any]) -> Config:
        """Config of a trial's params (fixed values filled in, cross-key rules repaired, validated)."""
        flat = {**self.fixed, **params}
        cfg: Config = {}
        for dname, dim in self.dims.items():
            if dim.length is None:
                cfg[dname] = flat[dname]
            else:
                cfg[dname] = [flat[f"{dname}.{i}"] for i in range(dim.length)]
        if cfg.get("sparsity_pattern") == "2:4":
            cfg["sparsity"] = [0.5 if s > 0 else 0.0 for s in cfg["sparsity"]]
        repair = getattr(self.space, "_repair", None)
        if repair is not None:
            cfg = repair(cfg)
        return self.space.validate(cfg)

    def encode_params(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Gene params of a config, or ``None`` when it uses a value the search excludes."""
        flat = self.space.to_params(self.space.validate(config))
        out = {}
        for g in self.genes:
            if flat[g.name] not in g.choices:
                return None
            out[g.name] = flat[g.name]
        for k, v in self.fixed.items():
            if flat[k] != v:
                return None
        return out

    def decode_genotypes(self, geno: np.ndarray) -> list[Config]:
        return [self.decode_params({g.name: g.choices[int(i)] for g, i in zip(self.genes, row)}) for row in geno]

    def genotype_of(self, params: Mapping[str, Any], missing: int | None = None) -> np.ndarray:
        """Choice indices of ``params``; a gene whose value is absent or not a choice raises (KeyError /
        ValueError), or gets ``missing`` when one is given."""
        if missing is None:
            return np.asarray([g.choices.index(params[g.name]) for g in self.genes], dtype=np.int64)
        return np.asarray([g.choices.index(params[g.name]) if params.get(g.name) in g.choices else missing
                           for g in self.genes], dtype=np.int64)

    def random_genotypes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        sizes = np.asarray([len(g.choices) for g in self.genes])
        return (rng.random((n, len(self.genes))) * sizes).astype(np.int64)

    def spread_genotypes(self, n: int, rng: np.random.Generator, keep: float = SPREAD_KEEP) -> np.ndarray:
        """``n`` genotypes spread from the cheapest config to the largest: genotype ``i`` takes each gene from
        the largest config with probability ``p_i`` (stratified over [0, 1]) and from the most compressed
        smallest config otherwise; then each gene is re-drawn at random with probability ``1 - keep``.

        Why: uniformly random genotypes all sit near the middle of the cost range (their latency is a sum of
        many independent per-unit costs), so a search started from them reaches the ends of the front, which
        hold much of its hypervolume, only after many generations. Genes whose value in an end config the
        search excludes are drawn at random."""
        low, high = (self.genotype_of(self.space.to_params(self.space.validate(cfg)), missing=-1)
                     for cfg in (self.most_compressed(self.space.smallest()) or self.space.smallest(),
                                 self.space.largest()))
        share = (np.arange(n) + rng.random(n)) / max(n, 1)
        geno = np.where(rng.random((n, len(self.genes))) < share[:, None], high[None], low[None])
        redraw = (rng.random(geno.shape) >= keep) | (geno < 0)
        return np.where(redraw, self.random_genotypes(n, rng), geno)

    # ----------------------------------------------------------------- scoring
    def score(self, configs: Sequence[Config]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """``(metrics, objective values [n, n_obj] in study directions, constraints [n, n_con])``."""
        m = self.evaluator.evaluate(configs)
        m["accuracy_drop"] = self.reference_accuracy - m["accuracy"]
        vals = np.stack([m[name] for name, _ in self.objectives], axis=1)
        cons = np.zeros((len(configs), len(self.constraint_names)))
        for j, name in enumerate(self.constraint_names):
            metric = "accuracy_drop" if name == "max_accuracy_drop" else name
            cons[:, j] = m[metric] - self.limits[name]
        return m, vals, cons

    def minimise_form(self, vals: np.ndarray) -> np.ndarray:
        sign = np.asarray([-1.0 if d == "maximize" else 1.0 for _, d in self.objectives])
        return vals * sign

    # ----------------------------------------------------------------- seeds
    def seed_configs(self, extra: Iterable[Config] = ()) -> list[Config]:
        """Smallest (most compressed the search allows), largest, largest with the most compression the
        device benefits from, and user-given known-good configs."""
        out = [self.space.smallest(), self.space.largest()]
        comp = self.most_compressed(self.space.smallest())
        if comp is not None:
            out.append(comp)
        comp_l = self.most_compressed(self.space.largest())
        if comp_l is not None:
            out.append(comp_l)
        out.extend(extra)
        return out

    def most_compressed(self, config: Config) -> Config | None:
        """``config`` with the lowest allowed bits and highest allowed sparsity on every unit."""
        cfg = dict(self.space.validate(config))
        n = len(cfg.get("bits", []))
        bits_allowed = [g.choices for g in self.genes if g.name.startswith("bits.")]
        sp_allowed = [g.choices for g in self.genes if g.name.startswith("sparsity.")]
        if bits_allowed:
            cfg["bits"] = [min(bits_allowed[0])] * n
        if sp_allowed:
            cfg["sparsity"] = [max(sp_allowed[0])] * n
            cfg["sparsity_pattern"] = self.fixed.get("sparsity_pattern", "unstructured")
        try:
            return self.space.validate(cfg)
        except ConfigError:
            return None


# ====================================================================== feasibility
def minimal_achievable(problem: SearchProblem, rng: np.random.Generator | None = None,
                       n_random: int = 256) -> dict[str, tuple[float, Config]]:
    """Lowest predicted value of each budgeted cost metric over the extreme configs (smallest arch, with
    and without the compression the device benefits from) and ``n_random`` random configs."""
    rng = rng or np.random.default_rng(0)
    cands = problem.seed_configs()
    if problem.genes:
        cands += problem.decode_genotypes(problem.random_genotypes(n_random, rng))
    m, _, _ = problem.score(cands)
    out = {}
    for name in problem.limits:
        if name == "max_accuracy_drop":
            continue
        i = int(np.argmin(m[name]))
        out[name] = (float(m[name][i]), cands[i])
    return out


def check_feasible(problem: SearchProblem) -> dict[str, float]:
    """Raise :class:`InfeasibleBudgetError` at once when a budgeted metric cannot be met even by the
    smallest, most compressed subnet; return the minimal achievable values otherwise."""
    mins = minimal_achievable(problem)
    bad = []
    for name, (v, _) in mins.items():
        lim = problem.limits[name]
        if v > lim:
            unit = BUDGET_METRICS.get(name).unit
            bad.append(f"smallest subnet: {v:.3g} {unit} predicted > budget {lim:g} {unit} ({name})")
    if bad:
        raise InfeasibleBudgetError("; ".join(bad) + ". Relax the budget or choose a smaller space/device.")
    return {k: v for k, (v, _) in mins.items()}


# ====================================================================== optuna study
def create_study(storage: Any, study_name: str, problem: SearchProblem, sampler: str = "nsga2",
                 seed: int | None = 0, population_size: int = 50, attrs: Mapping[str, Any] | None = None):
    """Create or load the study (``load_if_exists``), set metric names for optuna-dashboard."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=make_storage(storage), study_name=study_name,
                                sampler=SAMPLERS.get(sampler)(seed, population_size=population_size),
                                directions=[d for _, d in problem.objectives], load_if_exists=True)
    names = [n for n, _ in problem.objectives]
    if list(study.metric_names or []) != names:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    if attrs and "fitplan" not in study.user_attrs:
        study.set_user_attr("fitplan", dict(attrs))
    return study


def enqueue_seeds(study: Any, problem: SearchProblem, extra: Iterable[Config] = ()) -> int:
    """Enqueue the seed configs (skipped if already present, so several workers may call it)."""
    n = 0
    for cfg in problem.seed_configs(extra):
        params = problem.encode_params(cfg)
        if params is not None:
            study.enqueue_trial(params, skip_if_exists=True)
            n += 1
    return n


def _distributions(problem: SearchProblem) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {g.name: CategoricalDistribution(list(g.choices)) for g in problem.genes}


def run_optuna(study: Any, problem: SearchProblem, n_trials: int, batch: int = 50,
               progress: bool = True) -> int:
    """Ask/tell ``n_trials`` trials in batches scored together. Returns the number told."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    dists = _distributions(problem)
    told = 0
    bar = tqdm(total=n_trials, desc="search (optuna)", disable=not progress, leave=False)
    while told < n_trials:
        k = min(batch, n_trials - told)
        trials = [study.ask(dists) for _ in range(k)]
        configs, ok = [], []
        for t in trials:
            try:
                configs.append(problem.decode_params(t.params))
                ok.append(t)
            except ConfigError:
                study.tell(t, state=TrialState.FAIL)
        if configs:
            _, vals, cons = problem.score(configs)
            for t, v, c in zip(ok, vals, cons):
                for name, cv in zip(problem.constraint_names, c):
                    t.set_constraint(name, float(cv))
                study.tell(t, [float(x) for x in v])
        told += k
        bar.update(k)
    bar.close()
    return told


# ====================================================================== vectorised NSGA-II
def _violation(cons: np.ndarray) -> np.ndarray:
    return np.clip(cons, 0, None).sum(axis=1) if cons.size else np.zeros(len(cons))


def constrained_fronts(obj_min: np.ndarray, cons: np.ndarray) -> list[np.ndarray]:
    """Non-dominated sorting with Deb's constrained domination (feasible first, then less violation)."""
    n = len(obj_min)
    viol = _violation(cons)
    feas = viol <= 0
    le = (obj_min[:, None, :] <= obj_min[None, :, :]).all(-1)
    lt = (obj_min[:, None, :] < obj_min[None, :, :]).any(-1)
    dom = le & lt
    dom = np.where(feas[:, None] & feas[None, :], dom, False)
    dom |= feas[:, None] & ~feas[None, :]
    both_inf = ~feas[:, None] & ~feas[None, :]
    dom |= both_inf & (viol[:, None] < viol[None, :])
    count = dom.sum(axis=0)
    fronts = []
    remaining = np.ones(n, dtype=bool)
    while remaining.any():
        f = np.where(remaining & (count == 0))[0]
        if len(f) == 0:  # numerical safety
            f = np.where(remaining)[0]
        fronts.append(f)
        remaining[f] = False
        count = count - dom[f].sum(axis=0)
    return fronts


def crowding(obj_min: np.ndarray) -> np.ndarray:
    n, m = obj_min.shape
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(obj_min[:, j], kind="stable")
        v = obj_min[order, j]
        span = v[-1] - v[0]
        d[order[0]] = d[order[-1]] = np.inf
        if span > 0:
            d[order[1:-1]] += (v[2:] - v[:-2]) / span
    return d


def _select(obj_min: np.ndarray, cons: np.ndarray, k: int) -> np.ndarray:
    chosen: list[int] = []
    for f in constrained_fronts(obj_min, cons):
        if len(chosen) + len(f) <= k:
            chosen.extend(f.tolist())
        else:
            cd = crowding(obj_min[f])
            chosen.extend(f[np.argsort(-cd, kind="stable")[: k - len(chosen)]].tolist())
            break
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class EvolveResult:
    genotypes: np.ndarray
    values: np.ndarray
    constraints: np.ndarray
    evaluations: int
    seconds: float


def evolve(problem: SearchProblem, n_evals: int, seed: int = 0, population: int = 200,
           init: np.ndarray | None = None, progress: bool = True, mutation_rate: float | None = None,
           time_limit_s: float | None = None, spread: bool = True) -> EvolveResult:
    """Vectorised NSGA-II over choice indices: ``n_evals`` predictor evaluations in generations of
    ``population``; returns the final archive (all evaluated, de-duplicated) for front extraction.

    The first generation is ``init`` filled up with :meth:`SearchProblem.spread_genotypes` (``spread``,
    default) or uniformly random genotypes."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    sizes = np.asarray([len(g.choices) for g in problem.genes])
    G = len(problem.genes)
    pm = mutation_rate if mutation_rate is not None else max(1.0 / max(G, 1), 0.02)
    seen: set[bytes] = set()
    pop = init[:population] if init is not None and len(init) else np.zeros((0, G), dtype=np.int64)
    if len(pop) < population:
        fill = problem.spread_genotypes if spread else problem.random_genotypes
        pop = np.concatenate([pop, fill(population - len(pop), rng)])
    archive_g, archive_v, archive_c = [], [], []

    def score(geno: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = []
        for i, row in enumerate(geno):
            h = row.tobytes()
            if h not in seen:
                seen.add(h)
                keep.append(i)
        geno = geno[keep]
        configs = problem.decode_genotypes(geno)
        _, v, c = problem.score(configs)
        archive_g.append(geno)
        archive_v.append(v)
        archive_c.append(c)
        return geno, v, c

    bar = tqdm(total=n_evals, desc="search (evolve)", disable=not progress, leave=False)
    pop, pv, pc = score(pop)
    evals = len(pop)
    bar.update(evals)
    while evals < n_evals and G > 0:
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            break
        k = min(population, n_evals - evals)
        # binary tournament on (rank, crowding)
        om = problem.minimise_form(pv)
        rank = np.empty(len(pop))
        for r, f in enumerate(constrained_fronts(om, pc)):
            rank[f] = r
        cd = crowding(om)
        a, b = rng.integers(len(pop), size=(2, 2 * k))
        better = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (cd[a] >= cd[b]))
        parents = np.where(better, a, b).reshape(2, k)
        p1, p2 = pop[parents[0]], pop[parents[1]]
        swap = rng.random((k, G)) < 0.5
        child = np.where(swap, p2, p1)
        mut = rng.random((k, G)) < pm
        child = np.where(mut, (rng.random((k, G)) * sizes).astype(np.int64), child)
        cg, cv, cc = score(child)
        evals += k
        bar.update(k)
        if len(cg):
            allg, allv, allc = (np.concatenate([pop, cg]), np.concatenate([pv, cv]), np.concatenate([pc, cc]))
            sel = _select(problem.minimise_form(allv), allc, population)
            pop, pv, pc = allg[sel], allv[sel], allc[sel]
    bar.close()
    return EvolveResult(np.concatenate(archive_g), np.concatenate(archive_v), np.concatenate(archive_c),
                        evals, time.perf_counter() - t0)


def archive_front(res: EvolveResult, problem: SearchProblem, cap: int = 200) -> np.ndarray:
    """Indices of the first constrained front of an archive (feasible non-dominated), at most ``cap``
    spread by crowding distance, plus the best infeasible ones when nothing is feasible."""
    om = problem.minimise_form(res.values)
    f = constrained_fronts(om, res.constraints)[0]
    if len(f) > cap:
        cd = crowding(om[f])
        f = f[np.argsort(-cd, kind="stable")[:cap]]
    return f


def run_evolve(study: Any, problem: SearchProblem, n_evals: int, seed: int = 0, population: int = 200,
               progress: bool = True, cap: int = 200) -> EvolveResult:
    """Evolve ``n_evals`` configs seeded from the study's front; write the archive front to the study."""
    from optuna.trial import TrialState, create_trial

    init = []
    for t in _front_trials(study):
        try:
            init.append(problem.genotype_of(t.params))
        except (KeyError, ValueError):
            continue
    init_g = np.asarray(init, dtype=np.int64).reshape(-1, len(problem.genes)) if init else None
    res = evolve(problem, n_evals, seed=seed, population=population, init=init_g, progress=progress)
    idx = archive_front(res, problem, cap=cap)
    dists = _distributions(problem)
    trials = []
    for j, i in enumerate(idx):
        params = {g.name: g.choices[int(c)] for g, c in zip(problem.genes, res.genotypes[i])}
        trials.append(create_trial(
            state=TrialState.COMPLETE, values=[float(x) for x in res.values[i]], params=params,
            distributions=dists,
            constraints={n: float(c) for n, c in zip(problem.constraint_names, res.constraints[i])},
            user_attrs={"engine": "evolve", "evaluations": int(res.evaluations) if j == 0 else 0}))
    study.add_trials(trials)
    return res


def _front_trials(study: Any) -> list[Any]:

    try:
        return list(study.best_trials)
    except Exception:  # noqa: BLE001 - no completed trials yet
        return []


def count_evaluations(study: Any) -> int:
    """Predictor evaluations recorded in a study: 1 per ask/tell trial, ``evaluations`` per evolve run."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.user_attrs.get("engine") == "evolve":
            n += int(t.user_attrs.get("evaluations", 0))
        else:
            n += 1
    return n


# ====================================================================== fronts and quality
def feasible_front(study: Any, problem: SearchProblem) -> list[Any]:
    """Feasible non-dominated completed trials, de-duplicated by params, sorted by accuracy (best first)."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.values is not None and all(v <= 0 for v in t.constraints.values())]
    if not trials:
        return []
    vals = problem.minimise_form(np.asarray([t.values for t in trials], dtype=np.float64))
    f = constrained_fronts(vals, np.zeros((len(trials), 0)))[0]
    out, seen = [], set()
    for i in sorted(f.tolist(), key=lambda i: vals[i, 0]):
        key = tuple(sorted(trials[i].params.items()))
        if key not in seen:
            seen.add(key)
            out.append(trials[i])
    return out


def hypervolume_2d(points_min: np.ndarray, ref: Sequence[float]) -> float:
    """Hypervolume of 2-D minimisation points w.r.t. ``ref`` (points beyond ref ignored)."""
    p = np.asarray(points_min, dtype=np.float64).reshape(-1, 2)
    p = p[(p[:, 0] < ref[0]) & (p[:, 1] < ref[1])]
    if not len(p):
        return 0.0
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    hv, best_y = 0.0, ref[1]
    for x, y in p:
        if y < best_y:
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(hv)


def params_key(params: Mapping[str, Any]) -> str:
    return hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:12]
