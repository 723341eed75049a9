"""Versioned JSON files: every file fitplan writes carries ``format`` and ``format_version``.

Readers check both and fail with a clear message instead of misreading an old or foreign file.
No pickle anywhere: JSON for structure, safetensors/npz for arrays, ONNX for models.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fitplan.errors import ConfigError


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(obj, indent=indent, default=_default, allow_nan=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_versioned(path: str | os.PathLike, kind: str, version: int, payload: dict[str, Any]) -> None:
    """Save ``payload`` with ``{"format": kind, "format_version": version}`` at the top."""
    doc = {"format": kind, "format_version": version, **payload}
    atomic_write_text(path, dumps(doc) + "\n")


def load_json(path: str | os.PathLike, field: str = "file") -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(field, f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(field, f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def load_versioned(path: str | os.PathLike, kind: str, supported: tuple[int, ...]) -> dict[str, Any]:
    """Load a file written by :func:`save_versioned`, checking its kind and version."""
    doc = load_json(path)
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise ConfigError("format", f"{path} is not a fitplan {kind} file", [kind])
    if doc.get("format_version") not in supported:
        raise ConfigError("format_version", f"{path} has unsupported version {doc.get('format_version')!r}",
                          supported)
    return doc


def check_finite(field: str, value: Any, *, positive: bool = False) -> float:
    """Validate one number from user input."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(field, f"must be finite, got {value!r}")
    if positive and v <= 0:
        raise ConfigError(field, f"must be > 0, got {value!r}")
    return v
