"""Planning: the best compressed subnet that fits a device and a budget.

``plan(model, device, budget, data=None, **options) -> Plan`` runs the three stages of the stage API in
one process: :func:`prepare` (space, supernet, profile, predictors, feasibility), :func:`run_search` (one
Optuna multi-objective study over the joint config, budgets as constraints) and :func:`finish` (Pareto
front, verification on the real runtime, materialisation, KD fine-tuning, ONNX export, report).
"""
from fitplan.planner.api import PlanContext, PlanRequest, finish, plan, prepare, run_search
from fitplan.planner.budget import BUDGET_METRICS, Budget
from fitplan.planner.materialize import load_model
from fitplan.planner.plan import Plan
from fitplan.planner.search import SAMPLERS

__all__ = ["BUDGET_METRICS", "Budget", "Plan", "PlanContext", "PlanRequest", "SAMPLERS", "finish", "load_model",
           "plan", "prepare", "run_search"]
