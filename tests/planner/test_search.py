"""Budget, Plan, search engine, feasibility: fast tests on the tiny space with stand-in predictors."""
import numpy as np
import optuna
import pytest

from fitplan.errors import ConfigError, InfeasibleBudgetError, UnknownNameError
from fitplan.planner import Budget, Plan
from fitplan.planner.search import (SAMPLERS, check_feasible, constrained_fronts, count_evaluations,
                                    create_study, enqueue_seeds, evolve, feasible_front, hypervolume_2d,
                                    run_evolve, run_optuna)


# ----------------------------------------------------------------------------------------- Budget
def test_budget_validation_names_fields():
    assert Budget(latency_ms=5).limits() == {"latency_ms": 5.0}
    with pytest.raises(ConfigError, match="budget.latency_ms"):
        Budget(latency_ms=-1)
    with pytest.raises(ConfigError, match="budget.latency_ms"):
        Budget(latency_ms=float("nan"))
    with pytest.raises(ConfigError, match="budget.batch_size"):
        Budget(latency_ms=1, batch_size=0)
    with pytest.raises(ConfigError, match="budget.max_accuracy_drop"):
        Budget(max_accuracy_drop=2)
    with pytest.raises(ConfigError, match="no limit"):
        Budget()
    with pytest.raises(ConfigError, match="budget.latency"):
        Budget.from_dict({"latency": 3})
    b = Budget.from_dict({"latency_ms": 2, "size_mb": 1, "batch_size": 4})
    assert Budget.from_dict(b.to_dict()) == b


def test_plan_json_round_trip(tmp_path):
    p = Plan(space={"space": "planner_tiny"}, device={"name": "x"}, budget=Budget(latency_ms=1).to_dict(),
             config={"w": [4, 8]}, predicted={"accuracy": 0.9, "latency_ms": 0.5},
             measured={"latency_ms": {"value": 0.4, "method": "measured: test"}}, notes=["n"])
    path = p.save(tmp_path)
    assert path.name == "plan.json"
    q = Plan.load(tmp_path)
    assert q == p and q.to_dict()["format_version"] == 1
    assert "predicted 0.5" in q.summary() and "measured 0.4" in q.summary()
    (tmp_path / "bad.json").write_text('{"format": "other", "format_version": 1}')
    with pytest.raises(ConfigError, match="format"):
        Plan.load(tmp_path / "bad.json")


# ----------------------------------------------------------------------------------------- problem
def test_every_dimension_is_a_param_and_decode_round_trips(tiny_problem):
    prob = tiny_problem()
    names = {g.name for g in prob.genes} | set(prob.fixed)
    assert names == set(prob.space.to_params(prob.space.largest()))
    rng = np.random.default_rng(0)
    for cfg in prob.decode_genotypes(prob.random_genotypes(20, rng)):
        params = prob.encode_params(cfg)
        assert prob.decode_params(params) == cfg


def test_spread_genotypes_cover_the_cost_range():
    from _spaces import analytic_latency

    from fitplan.planner.metrics import Evaluator
    from fitplan.planner.predict import CapacityProxy
    from fitplan.planner.search import SearchProblem
    from fitplan.search_spaces import create_space

    space = create_space("fbnet")  # 22 genes of 9 ops: random genotypes stay in the middle of the range
    prob = SearchProblem(space, Evaluator(space, analytic_latency(space), CapacityProxy(space).predict),
                         Budget(latency_ms=1e9), {})
    n = 100
    spread = prob.spread_genotypes(n, np.random.default_rng(0))
    sizes = np.asarray([len(g.choices) for g in prob.genes])
    assert spread.shape == (n, len(prob.genes)) and (spread >= 0).all() and (spread < sizes).all()
    assert (spread == prob.spread_genotypes(n, np.random.default_rng(0))).all()  # deterministic per seed
    lat = {k: prob.score(prob.decode_genotypes(g))[0]["latency_ms"]
           for k, g in (("spread", spread), ("random", prob.random_genotypes(n, np.random.default_rng(0))))}
    lo, hi = prob.score([space.smallest(), space.largest()])[0]["latency_ms"]
    # closer to both ends of the latency range than random genotypes, and spread more widely between them
    assert lat["spread"].min() - lo < 0.5 * (lat["random"].min() - lo)
    assert hi - lat["spread"].max() < 0.5 * (hi - lat["random"].max())
    assert lat["spread"].std() > 1.5 * lat["random"].std()


