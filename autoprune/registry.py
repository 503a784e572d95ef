"""Name -> object registries with did-you-mean errors (models, datasets, methods, backends, ...).

A registered object's name is its registration: `Registry.name_of` answers it, nothing repeats
it. `Registry.build(name, options)` is the one place where user options (from Python, or
KEY=VALUE strings from the command line) are checked against the object's option dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from autoprune.errors import UnknownNameError, UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from user-facing names to objects, filled with the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def name_of(self, obj: object) -> str:
        """The name `obj` was registered under."""
        for name, item in self._items.items():
            if item is obj:
                return name
        raise KeyError(f"{obj!r} is not a registered {self.kind}")

    def options_class(self, name: str) -> type | None:
        """The dataclass `name`'s options are checked against: the object itself when it is a
        dataclass (search methods), else its `Options` dataclass (backends); None: no options."""
        obj = self.get(name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            return obj
        opts = getattr(obj, "Options", None)
        return opts if isinstance(opts, type) and dataclasses.is_dataclass(opts) else None

    def parse_options(self, name: str, options: Mapping[str, Any] | None) -> Any:
        """`options` checked and typed against `name`'s option dataclass, as an instance of it.

        Unknown names and values of the wrong type are one-line UsageErrors naming the option;
        strings are converted to the field's type (bool, int, float, str, or those | None).
        """
        options = dict(options or {})
        cls = self.options_class(name)
        if cls is None:
            if options:
                raise UsageError(f"{self.kind} {name!r} takes no options; got {sorted(options)}")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"{self.kind} {name!r} takes no option {', '.join(map(repr, unknown))}{hint}; "
                f"it takes {', '.join(sorted(fields)) or 'none'}"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _convert(self.kind, name, k, v, hints.get(k)) for k, v in options.items()}
        return cls(**values)

    def build(self, name: str, options: Mapping[str, Any] | None = None) -> Any:
        """An instance of the registered `name` with `options` checked (see parse_options)."""
        parsed = self.parse_options(name, options)
        obj: Any = self.get(name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            return parsed
        return obj() if isinstance(obj, type) else obj

    def unknown_message(self, name: str, extra: list[str] | None = None) -> str:
        candidates = list(self._items) + (extra or [])
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._items))
        return f"unknown {self.kind} {name!r}; {hint + ' ' if hint else ''}known: {known}"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


class RegisteredName:
    """A class attribute that answers the name its class is registered under in a registry.

    `name = RegisteredName(lambda: BACKENDS)` beside `@BACKENDS.register("admm")` makes both
    `Admm.name` and `Admm().name` "admm" without writing the name twice.
    """

    def __init__(self, registry: Callable[[], Registry[Any]]) -> None:
        self._registry = registry

    def __get__(self, obj: object, owner: type) -> str:
        return self._registry().name_of(owner)


_SCALARS: tuple[type, ...] = (bool, int, float, str)


def _convert(kind: str, name: str, key: str, value: Any, hint: Any) -> Any:
    """`value` as the field's declared type; strings from the command line are parsed."""
    args = typing.get_args(hint)
    optional = type(None) in args and (
        typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)
    )
    target = next((a for a in args if a is not type(None)), None) if optional else hint
    if value is None and optional:
        return None
    if target not in _SCALARS or (not isinstance(value, str) and isinstance(value, target)):
        return value  # a structured or already-typed value: the dataclass takes it as given
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    try:
        if target is bool:
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return target(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"{kind} {name!r} option {key}={value!r} is not a {target.__name__}"
        ) from None


__all__ = ["RegisteredName", "Registry"]
