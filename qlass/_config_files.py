"""Reading config files and ``section.field=value`` overrides into a raw mapping
(validation into :class:`qlass.config.RunConfig` happens in :mod:`qlass.config`)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qlass.errors import ConfigError

__all__ = ["apply_overrides", "format_validation_error", "parse_value", "read_config_file"]


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a TOML or YAML config file holds (refused: unreadable, malformed, empty)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/mapping at the top level")
    if not data:
        # Probably a mistake (a file saved before it was written): running on would start
        # the paper's full settings, thousands of tasks.
        raise ConfigError(
            f"config file {path} holds no settings: an empty config runs the paper's full "
            "settings (every task of every game); write the settings you want into it, or "
            "leave out --config to run the defaults on purpose"
        )
    return data


def parse_value(raw: str) -> Any:
    """Read a CLI override value as YAML (numbers, booleans, lists, null), else as text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides to a raw config mapping (returns a copy)."""
    merged: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.field=value")
        *parents, leaf = key.strip().split(".")
        node = merged
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = parse_value(raw)
    return merged


def format_validation_error(
    exc: ValidationError, source: str, from_env: Mapping[str, str] | None = None
) -> str:
    """One line per invalid field, naming the ``QLASS_*`` variable a value came from."""
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top>"
        variable = next(
            (v for f, v in (from_env or {}).items() if where == f or where.startswith(f + ".")),
            None,
        )
        origin = f" (from {variable})" if variable else ""
        lines.append(f"  {where}: {err['msg']}{origin}")
    return "\n".join(lines)
