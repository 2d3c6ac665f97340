"""Config fields set by environment variables (``QLASS_SECTION__FIELD=value``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from qlass.errors import ConfigError

__all__ = ["ENV_NESTED_DELIMITER", "ENV_PREFIX", "EnvOverride", "env_overrides"]

ENV_PREFIX = "QLASS_"
"""Environment variables that set config fields start with this (any case)."""
ENV_NESTED_DELIMITER = "__"
"""Separates a section from its field in a variable name: ``QLASS_EXPLORE__WIDTH``."""


@dataclass(frozen=True, slots=True)
class EnvOverride:
    """A config field set by an environment variable: ``field`` is ``section.name``."""

    variable: str
    field: str
    value: str

    def as_override(self) -> str:
        """The same thing as a ``--set`` item (and parsed the same way)."""
        return f"{self.field}={self.value}"


def _model_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Field names of ``model``, each with its pydantic model type if it is a section."""
    fields: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        kind = info.annotation
        fields[name] = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return fields


def env_overrides(environ: Mapping[str, str], config: type[BaseModel]) -> list[EnvOverride]:
    """The fields of the config model ``config`` that ``environ`` sets, in variable-name order.

    ``QLASS_<SECTION>__<FIELD>`` sets a section's field (``QLASS_EXPLORE__WIDTH=3`` is
    ``--set explore.width=3``); ``QLASS_<FIELD>`` sets a top-level field (``QLASS_SEED=7``).
    Names are case-insensitive and values are read as ``--set`` reads them (YAML: numbers,
    booleans, lists, null), so ``QLASS_X__Y=v`` means exactly ``--set x.y=v``. A ``QLASS_``
    variable without ``__`` that names no field (``QLASS_DB`` in the scale-out guide, the
    test suite's ``QLASS_TEST_*``) is not configuration and is left alone.

    The variables become ``--set`` items instead of going through pydantic-settings' env
    source: that would parse values as JSON rather than as ``--set`` does, and skip a
    misspelt name silently.

    Raises:
        ConfigError: a ``QLASS_..__..`` variable names no section or field, or a
            ``QLASS_<SECTION>`` variable sets a whole section; the message names the
            variable and lists the known names.
    """
    top = _model_fields(config)
    found: list[EnvOverride] = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        parts = variable[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if len(parts) == 1:
            if parts[0] in top and top[parts[0]] is not None:
                raise ConfigError(
                    f"environment variable {variable}: {parts[0]} is a section; set its "
                    f"fields as {variable}{ENV_NESTED_DELIMITER}<FIELD>"
                )
            if parts[0] in top:
                found.append(EnvOverride(variable, parts[0], environ[variable]))
            continue
        if any(not part for part in parts):
            raise ConfigError(
                f"environment variable {variable}: empty name between '{ENV_NESTED_DELIMITER}' "
                f"(write {ENV_PREFIX}SECTION{ENV_NESTED_DELIMITER}FIELD)"
            )
        fields = top
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the config"
            if part not in fields:
                raise ConfigError(
                    f"environment variable {variable}: {where} has no field {part!r} "
                    f"(fields: {', '.join(fields)})"
                )
            section = fields[part]
            if depth < len(parts) - 1:
                if section is None:
                    raise ConfigError(
                        f"environment variable {variable}: {'.'.join(parts[: depth + 1])} "
                        "is a value, not a section"
                    )
                fields = _model_fields(section)
        found.append(EnvOverride(variable, ".".join(parts), environ[variable]))
    return found