def test_restrict_fixes_dimensions(tiny_problem):
    prob = tiny_problem(restrict={"bits": [32], "sparsity": [0.0], "sparsity_pattern": ["unstructured"]})
    assert all(not g.name.startswith(("bits", "sparsity")) for g in prob.genes)
    assert prob.fixed["bits.0"] == 32


def test_infeasible_budget_reported_at_once(tiny_problem):
    prob = tiny_problem({"latency_ms": 0.001})
    with pytest.raises(InfeasibleBudgetError, match=r"smallest subnet: 0\.0198 ms predicted > budget 0\.001 ms"):
        check_feasible(prob)
    mins = check_feasible(tiny_problem({"latency_ms": 0.05}))
    assert mins["latency_ms"] == pytest.approx(0.019832)


def test_size_budget_uses_compression_for_minimum(tiny_problem):
    prob = tiny_problem({"size_mb": 1e-4})  # 100 bytes: impossible even at 4 bits, 75 % sparse
    with pytest.raises(InfeasibleBudgetError, match="size_mb"):
        check_feasible(prob)
    full = tiny_problem({"size_mb": 1.0})
    smallest_fp32 = full.evaluator.evaluate([full.space.smallest()])["size_mb"][0]
    assert check_feasible(full)["size_mb"] < smallest_fp32 / 4  # 4-bit + sparsity counted


# ----------------------------------------------------------------------------------------- optuna
def _study(prob, sampler="nsga2", seed=0, storage=None, name="s"):
    return create_study(storage, name, prob, sampler, seed, population_size=20)


def test_optuna_constraints_metric_names_and_front_feasible(tiny_problem):
    prob = tiny_problem({"latency_ms": 0.04})
    study = _study(prob)
    assert enqueue_seeds(study, prob) >= 2
    run_optuna(study, prob, 120, batch=20, progress=False)
    assert study.metric_names == ["accuracy", "latency_ms"]
    assert len(study.trials) == 120
    assert all("latency_ms" in t.constraints for t in study.trials)
    front = feasible_front(study, prob)
    assert front and all(t.values[1] <= 0.04 for t in front)
    # seeds ran first: the smallest and the largest configs are in the study
    lat = sorted(t.values[1] for t in study.trials[:4])
    assert lat[0] == pytest.approx(0.019832)


def test_deterministic_with_seed(tiny_problem):
    def run(seed):
        prob = tiny_problem({"latency_ms": 0.04})
        study = _study(prob, seed=seed)
        enqueue_seeds(study, prob)
        run_optuna(study, prob, 60, batch=20, progress=False)
        return [t.params for t in study.trials]

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp"])
def test_samplers_registry(tiny_problem, sampler):
    prob = tiny_problem({"latency_ms": 0.04})
    study = _study(prob, sampler=sampler)
    run_optuna(study, prob, 12 if sampler == "gp" else 30, batch=4, progress=False)
    assert feasible_front(study, prob)
    with pytest.raises(UnknownNameError, match="sampler"):
        SAMPLERS.get("cmaes-typo")


def test_shared_journal_study_two_workers(tiny_problem, tmp_path):
    prob = tiny_problem({"latency_ms": 0.04})
    path = str(tmp_path / "study.journal")
    for worker in range(2):
        study = _study(prob, storage=path, name="shared", seed=worker)
        enqueue_seeds(study, prob)  # skip_if_exists: no duplicate seeds
        run_optuna(study, prob, 15, batch=5, progress=False)
    study = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path)))
    assert len(study.trials) == 30
    assert study.user_attrs == {} or "fitplan" in study.user_attrs


# ----------------------------------------------------------------------------------------- evolve
def test_constrained_fronts_feasible_first():
    obj = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 2.0]])
    cons = np.array([[1.0], [0.0], [0.0]])
    fronts = constrained_fronts(obj, cons)
    assert set(fronts[0]) == {1, 2} and list(fronts[1]) == [0]


