"""Where fitplan finds shipped data, the shared research data and the user's own files."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def package_data(*parts: str) -> Path:
    """A file shipped inside the installed package (``fitplan/<parts>``)."""
    return PACKAGE_DIR.joinpath(*parts)


def fitplan_home() -> Path:
    """User state (profiles, calibrations): ``$FITPLAN_HOME`` or ``~/.fitplan``."""
    return Path(os.environ.get("FITPLAN_HOME", Path.home() / ".fitplan"))


def fitplan_cache() -> Path:
    """Machine-specific caches that can be rebuilt at any time (the timing reference and its anchors):
    ``$FITPLAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fitplan``, else ``~/.cache/fitplan``."""
    env = os.environ.get("FITPLAN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fitplan"


def shared_latency_dir() -> Path | None:
    """The measured-latency research data (``../shared/data/latency`` beside the repository), if present.

    ``$FITPLAN_SHARED_DATA`` overrides. Only build scripts and benchmarks read it; the package itself
    ships what it needs (see :mod:`fitplan.hw_profiles.latency_data`).
    """
    env = os.environ.get("FITPLAN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [PACKAGE_DIR.parent.parent / "shared" / "data" / "latency", Path.cwd().parent / "shared" / "data" / "latency"]
    for c in candidates:
        if (c / "fbnet" / "archs.json").exists():
            return c
    return None
