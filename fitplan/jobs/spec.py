"""Job specs: what a team submits (YAML or JSON), validated field by field.

A spec is a small, flat document; every key is checked and unknown keys are errors, so a typo never
silently falls back to a default. Errors are :class:`fitplan.errors.ConfigError` naming the dotted field
(``budget.latency_ms``) and, where the set is finite, the allowed values; the CLI turns them into exit 2.

Example::

    name: mnist-half-latency
    model: ofa_mbv3            # search-space name, timm model name, or a saved supernet path
    data: mnist5k              # built-in dataset name, or an ImageFolder directory
    device: local              # hardware profile name, or "local" (this machine, measured)
    budget: {latency_ms: 2.0, batch: 1}
    search: {trials: 300, sampler: nsga2, seed: 0, workers: 2}
    finetune: {epochs: 2}            # lr: where the pipeline takes one
    output: runs/mnist-half-latency

``pipeline`` (default ``planner``) picks the registered stage handlers that run the job (see
:mod:`fitplan.jobs.stages`); ``options`` holds pipeline-specific settings checked by that pipeline.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fitplan.errors import ConfigError
from fitplan.jsonio import check_finite

SPEC_VERSION = 1

#: Built-in dataset names accepted by ``data`` (anything else must be an existing ImageFolder directory).
BUILTIN_DATASETS = ("mnist5k", "mnist5k-rot", "digits")
#: Samplers the planner understands (multi-objective capable).
SAMPLERS = ("nsga2", "tpe", "gp", "random")
BUDGET_LIMITS = ("latency_ms", "memory_mb", "size_mb", "energy_mj", "max_accuracy_drop")
TOP_KEYS = ("name", "pipeline", "model", "data", "device", "budget", "search", "finetune", "output", "options")
SEARCH_KEYS = ("trials", "sampler", "seed", "workers", "timeout_s")
FINETUNE_KEYS = ("epochs", "lr")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class SearchSettings:
    """How many trials the shared study should end with, and how they are sampled."""

    trials: int = 200
    sampler: str = "nsga2"
    seed: int = 0
    workers: int = 1  # a hint for operators / dashboards; any number of workers may join
    timeout_s: float | None = None


@dataclass
class FinetuneSettings:
    epochs: int = 1
    lr: float | None = None  # None: the pipeline's default


@dataclass
class JobSpec:
    """A validated job spec. Build with :func:`parse_spec` / :func:`load_spec`, never by hand."""

    name: str
    pipeline: str = "planner"
    model: str | None = None
    data: str | None = None
    device: str | None = None
    budget: dict[str, float] = field(default_factory=dict)
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    output: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec_version"] = SPEC_VERSION
        return d

    def output_dir(self, job_id: str) -> Path:
        """Where the job's artifacts go: ``output`` if given, else ``./runs/<name>-<job id>``."""
        return Path(self.output) if self.output else Path("runs") / f"{self.name}-{job_id}"