def test_evolve_writes_front_to_study_and_counts_evaluations(tiny_problem):
    prob = tiny_problem({"latency_ms": 0.04})
    res = evolve(prob, 400, seed=0, population=50, progress=False)
    assert res.evaluations >= 400 and len(res.genotypes) == len(np.unique(res.genotypes, axis=0))
    study = _study(prob)
    run_evolve(study, prob, 300, seed=0, population=50, progress=False)
    front = feasible_front(study, prob)
    assert front and all(t.values[1] <= 0.04 for t in front)
    assert count_evaluations(study) >= 300


def test_hypervolume_2d():
    assert hypervolume_2d(np.array([[0.0, 0.0]]), (1.0, 1.0)) == pytest.approx(1.0)
    assert hypervolume_2d(np.array([[0.0, 0.5], [0.5, 0.0]]), (1.0, 1.0)) == pytest.approx(0.75)
    assert hypervolume_2d(np.array([[2.0, 2.0]]), (1.0, 1.0)) == 0.0


@pytest.mark.parametrize("name", ["elastic_resnet", "elastic_vit", "fbnet", "ofa_mbv3"])
def test_every_registered_space_searches_jointly(name):
    """All dimensions (arch, resolution, bits, sparsity, tokens) become params; budgets hold on the front."""
    from _spaces import analytic_latency
    from fitplan import create_space, list_spaces
    from fitplan.planner.metrics import Evaluator
    from fitplan.planner.predict import CapacityProxy
    from fitplan.planner.search import SearchProblem

    if name not in list_spaces():
        pytest.skip(f"space {name} not in this checkout")
    space = create_space(name)
    ev = Evaluator(space, analytic_latency(space), CapacityProxy(space).predict)
    big = ev.evaluate_one(space.largest())["latency_ms"]
    prob = SearchProblem(space, ev, Budget(latency_ms=0.7 * big, size_mb=100))
    assert {g.name.split(".")[0] for g in prob.genes} == set(space.dimensions)
    check_feasible(prob)
    study = create_study(None, "x", prob, "nsga2", 0, population_size=20)
    enqueue_seeds(study, prob)
    run_optuna(study, prob, 40, batch=20, progress=False)
    front = feasible_front(study, prob)
    assert front and all(t.values[1] <= 0.7 * big for t in front)


def test_build_model_recalibrates_batchnorm():
    """The supernet's shared BN statistics mix all subnets: a materialised subnet gets its own."""
    import torch

    from fitplan.planner.materialize import build_model
    from fitplan.search_spaces import create_space

    space = create_space("planner_tiny")
    supernet = space.build_supernet().eval()
    for m in supernet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(100.0)
    cfg = space.largest()
    calib = [torch.randn(8, *space.input_shape(cfg)) for _ in range(2)]
    model = build_model(space, supernet, cfg, calib)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(float(bn.running_mean.abs().max()) < 50.0 for bn in bns)


def test_evaluator_passes_its_unit_arrays_to_marked_predictors():
    """A predictor marked with takes_unit_arrays gets the batch's UnitArrays (built once per batch); an
    unmarked one gets the configs only, and both give the same values."""
    from _spaces import analytic_latency

    from fitplan.planner.metrics import Evaluator, UnitArrays, takes_unit_arrays
    from fitplan.planner.predict import CapacityProxy
    from fitplan.search_spaces import create_space

    space = create_space("ofa_mbv3")
    lat = analytic_latency(space)
    seen = []

    @takes_unit_arrays
    def marked(configs, ua=None):
        seen.append(ua)
        return lat(configs)

    configs = [space.smallest(), space.largest()]
    plain = Evaluator(space, lat, CapacityProxy(space).predict).evaluate(configs)
    got = Evaluator(space, marked, CapacityProxy(space).predict).evaluate(configs)
    assert isinstance(seen[0], UnitArrays) and seen[0].macs.shape == (2, len(space.units()))
    np.testing.assert_allclose(got["latency_ms"], plain["latency_ms"])
    assert marked(configs).shape == (2,) and seen[-1] is None  # still callable with configs only
