"""Env families by name, imported lazily: create envs, list tasks, get prompts and gold paths.

    create_env("textworld_express")                       -> Env
    list_tasks("scienceworld", "dev", games=["boil"])     -> [TaskSpec, ...] (deterministic)
    env_prompt("webshop")                                 -> EnvPrompt
    await gold_actions(env, task)                         -> ["look around", ...]
    await expert_actions(env, task)                       -> the family's expert path

Names: ``textworld_express`` (alias ``twx``), ``scienceworld`` (``sciworld``), ``webshop``,
``alfworld``. A family module is imported on first use, and its simulator package only
when an env starts, so listing tasks needs no JVM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qlass._registry import Registry, load_object
from qlass.envs.base import Env, EnvPrompt
from qlass.envs.family import EnvFamily, gold_actions
from qlass.errors import UnknownNameError, UserError
from qlass.types import TaskSpec

__all__ = [
    "EnvFamily",
    "check_params",
    "create_env",
    "env_names",
    "env_prompt",
    "expert_actions",
    "get_family",
    "gold_actions",
    "has_own_expert",
    "list_tasks",
    "task_max_steps",
]

_FAMILIES: Registry[str] = Registry(
    "env",
    {
        "textworld_express": "qlass.envs.textworld_express:FAMILY",
        "scienceworld": "qlass.envs.scienceworld:FAMILY",
        "webshop": "qlass.envs.webshop:FAMILY",
        "alfworld": "qlass.envs.alfworld:FAMILY",
    },
    aliases={
        "twx": "textworld_express",
        "textworld-express": "textworld_express",
        "sciworld": "scienceworld",
    },
    fold=lambda name: name.strip().lower(),
)


def env_names() -> tuple[str, ...]:
    """The registered env names."""
    return _FAMILIES.names()


def get_family(name: str) -> EnvFamily:
    """The family registered as ``name`` (or an alias)."""
    family: EnvFamily = load_object(_FAMILIES[name], f"env {name!r}")
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
    return get_family(name).prompt()


def check_params(name: str, params: Any, games: Sequence[str] | None = None) -> None:
    """Check simulator parameters for env ``name`` before any work: TextWorldExpress game
    parameters (names the games take, whole numbers, flags 0/1), ScienceWorld
    simplifications. Raises :class:`~qlass.errors.ConfigError` naming the parameter;
    families without such parameters accept anything here."""
    get_family(name).check_params(params, games)


def task_max_steps(task: TaskSpec) -> int | None:
    """The family's recommended step limit for ``task`` (the paper's, where it set one)."""
    return get_family(task.env).max_steps(task)


def _family_or_none(name: str) -> EnvFamily | None:
    """The registered family ``name``; None for an env outside the registry (an env of your
    own), whose gold paths are the expert."""
    try:
        return get_family(name)
    except UnknownNameError:
        return None


def has_own_expert(name: str) -> bool:
    """Whether env family ``name`` chooses its expert paths itself (``own_expert``), so that
    they are the same on every call; otherwise they are its simulator's gold paths."""
    family = _family_or_none(name)
    return family is not None and family.own_expert


async def expert_actions(env: Env, task: TaskSpec) -> list[str]:
    """The expert action sequence the gold stage replays for ``task``: its family's
    ``expert_actions`` (TextWorldExpress: its own search where the simulator's gold agent is
    random; the simulator's gold path by default); for an env outside the registry, its gold
    path (:func:`gold_actions`).
    """
    family = _family_or_none(task.env)
    if family is None:
        return await gold_actions(env, task)
    return await family.expert_actions(env, task)
