"""Reading measured-latency calibration samples: the input format both latency predictors accept.

``[{"arch" | "config": <arch>, "latency_ms": float}, ...]`` or ``{"samples": [...]}``. Each predictor
validates the arch against its own space and decides what a repeated arch means; the shape checks and
the latency check live here once, so both report the same field names (``samples.3.latency_ms``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fitplan.errors import ConfigError
from fitplan.jsonio import check_finite


def sample_list(samples: Any) -> list[Any] | tuple[Any, ...]:
    """The list of samples, unwrapping ``{"samples": [...]}``; :class:`ConfigError` for anything else."""
    if isinstance(samples, Mapping):
        if "samples" not in samples:
            raise ConfigError("samples", "expected a list of samples or {\"samples\": [...]}")
        samples = samples["samples"]
    if not isinstance(samples, (list, tuple)):
        raise ConfigError("samples", f"expected a list of {{'arch', 'latency_ms'}} objects, got "
                                     f"{type(samples).__name__}")
    return samples


def iter_samples(samples: Any) -> Iterator[tuple[int, str, Any, float]]:
    """``(index, field, arch, latency_ms)`` per sample, ``field`` being ``samples.<i>.arch`` or
    ``samples.<i>.config`` (whichever key held the arch); the latency is finite and positive."""
    for i, s in enumerate(sample_list(samples)):
        f = f"samples.{i}"
        if not isinstance(s, Mapping):
            raise ConfigError(f, f"expected an object with 'arch' and 'latency_ms', got {type(s).__name__}")
        key = "arch" if "arch" in s else "config"
        arch = s.get(key)
        if arch is None:
            raise ConfigError(f"{f}.arch", "missing key")
        if "latency_ms" not in s:
            raise ConfigError(f"{f}.latency_ms", "missing key")
        yield i, f"{f}.{key}", arch, check_finite(f"{f}.latency_ms", s["latency_ms"], positive=True)
