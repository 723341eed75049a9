"""Finding profiles by name: built-in ones (shipped, registered) and user ones (JSON files).

Built-in profiles are registered factories in :data:`BUILTIN_PROFILES` (see
:mod:`fitplan.hw_profiles.builtin`); user profiles live in ``fitplan_home()/profiles/<name>.json``
(``$FITPLAN_HOME`` overrides the home folder). A user profile with a built-in's name overrides it: that is
how calibrating a built-in device (``fitplan calibrate fit --profile pixel3``) is stored without touching
the package.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from fitplan.errors import ConfigError, UnknownNameError
from fitplan.paths import fitplan_home
from fitplan.registry import Registry
from fitplan.hw_profiles.profile import HardwareProfile, check_profile_name

#: name -> factory returning a fresh built-in :class:`HardwareProfile`.
BUILTIN_PROFILES: Registry[Callable[[], HardwareProfile]] = Registry("hardware profile")


def profiles_dir() -> Path:
    """Folder of user profiles: ``fitplan_home()/profiles``."""
    return fitplan_home() / "profiles"


def _ensure_builtins() -> None:
    import fitplan.hw_profiles.builtin  # noqa: F401  (registers on import)


def user_profile_path(name: str) -> Path:
    return profiles_dir() / f"{check_profile_name(name)}.json"


def _user_names() -> list[str]:
    d = profiles_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if not p.name.startswith("."))


def list_profiles() -> list[str]:
    """Names of all known profiles (built-in and user), sorted."""
    _ensure_builtins()
    return sorted(set(BUILTIN_PROFILES.names()) | set(_user_names()))


def get_profile(name: str) -> HardwareProfile:
    """The profile called ``name``: a user profile if one exists, else the built-in one.

    Raises :class:`UnknownNameError` listing the known names and the closest match.
    """
    _ensure_builtins()
    if not isinstance(name, str):
        raise ConfigError("device", f"expected a profile name, got {type(name).__name__}")
    path = profiles_dir() / f"{name}.json"
    if name and "/" not in name and os.sep not in name and path.is_file():
        prof = HardwareProfile.load(path)
        if prof.name != name:
            raise ConfigError("name", f"{path} holds profile {prof.name!r}, expected {name!r} (file renamed?)")
        return prof
    if name in BUILTIN_PROFILES:
        prof = BUILTIN_PROFILES.get(name)()
        prof.builtin = True
        return prof
    raise UnknownNameError("hardware profile", name, list_profiles())


def all_profiles() -> list[HardwareProfile]:
    """Every known profile, by name."""
    return [get_profile(n) for n in list_profiles()]


def is_builtin(name: str) -> bool:
    _ensure_builtins()
    return name in BUILTIN_PROFILES


def save_profile(profile: HardwareProfile, *, overwrite: bool = True) -> Path:
    """Validate and write ``profile`` as a user profile; returns the file path.

    ``overwrite=False`` refuses to replace an existing user profile (:class:`ConfigError` on ``name``).
    Writing is atomic: an interrupted save leaves the previous file intact.
    """
    profile.validate()
    path = user_profile_path(profile.name)
    if path.exists() and not overwrite:
        raise ConfigError("name", f"a user profile {profile.name!r} already exists at {path}; "
                                  "choose another name or pass --force")
    profile.save(path)
    return path
