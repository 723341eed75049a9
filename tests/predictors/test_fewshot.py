"""Few-shot protocol (fitplan.predictors.fewshot): the product's method choice is scored like the others."""
from __future__ import annotations

import numpy as np

from fitplan.predictors.fewshot import METHODS, evaluate


def test_auto_and_analytic_methods_run_the_protocol():
    assert {"auto", "analytic", "ours+basis"} <= set(METHODS)
    rows = evaluate("fbnet", n_samples=(10,), draws=2, methods=("auto", "analytic", "ours+basis"),
                    devices=["pixel3"])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"auto", "analytic", "ours+basis"}
    for r in rows:
        assert np.isfinite([r["spearman"], r["mape"], r["within10"]]).all() and r["spearman"] > 0.8, r
