"""A small name -> factory registry, so every pluggable piece is looked up by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories. Filled by explicit imports of the modules that register."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **defaults: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("lira-online", online=True)`` (defaults bound at create)."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._factories[name] = factory
            self._defaults[name] = dict(defaults)
            return factory

        return deco

    def create(self, name: str, **params: Any) -> T:
        return self.factory(name)(**{**self._defaults[name], **params})

    def factory(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}") from None

    def defaults(self, name: str) -> dict[str, Any]:
        self.factory(name)
        return dict(self._defaults[name])

    def available(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())
