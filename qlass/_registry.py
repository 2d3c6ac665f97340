"""The one small helper behind every registry by name: env families, policy backends, value
models and search strategies.

A :class:`Registry` maps names (and aliases) to entries and says, in one wording, which
names exist when an unknown one is asked for. :func:`load_object` imports an entry given as
``"module:attribute"`` only when it is used, so a registry module imports no optional
package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from qlass.errors import MissingDependencyError, UnknownNameError

__all__ = ["Registry", "load_object"]

T = TypeVar("T")


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class Registry(Generic[T]):
    """Entries by name. ``what`` names the kind of thing in errors ("env", "strategy");
    ``fold`` normalises a name before lookup (e.g. ``str.lower``)."""

    what: str
    entries: Mapping[str, T]
    aliases: Mapping[str, str] = field(default_factory=dict)
    fold: Callable[[str], str] = _same

    def names(self) -> tuple[str, ...]:
        """The registered names (not the aliases), in registration order."""
        return tuple(self.entries)

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for.

        Raises:
            UnknownNameError: neither a name nor an alias; the message lists the names.
        """
        key = self.fold(name)
        key = self.aliases.get(key, key)
        if key not in self.entries:
            choices = ", ".join(sorted(self.entries))
            raise UnknownNameError(f"unknown {self.what} {name!r}; choose one of: {choices}")
        return key

    def __getitem__(self, name: str) -> T:
        return self.entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self.fold(name)
        return self.aliases.get(key, key) in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def load_object(target: str, purpose: str | None = None) -> Any:
    """Import ``"package.module:attr.attr"`` and return that attribute.

    Raises:
        MissingDependencyError: the module needs an optional extra that is not installed
            (``purpose`` names what needed it in the message).
    """
    module_name, _, attr_path = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        missing = MissingDependencyError.of_import(exc, purpose or module_name)
        if missing is None:
            raise
        raise missing from exc
    for attr in filter(None, attr_path.split(".")):
        value = getattr(value, attr)
    return value
