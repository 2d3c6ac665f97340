"""Env families by name, imported lazily: create envs, list tasks, get prompts and gold paths.

    create_env("textworld_express")                       -> Env
    list_tasks("scienceworld", "dev", games=["boil"])     -> [TaskSpec, ...] (deterministic)
    env_prompt("webshop")                                 -> EnvPrompt
    await gold_actions(env, task)                         -> ["look around", ...]

Names: ``textworld_express`` (alias ``twx``), ``scienceworld`` (``sciworld``), ``webshop``,
``alfworld``. A family module is imported on first use, and its simulator package only
when an env starts, so listing tasks needs no JVM.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from qlass.envs.base import Env, EnvPrompt, GoldPathEnv
from qlass.errors import UnknownNameError, UserError
from qlass.types import TaskSpec

__all__ = [
    "EnvFamily",
    "create_env",
    "env_names",
    "env_prompt",
    "get_family",
    "gold_actions",
    "list_tasks",
    "task_max_steps",
]

_MODULES: Mapping[str, str] = {
    "textworld_express": "qlass.envs.textworld_express",
    "scienceworld": "qlass.envs.scienceworld",
    "webshop": "qlass.envs.webshop",
    "alfworld": "qlass.envs.alfworld",
}
_ALIASES: Mapping[str, str] = {
    "twx": "textworld_express",
    "textworld-express": "textworld_express",
    "sciworld": "scienceworld",
}


class EnvFamily(Protocol):
    """What a family module exposes as ``FAMILY``."""

    name: str
    description: str
    extra: str

    def games(self) -> tuple[str, ...]:
        """Games / task types of the family (what ``games=`` selects)."""
        ...

    def create(self, **options: Any) -> Env:
        """A new, not yet started env instance."""
        ...

    def split_sizes(self, **options: Any) -> dict[str, int]:
        """Number of tasks per split (for listings)."""
        ...

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: Any = None,
        limit: int | None = None,
        **options: Any,
    ) -> list[TaskSpec]:
        """Tasks of a split in a deterministic order."""
        ...

    def prompt(self) -> EnvPrompt:
        """Instruction prompt and in-context example."""
        ...


def env_names() -> tuple[str, ...]:
    """The registered env names."""
    return tuple(_MODULES)


def _canonical(name: str) -> str:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _MODULES:
        raise UnknownNameError(f"unknown env {name!r}; choose one of: {', '.join(_MODULES)}")
    return key


def get_family(name: str) -> EnvFamily:
    """The family registered as ``name`` (or an alias)."""
    family: EnvFamily = importlib.import_module(_MODULES[_canonical(name)]).FAMILY
    return family


def create_env(name: str, **options: Any) -> Env:
    """A new env instance of ``name``; options go to the adapter (e.g. ``step_timeout_s``)."""
    return get_family(name).create(**options)


def list_tasks(
    name: str,
    split: str,
    *,
    games: Sequence[str] | None = None,
    params: Any = None,
    limit: int | None = None,
    **options: Any,
) -> list[TaskSpec]:
    """Tasks of ``split`` for env ``name``, in a deterministic order (see each family)."""
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    return get_family(name).list_tasks(split, games=games, params=params, limit=limit, **options)


def env_prompt(name: str) -> EnvPrompt:
    """The instruction prompt (with one in-context example) of env family ``name``."""
    from qlass.envs.prompts import prompt_for

    return prompt_for(_canonical(name))


def task_max_steps(task: TaskSpec) -> int | None:
    """The family's recommended step limit for ``task`` (the paper's, where it set one)."""
    limit = getattr(get_family(task.env), "max_steps", None)
    return limit(task) if limit is not None else None


async def gold_actions(env: Env, task: TaskSpec) -> list[str]:
    """The simulator's gold action sequence for ``task``; ``env`` is left at its reset."""
    if not isinstance(env, GoldPathEnv):
        raise UserError(f"env {task.env!r} has no gold paths (its simulator provides none)")
    return await env.gold_actions(task)
