"""A small name -> factory registry, so every pluggable piece is looked up by name, with typed parameters.

Each entry declares its parameters through its factory's signature (for a class, ``__init__``): the
annotated keyword parameters, with their defaults, become a pydantic model that validates a config's
``params`` before anything is built. Numbers and booleans are strict (YAML's ``true`` is not 1, "3" is
not 3); containers accept YAML lists. Parameters the caller supplies itself (``exclude``, e.g. a
model's input shape) and values bound at registration (e.g. ``online=True`` for ``lira-online``) are
not user parameters. A ``seed_param`` receives a seed derived from the run seed, never a constant.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, create_model

from fedmia.errors import InputError

T = TypeVar("T")


class UnknownNameError(KeyError, InputError):
    """Raised for a name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class ParamsError(InputError):
    """Parameters that an entry does not take, or of the wrong type; the message names them and what is allowed."""


_STRICT_SCALARS = (bool, int, float, str)


def _strict(tp: Any) -> Any:
    """The annotation with its scalar parts strict (``int`` -> ``Annotated[int, Strict()]``)."""
    if tp in _STRICT_SCALARS:
        return Annotated[tp, Strict()]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_strict(a) for a in args)]  # noqa: UP007  (built from a runtime tuple)
    if origin is not None and args and origin is not Annotated and origin is not typing.Literal:
        try:
            return origin[tuple(_strict(a) if a is not Ellipsis else a for a in args)]
        except TypeError:
            return tp
    return tp


@dataclass(frozen=True)
class Param:
    """One declared parameter of an entry: what ``fedmia list`` prints."""

    name: str
    annotation: str
    default: Any
    required: bool


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    bound: dict[str, Any]
    exclude: frozenset[str]
    seed_param: str | None
    description: str
    traits: Any

    def signature_params(self) -> list[tuple[inspect.Parameter, Any]]:
        """(parameter, resolved annotation) of every user-settable keyword parameter."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory  # type: ignore[misc]
        params = []
        for p in inspect.signature(target).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in self.exclude or p.name in self.bound or p.name == self.seed_param:
                continue
            params.append(p)
        hints = self._user_hints(target, [p.name for p in params])
        return [(p, hints.get(p.name, Any)) for p in params]

    def _user_hints(self, target: Callable[..., Any], names: list[str]) -> dict[str, Any]:
        """The resolved annotations of the user parameters ``names`` only (``Annotated`` ranges kept).

        Only these: a parameter the caller supplies may be annotated with a name imported for type
        checking alone (the optimizers' ``recipe: Recipe``), which does not resolve at run time and
        is never validated. A user parameter's annotation that does not resolve is a defect of the
        entry, raised here naming it, never silently read as ``Any`` (that would turn strict typing off).
        """
        own = getattr(target, "__annotations__", None) or {}
        wanted = {k: v for k, v in own.items() if k in names}
        if not wanted:
            return {}
        globalns = getattr(inspect.unwrap(target), "__globals__", {})
        holder = types.SimpleNamespace(__annotations__=wanted)
        try:
            return typing.get_type_hints(holder, globalns=globalns, include_extras=True)
        except NameError as exc:
            raise TypeError(
                f"{self.name!r}: an annotation of its parameters {sorted(wanted)} does not resolve at run time "
                f"({exc}); import that name at module level (not under TYPE_CHECKING) or exclude the parameter"
            ) from exc


class Registry(Generic[T]):
    """Maps names to factories. Filled by explicit imports of the modules that register."""

    def __init__(self, kind: str, exclude: Iterable[str] = (), plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._exclude = frozenset(exclude)  # parameters every entry's caller supplies itself
        self._entries: dict[str, Entry[T]] = {}
        self._models: dict[str, type[BaseModel]] = {}

    def register(
        self,
        name: str,
        *,
        exclude: Iterable[str] = (),
        seed_param: str | None = None,
        description: str | None = None,
        traits: Any = None,
        **bound: Any,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("lira-online", online=True)`` (``online`` bound, not a user parameter).

        ``traits``: what the rest of the code needs to know about the entry besides its parameters
        (e.g. a strategy's effect on the clients' recipe), so nobody compares names as strings.
        """

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            # the docstring's first paragraph, on one line
            doc = description or " ".join((inspect.getdoc(factory) or "").strip().split("\n\n")[0].split())
            self._entries[name] = Entry(
                name, factory, dict(bound), self._exclude | frozenset(exclude), seed_param, doc, traits
            )
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register toys clean up after themselves)."""
        self._entries.pop(name, None)
        self._models.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}") from None

    def factory(self, name: str) -> Callable[..., T]:
        return self.entry(name).factory

    def traits(self, name: str) -> Any:
        return self.entry(name).traits

    def params_model(self, name: str) -> type[BaseModel]:
        """The pydantic model of ``name``'s user parameters (extra fields forbidden)."""
        if name not in self._models:
            fields: dict[str, Any] = {}
            for p, hint in self.entry(name).signature_params():
                default = ... if p.default is inspect.Parameter.empty else p.default
                fields[p.name] = (_strict(hint), default)
            model_name = f"{self.kind}:{name}".replace("-", "_").replace(":", "__")
            self._models[name] = create_model(  # type: ignore[call-overload]
                model_name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
            )
        return self._models[name]

    def params(self, name: str) -> list[Param]:
        empty = inspect.Parameter.empty
        return [
            Param(p.name, _type_name(hint), None if p.default is empty else p.default, p.default is empty)
            for p, hint in self.entry(name).signature_params()
        ]

    def validate(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """The user's ``params`` for ``name``, checked and coerced; raises ParamsError naming what is wrong."""
        model = self.params_model(name)
        try:
            checked = model.model_validate(params)
        except ValidationError as exc:
            allowed = ", ".join(f"{p.name} ({p.annotation}, default {p.default!r})" for p in self.params(name))
            problems = []
            for e in exc.errors():
                loc = ".".join(str(x) for x in e["loc"])
                msg = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"]
                problems.append(f"{loc}: {msg}" if loc else msg)
            raise ParamsError(
                f"{self.kind} {name!r}: {'; '.join(problems)}. Allowed parameters: {allowed or 'none'}"
            ) from None
        return checked.model_dump(exclude_unset=True)

    def create(self, name: str, *, run_seed: int | None = None, **params: Any) -> T:
        """Build ``name`` from validated ``params``, the caller's excluded arguments and the bound values.

        Arguments in the registry's or the entry's ``exclude`` pass through unvalidated (the caller owns
        them); ``run_seed`` goes to the entry's ``seed_param`` when it has one.
        """
        entry = self.entry(name)
        own = {k: v for k, v in params.items() if k in entry.exclude}
        user = self.validate(name, {k: v for k, v in params.items() if k not in entry.exclude})
        if entry.seed_param is not None and run_seed is not None:
            own[entry.seed_param] = run_seed
        return entry.factory(**{**entry.bound, **user, **own})

    def defaults(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).bound)

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # ``Annotated[int, Strict(), Field(ge=1)]`` reads "int >= 1"
        bounds = [
            f"{sym} {getattr(m, key)}"
            for meta in args[1:]
            for m in [meta, *getattr(meta, "metadata", ())]
            for key, sym in _BOUNDS
            if getattr(m, key, None) is not None
        ]
        return " ".join([_type_name(args[0]), *bounds])
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is None and isinstance(tp, type):
        return tp.__name__
    if origin is not None and args and origin is not typing.Literal and isinstance(origin, type):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{_type_name(origin)}[{inner}]"
    return str(tp).replace("typing.", "").replace("collections.abc.", "")
