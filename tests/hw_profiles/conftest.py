"""Fixtures for the hw_profiles tests: the tiny space and an isolated ``FITPLAN_HOME``."""
from __future__ import annotations

import pytest

from fitplan.search_spaces.base import SPACES
from hwtest_helpers import TINY_NAME, TinySpace


@pytest.fixture
def tiny_space() -> TinySpace:
    return TinySpace()


@pytest.fixture
def registered_tiny():
    """Register the tiny space by name for CLI tests, and remove it afterwards."""
    SPACES.register(TINY_NAME, TinySpace, overwrite=True)
    yield TINY_NAME
    SPACES._items.pop(TINY_NAME, None)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """An isolated FITPLAN_HOME for every test here (never the user's ~/.fitplan)."""
    h = tmp_path / "home"
    monkeypatch.setenv("FITPLAN_HOME", str(h))
    return h