def _check_keys(doc: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for k in doc:
        if k not in allowed:
            raise ConfigError(f"{prefix}{k}", "unknown key", allowed)


def _mapping(value: Any, fieldname: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(fieldname, f"expected a mapping, got {type(value).__name__}")
    return value


def _int(value: Any, fieldname: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(fieldname, f"expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ConfigError(fieldname, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return value


def _str(value: Any, fieldname: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(fieldname, f"expected a non-empty string, got {value!r}")
    return value.strip()


def parse_spec(doc: Any, base_dir: str | Path | None = None) -> JobSpec:
    """Validate a spec document (already parsed from YAML/JSON) and return a :class:`JobSpec`.

    Args:
        doc: the mapping read from the file.
        base_dir: directory relative paths (``data``, ``output``) are resolved against; the spec file's
            directory when loaded with :func:`load_spec`. Paths are stored absolute so that a worker on
            another machine with the same shared filesystem finds them.
    """
    from fitplan.jobs.stages import PIPELINES

    if not isinstance(doc, Mapping):
        raise ConfigError("spec", f"expected a mapping at the top level, got {type(doc).__name__}")
    doc = dict(doc)
    doc.pop("spec_version", None)
    _check_keys(doc, TOP_KEYS, "")
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    if "name" not in doc:
        raise ConfigError("name", "required (letters, digits, '_', '.', '-'; at most 64 characters)")
    name = doc["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError("name", f"{name!r} is not a valid job name "
                                  "(letters, digits, '_', '.', '-'; at most 64 characters)")

    pipeline = doc.get("pipeline", "planner")
    if pipeline not in PIPELINES:
        raise ConfigError("pipeline", f"unknown pipeline {pipeline!r}", PIPELINES.names())

    model = _str(doc["model"], "model") if doc.get("model") is not None else None
    device = _str(doc["device"], "device") if doc.get("device") is not None else None

    data = doc.get("data")
    if data is not None:
        data = _str(data, "data")
        if data not in BUILTIN_DATASETS:
            p = (base / data).resolve()
            if not p.is_dir():
                raise ConfigError("data", f"{data!r} is neither a built-in dataset nor an existing "
                                          "ImageFolder directory", BUILTIN_DATASETS)
            data = str(p)

    budget_doc = _mapping(doc.get("budget"), "budget")
    _check_keys(budget_doc, BUDGET_LIMITS + ("batch",), "budget.")
    budget: dict[str, float] = {}
    for k, v in budget_doc.items():
        if v is None:
            continue
        if k == "batch":
            budget[k] = _int(v, "budget.batch", 1, 4096)
        elif k == "max_accuracy_drop":
            x = check_finite("budget.max_accuracy_drop", v)
            if not 0 <= x < 1:
                raise ConfigError("budget.max_accuracy_drop", f"a fraction in [0, 1) (0.02 = two points), "
                                                              f"got {v!r}")
            budget[k] = x
        else:
            budget[k] = check_finite(f"budget.{k}", v, positive=True)

    s = _mapping(doc.get("search"), "search")
    _check_keys(s, SEARCH_KEYS, "search.")
    search = SearchSettings()
    if "trials" in s:
        search.trials = _int(s["trials"], "search.trials", 1, 10_000_000)
    if "sampler" in s:
        if s["sampler"] not in SAMPLERS:
            raise ConfigError("search.sampler", f"unknown sampler {s['sampler']!r}", SAMPLERS)
        search.sampler = s["sampler"]
    if "seed" in s:
        search.seed = _int(s["seed"], "search.seed", 0, 2**32 - 1)
    if "workers" in s:
        search.workers = _int(s["workers"], "search.workers", 1, 10_000)
    if s.get("timeout_s") is not None:
        search.timeout_s = check_finite("search.timeout_s", s["timeout_s"], positive=True)

    f = _mapping(doc.get("finetune"), "finetune")
    _check_keys(f, FINETUNE_KEYS, "finetune.")
    finetune = FinetuneSettings()
    if "epochs" in f:
        finetune.epochs = _int(f["epochs"], "finetune.epochs", 0, 10_000)
    if f.get("lr") is not None:
        finetune.lr = check_finite("finetune.lr", f["lr"], positive=True)

    output = doc.get("output")
    if output is not None:
        output = str((base / _str(output, "output")).resolve())

    options = dict(_mapping(doc.get("options"), "options"))
    spec = JobSpec(name=name, pipeline=pipeline, model=model, data=data, device=device, budget=budget,
                   search=search, finetune=finetune, output=output, options=options)
    PIPELINES.get(pipeline).validate(spec)
    return spec


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file and validate it (:func:`parse_spec`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("spec", f"file not found: {path}")
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError("spec", f"{path} could not be parsed: {e}") from None
    return parse_spec(doc, base_dir=path.resolve().parent)


def spec_from_dict(d: Mapping[str, Any]) -> JobSpec:
    """Rebuild a :class:`JobSpec` stored by :meth:`JobSpec.to_dict` (paths are already absolute)."""
    return parse_spec(d, base_dir="/")
