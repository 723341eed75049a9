"""Errors, registry, versioned JSON and the CLI entry point."""
import json

import pytest

from fitplan.cli import main
from fitplan.errors import ConfigError, UnknownNameError
from fitplan.jsonio import check_finite, load_versioned, save_versioned
from fitplan.registry import Registry


def test_registry_unknown_name_lists_known_and_closest():
    reg = Registry("sampler")
    reg.register("nsga2", object())
    reg.register("tpe", object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("nsgaii")
    msg = str(e.value)
    assert "nsga2" in msg and "tpe" in msg and "Did you mean 'nsga2'" in msg


def test_registry_refuses_silent_overwrite():
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError):
        reg.register("a", 2)


def test_config_error_names_field_and_allowed():
    e = ConfigError("bits.3", "invalid value 7", [4, 8, 32])
    assert str(e) == "bits.3: invalid value 7 (allowed: 4, 8, 32)"


def test_versioned_json_roundtrip_and_checks(tmp_path):
    p = tmp_path / "x.json"
    save_versioned(p, "thing", 1, {"a": [1, 2]})
    assert load_versioned(p, "thing", (1,))["a"] == [1, 2]
    with pytest.raises(ConfigError, match="format_version"):
        load_versioned(p, "thing", (2,))
    with pytest.raises(ConfigError, match="not a fitplan other"):
        load_versioned(p, "other", (1,))
    p.write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_versioned(p, "thing", (1,))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "3", True, None])
def test_check_finite_rejects(bad):
    with pytest.raises(ConfigError):
        check_finite("latency_ms", bad)


def test_cli_help_and_spaces(capsys):
    assert main([]) == 0
    assert "spaces" in capsys.readouterr().out
    assert main(["spaces", "--json"]) == 0
    spaces = json.loads(capsys.readouterr().out)
    assert all("dimensions" in s for s in spaces)


def test_cli_unknown_space_exits_2(capsys):
    assert main(["spaces", "no_such_space"]) == 2
    assert "unknown search space 'no_such_space'" in capsys.readouterr().err
