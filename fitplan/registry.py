"""A small name -> factory registry, used for spaces, profiles, predictors, samplers, CLI commands.

Registries replace if/elif chains on names: a module registers its factory with a decorator and the
rest of fitplan looks it up by name, with a helpful error for unknown names.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from fitplan.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factories).

    >>> samplers = Registry("sampler")
    >>> @samplers.register("tpe")
    ... def make_tpe(seed): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        def deco(o: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def lazy(module: str, attr: str) -> Callable[..., object]:
    """A factory that imports ``module.attr`` on first call (keeps CLI start-up fast)."""

    def factory(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    return factory
