"""PlanRequest validation: bad options name the field and the allowed values."""

import pytest

from fitplan.planner import PlanRequest


@pytest.mark.parametrize("bad", [-1, 1.5, "x", True])
def test_bad_supernet_min_steps_names_field(bad):
    from fitplan.errors import ConfigError

    with pytest.raises(ConfigError, match="supernet_min_steps"):
        PlanRequest("planner_tiny", "local", {"latency_ms": 1.0}, supernet_min_steps=bad).validate()


@pytest.mark.parametrize("bad", [-0.1, 0.5, "x", True])
def test_bad_latency_margin_names_field(bad):
    from fitplan.errors import ConfigError

    with pytest.raises(ConfigError, match="latency_margin"):
        PlanRequest("planner_tiny", "local", {"latency_ms": 1.0}, latency_margin=bad).validate()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_deliver_attempts_names_field(bad):
    from fitplan.errors import ConfigError

    with pytest.raises(ConfigError, match="deliver_attempts"):
        PlanRequest("planner_tiny", "local", {"latency_ms": 1.0}, deliver_attempts=bad).validate()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x", True])
def test_bad_race_tolerance_names_field(bad):
    from fitplan.errors import ConfigError

    with pytest.raises(ConfigError, match="race_tolerance"):
        PlanRequest("planner_tiny", "local", {"latency_ms": 1.0}, race_tolerance=bad).validate()


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, "x", True])
def test_bad_race_fraction_names_field(bad):
    from fitplan.errors import ConfigError

    with pytest.raises(ConfigError, match="race_fraction"):
        PlanRequest("planner_tiny", "local", {"latency_ms": 1.0}, race_fraction=bad).validate()
