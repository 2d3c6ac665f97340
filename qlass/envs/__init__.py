"""Text environments behind one async ``Env`` protocol, with a pool and a registry.

Importing this package starts no simulator and imports none of their packages; an env's
simulator starts on its first ``reset``.
"""

from qlass.envs.base import Env, EnvPrompt, GoldPathEnv, InvalidActionError, require_action
from qlass.envs.pool import EnvHandle, EnvPool, PoolStats
from qlass.envs.registry import (
    EnvFamily,
    check_params,
    create_env,
    env_names,
    env_prompt,
    expert_actions,
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
    "check_params",
    "create_env",
    "env_names",
    "env_prompt",
    "expert_actions",
    "get_family",
    "gold_actions",
    "list_tasks",
    "require_action",
    "task_max_steps",
]
