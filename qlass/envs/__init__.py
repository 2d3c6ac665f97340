"""Text environments behind one async ``Env`` protocol, with a pool and a registry.

Importing this package starts no simulator and imports none of their packages; an env's
simulator starts on its first ``reset``.
"""

from qlass.envs.base import Env, EnvPrompt, GoldPathEnv, InvalidActionError, require_action
from qlass.envs.pool import EnvHandle, EnvPool, PoolStats
from qlass.envs.registry import (
    EnvFamily,
    create_env,
    env_names,
    env_prompt,
    get_family,
    gold_actions,
    list_tasks,
    task_max_steps,
)

__all__ = [
    "Env",
    "EnvFamily",
    "EnvHandle",
    "EnvPool",
    "EnvPrompt",
    "GoldPathEnv",
    "InvalidActionError",
    "PoolStats",
    "create_env",
    "env_names",
    "env_prompt",
    "get_family",
    "gold_actions",
    "list_tasks",
    "require_action",
    "task_max_steps",
]
