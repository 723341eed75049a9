"""Job specs and storage strings: valid ones parse, malformed ones fail naming the field (CLI exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fitplan.cli import main
from fitplan.errors import ConfigError
from fitplan.jobs import load_spec, parse_spec, resolve_storage

GOOD = {
    "name": "mnist-half",
    "model": "ofa_mbv3",
    "data": "mnist5k",
    "device": "local",
    "budget": {"latency_ms": 2.5, "size_mb": 4, "max_accuracy_drop": 0.02, "batch": 1},
    "search": {"trials": 300, "sampler": "tpe", "seed": 3, "workers": 4},
    "finetune": {"epochs": 2},
    "output": "runs/x",
}


def test_good_spec_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    spec = load_spec(p)
    assert spec.search.sampler == "tpe" and spec.search.trials == 300 and spec.budget["batch"] == 1
    assert spec.output == str((tmp_path / "runs/x").resolve())
    again = parse_spec(spec.to_dict(), base_dir="/")
    assert again == spec


def test_imagefolder_path_resolved(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    spec = parse_spec({**GOOD, "data": "imgs"}, base_dir=tmp_path)
    assert spec.data == str((tmp_path / "imgs").resolve())


def test_builtin_datasets_are_the_registered_ones(tmp_path: Path) -> None:
    """The spec keeps its own list (parsing a spec does not import torch); it must name every dataset."""
    from fitplan.data import dataset_names
    from fitplan.jobs.spec import BUILTIN_DATASETS

    assert sorted(BUILTIN_DATASETS) == sorted(dataset_names())
    assert parse_spec({**GOOD, "data": "mnist5k-rot"}, base_dir=tmp_path).data == "mnist5k-rot"


@pytest.mark.parametrize("patch, field, allowed_hint", [
    ({"nmae": "x"}, "nmae", "'name'"),
    ({"budget": {"latency": 2}}, "budget.latency", "'latency_ms'"),
    ({"budget": {"latency_ms": -1}}, "budget.latency_ms", None),
    ({"budget": {"latency_ms": "fast"}}, "budget.latency_ms", None),
    ({"budget": {"max_accuracy_drop": 3}}, "budget.max_accuracy_drop", None),
    ({"budget": {"batch": 0}}, "budget.batch", None),
    ({"search": {"sampler": "cmaes"}}, "search.sampler", "'nsga2'"),
    ({"search": {"trials": 0}}, "search.trials", None),
    ({"search": {"trails": 10}}, "search.trails", "'trials'"),
    ({"finetune": {"epochs": 1.5}}, "finetune.epochs", None),
    ({"finetune": {"lr": 0}}, "finetune.lr", None),
    ({"options": {"n_trials": 5}}, "options.n_trials", None),
    ({"options": {"supernet_epoch": 1}}, "options.supernet_epoch", "'supernet_epochs'"),
    ({"data": "no/such/dir"}, "data", "'mnist5k'"),
    ({"name": "bad name!"}, "name", None),
    ({"pipeline": "magic"}, "pipeline", "'selftest'"),
    ({"budget": {}}, "budget", "'latency_ms'"),
    ({"device": None}, "device", None),
])
def test_malformed_specs_name_the_field(patch: dict, field: str, allowed_hint: str | None) -> None:
    doc = {**GOOD, **patch}
    if "nmae" in patch:
        doc.pop("name")
    with pytest.raises(ConfigError) as e:
        parse_spec(doc)
    assert e.value.field == field
    if allowed_hint:
        assert allowed_hint in str(e.value)


def test_selftest_options_checked() -> None:
    with pytest.raises(ConfigError) as e:
        parse_spec({"name": "s", "pipeline": "selftest", "options": {"sample": 10}})
    assert e.value.field == "options.sample" and "'samples'" in str(e.value)


@pytest.mark.parametrize("text, field", [
    ("name: ok\nmodel: ofa_mbv3\ndevice: local\nbudget: {latency_ms: 2}\nsearch: {sampler: nope}\n",
     "search.sampler"),
    ("name: ok\nbudget: [1, 2]\n", "budget"),
    ("- just\n- a list\n", "spec"),
    ("name: ok\n  bad: indentation: here\n", "spec"),
])
def test_cli_submit_malformed_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                      field: str) -> None:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    code = main(["submit", str(p), "--storage", f"sqlite:///{tmp_path / 'jobs.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {field}" in err


def test_cli_missing_spec_and_bad_storage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["submit", str(tmp_path / "nope.yaml"), "--storage", f"sqlite:///{tmp_path / 'j.db'}"]) == 2
    assert "spec: file not found" in capsys.readouterr().err
    assert main(["status", "--storage", "mysql://u@h/db"]) == 2
    assert "storage: unsupported storage" in capsys.readouterr().err
    assert main(["result", "nojob", "--storage", f"sqlite:///{tmp_path / 'j.db'}"]) == 2
    assert "job: no job" in capsys.readouterr().err


def test_storage_strings(tmp_path: Path) -> None:
    assert resolve_storage(f"sqlite:///{tmp_path / 'a.db'}").name == "sqlite"
    j = resolve_storage(str(tmp_path / "studies.journal"))
    assert j.name == "journal" and j.jobs_url().endswith("studies.journal.jobs.db")
    assert resolve_storage("postgresql://u@127.0.0.1:5/db").row_locking
    with pytest.raises(ConfigError) as e:
        resolve_storage("sqlite:///:memory:")
    assert e.value.field == "storage"
