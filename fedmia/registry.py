"""A small name -> factory registry, so every pluggable piece is looked up by name, with typed parameters.

Each entry declares its parameters through its factory's signature (for a class, ``__init__``): the
annotated keyword parameters, with their defaults, become a pydantic model that validates a config's
``params`` before anything is built. Numbers and booleans are strict (YAML's ``true`` is not 1, "3" is
not 3); containers accept YAML lists. Parameters the caller supplies itself (``exclude``, e.g. a
model's input shape) and values bound at registration (e.g. ``online=True`` for ``lira-online``) are
not user parameters. A ``seed_param`` receives a seed derived from the run seed, never a constant.

Plugins (users extend fedmia without editing it): wherever a registered name is accepted, an import
path ``package.module:factory`` is too, and installed packages add entries through entry points in the
group ``fedmia.<plural>`` (``[project.entry-points."fedmia.models"]``, ``"fedmia.datasets"``,
``"fedmia.attacks"``, ...), read once and imported only when used. A plugin's parameters are read from its
factory's signature exactly as a built-in's, with one rule more: every user parameter must be annotated
(an unannotated one would silently accept anything). A factory may carry ``fedmia_traits`` (what
``register(traits=...)`` gives a built-in, e.g. ``ModelTraits(family="vae")``) and ``fedmia_seed_param``.
A bad import path, a factory without annotations, or an entry-point name that a built-in or another
plugin already has is an ``InputError`` naming it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
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


class PluginError(InputError):
    """A plugin that cannot be used: a bad import path, a factory without annotations, a name taken twice."""


# ``package.module:factory`` (the attribute may be dotted: ``package.module:Class.create``)
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
BUILT_IN = "built-in"


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
    origin: str = BUILT_IN  # "built-in", "import path", or "entry point <group> (<distribution>)"

    def signature_params(self) -> list[tuple[inspect.Parameter, Any]]:
        """(parameter, resolved annotation) of every user-settable keyword parameter."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory  # type: ignore[misc]
        params = _user_parameters(self)
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

    def __init__(
        self, kind: str, exclude: Iterable[str] = (), plural: str | None = None, group: str | None = None
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.group = group or f"fedmia.{self.plural.replace(' ', '_')}"  # the entry-point group of its plugins
        self._exclude = frozenset(exclude)  # parameters every entry's caller supplies itself
        self._entries: dict[str, Entry[T]] = {}
        self._models: dict[str, type[BaseModel]] = {}
        self._plugins: dict[str, Entry[T]] = {}  # import paths and entry points, once loaded
        self._entry_points: dict[str, EntryPoint] | None = None  # None: not read yet

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
            if self._entry_points is not None and name in self._entry_points:
                raise PluginError(self._collision(name, self._entry_points[name]))
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
        self._plugins.pop(name, None)
        self._models.pop(name, None)

    def reload_plugins(self) -> None:
        """Forget the entry points read and the plugins loaded (tests that fake entry points call it)."""
        for name in self._plugins:
            self._models.pop(name, None)
        self._plugins.clear()
        self._entry_points = None

    def entry(self, name: str) -> Entry[T]:
        """The entry of a registered name, an installed plugin's name, or an import path ``module:factory``."""
        if name in self._entries:
            return self._entries[name]
        if name in self._plugins:
            return self._plugins[name]
        if isinstance(name, str) and ":" in name:
            if not _IMPORT_PATH.match(name):
                raise PluginError(
                    f"{self.kind} {name!r} is not an import path; write it as package.module:factory "
                    "(dotted Python names, one colon)"
                )
            factory = self._import(name)
            return self._add_plugin(name, factory, "import path")
        found = self._read_entry_points().get(name) if isinstance(name, str) else None
        if found is not None:
            try:
                factory = found.load()
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{self.kind} {name!r}: entry point {found.value!r} of {_dist(found)} in group {self.group!r} "
                    f"does not load: {exc}"
                ) from None
            return self._add_plugin(name, factory, f"entry point {self.group} ({_dist(found)}: {found.value})")
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; available: {', '.join(self.available())} "
            "(or an import path package.module:factory)"
        ) from None

    def _import(self, path: str) -> Callable[..., T]:
        """The object an import path names; a module or attribute that is not there is a ``PluginError``."""
        module_name, _, attr = path.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # only a missing module of the path itself is bad input; one its code imports is its own defect
            if exc.name is None or not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
                raise
            raise PluginError(
                f"{self.kind} {path!r}: no module named {exc.name!r} (install the package that holds it, "
                "or put its folder on PYTHONPATH)"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise PluginError(f"{self.kind} {path!r}: {getattr(obj, '__name__', module_name)!r} has no {part!r}")
            obj = getattr(obj, part)
        return typing.cast(Callable[..., T], obj)

    def _add_plugin(self, name: str, factory: Any, origin: str) -> Entry[T]:
        """Check a plugin's factory the way a built-in's parameters are read, and keep its entry."""
        if not callable(factory):
            raise PluginError(f"{self.kind} {name!r} ({origin}) is a {type(factory).__name__}, not a callable factory")
        seed_param = getattr(factory, "fedmia_seed_param", None)
        doc = " ".join((inspect.getdoc(factory) or "").strip().split("\n\n")[0].split())
        entry: Entry[T] = Entry(
            name, factory, {}, self._exclude, seed_param, doc, getattr(factory, "fedmia_traits", None), origin
        )
        try:
            inspect.signature(factory)
            _user_parameters(entry)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{self.kind} {name!r} ({origin}): its signature cannot be read ({exc})") from None
        unannotated = [p.name for p in _user_parameters(entry) if p.annotation is inspect.Parameter.empty]
        if unannotated:
            raise PluginError(
                f"{self.kind} {name!r} ({origin}): parameter(s) {', '.join(unannotated)} have no type annotation; "
                "fedmia reads a plugin's parameters and their types from its factory's signature "
                "(e.g. `width: int = 64`)"
            )
        try:
            entry.signature_params()
        except TypeError as exc:  # an annotation that does not resolve
            raise PluginError(f"{self.kind} {name!r} ({origin}): {exc}") from None
        self._plugins[name] = entry
        try:
            self.params_model(name)
        except Exception as exc:  # pydantic cannot build a validator from an annotation
            self._plugins.pop(name, None)
            raise PluginError(f"{self.kind} {name!r} ({origin}): its parameters cannot be validated: {exc}") from None
        return entry

    def _read_entry_points(self) -> dict[str, EntryPoint]:
        """This registry's entry points by name, read once; a name taken twice is a ``PluginError``."""
        if self._entry_points is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                if ep.name in self._entries:
                    raise PluginError(self._collision(ep.name, ep))
                other = found.get(ep.name)
                if other is not None and (other.value, _dist(other)) != (ep.value, _dist(ep)):
                    raise PluginError(
                        f"{self.kind} {ep.name!r} is registered twice through entry points in group {self.group!r}: "
                        f"{other.value!r} ({_dist(other)}) and {ep.value!r} ({_dist(ep)}); uninstall or rename one"
                    )
                found[ep.name] = ep
            self._entry_points = found
        return self._entry_points

    def _collision(self, name: str, ep: EntryPoint) -> str:
        return (
            f"{self.kind} {name!r}: entry point {ep.value!r} of {_dist(ep)} in group {self.group!r} takes the name "
            f"of a built-in {self.kind}; rename the entry point"
        )

    def plugins(self) -> list[str]:
        """The names of this registry's installed plugins (entry points), sorted; nothing is imported."""
        return sorted(self._read_entry_points())

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
            model_name = re.sub(r"\W", "_", f"{self.kind}__{name}")
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
        args = {**entry.bound, **user, **own}
        if entry.origin != BUILT_IN:  # a plugin that does not take what fedmia passes is named, not a TypeError
            try:
                inspect.signature(entry.factory).bind(**args)
            except TypeError as exc:
                raise PluginError(
                    f"{self.kind} {name!r} ({entry.origin}) cannot be called with the arguments fedmia passes "
                    f"({', '.join(sorted(args)) or 'none'}): {exc}"
                ) from None
        return entry.factory(**args)

    def defaults(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).bound)

    def available(self) -> list[str]:
        """Built-in entries and installed plugins (entry points), sorted."""
        return sorted({*self._entries, *self._read_entry_points()})

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` can be used: registered, an installed plugin, or an import path that loads (a bad
        import path raises ``PluginError`` naming what is wrong, rather than reading as an unknown name)."""
        if not isinstance(name, str):
            return False
        if name in self._entries or name in self._plugins:
            return True
        if ":" in name or name in self._read_entry_points():
            self.entry(name)
            return True
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())


def _user_parameters(entry: Entry[Any]) -> list[inspect.Parameter]:
    """The parameters of ``entry``'s factory that the user sets (not ``self``, ``*args``, excluded or bound)."""
    target = entry.factory.__init__ if inspect.isclass(entry.factory) else entry.factory  # type: ignore[misc]
    skip = entry.exclude | set(entry.bound) | {entry.seed_param}
    return [
        p
        for p in inspect.signature(target).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in skip
    ]


def _dist(ep: EntryPoint) -> str:
    """The distribution that declares ``ep``, for messages."""
    dist = getattr(ep, "dist", None)
    return f"package {dist.name} {dist.version}" if dist is not None else "an unknown package"


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
