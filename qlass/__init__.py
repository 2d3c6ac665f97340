"""qlass: Q-guided stepwise search for language agents.

The public API, for apps that embed qlass. Everything is imported on first use, so
``import qlass`` is cheap and ``import qlass.qnet`` works on a machine that has only the
QNet's dependencies.

    Agent, StepDecision           Q-guided search in your own agent (qlass.agent)
    EnvPool, EpisodeLimits        bounded simulators for Agent.run_many; per-episode limits
    CallbackEnv, StepCallback     an environment made of an async step callback (qlass.envs)
    Env, Policy, ValueModel       the protocols to implement your own parts
    TaskSpec, History, Trajectory ... the plain data every layer exchanges (qlass.types)
    Greedy, QGuided, BestOfN ...  search strategies (qlass.runtime.strategies)
    RunConfig, load_config        typed run configuration (qlass.config)
    Pipeline                      the whole method as resumable stages (qlass.runtime.pipeline)
    QlassError, UserError ...     the exception tree (qlass.errors)
    configure_logging             logs to stderr, secrets redacted (for apps; once per process)

Example:
    ```python
    from qlass import Agent

    async with Agent("openai/gpt-4o", "http://gpu-box:8765", "qlass:2") as agent:
        trajectory = await agent.run(my_env, "my-task")
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qlass import errors as _errors
from qlass._version import __version__

if TYPE_CHECKING:
    from qlass._log import configure_logging
    from qlass.agent import REACT_SYSTEM_PROMPT, Agent, StepDecision, StrategySpec
    from qlass.backends.base import Policy
    from qlass.backends.registry import build_policy, create_policy
    from qlass.config import PolicyConfig, RunConfig, load_config
    from qlass.envs.base import Env, EnvPrompt
    from qlass.envs.callback import CallbackEnv, StepCallback
    from qlass.envs.pool import EnvPool
    from qlass.envs.registry import create_env, env_names, list_tasks
    from qlass.errors import (
        ActionParseError,
        ConfigError,
        DatabaseUnavailableError,
        EnvCrashedError,
        EnvError,
        EnvTimeoutError,
        MissingDataError,
        MissingDependencyError,
        NoExpertPathError,
        PolicyCallError,
        PolicyError,
        PolicyTimeoutError,
        QlassError,
        ReplayMismatchError,
        RuntimeFailure,
        SchemaVersionError,
        StoreError,
        TrainingStopped,
        UnknownNameError,
        UserError,
        ValueModelError,
    )
    from qlass.qnet.base import BaseValueModel, ValueModel, ValueQuery
    from qlass.qnet.registry import create_value_model
    from qlass.runtime.episode import StepwiseStrategy
    from qlass.runtime.limits import EpisodeLimits
    from qlass.runtime.pipeline import Pipeline
    from qlass.runtime.strategies import (
        BeamSearch,
        BestOfN,
        Greedy,
        QGuided,
        Sampled,
        SearchStrategy,
        make_strategy,
    )
    from qlass.types import (
        Candidate,
        ChatMessage,
        History,
        Observation,
        ScoredCandidate,
        Step,
        StepResult,
        StopReason,
        TaskSpec,
        Trajectory,
        Turn,
        Usage,
    )

__all__ = [
    "REACT_SYSTEM_PROMPT",
    "ActionParseError",
    "Agent",
    "BaseValueModel",
    "BeamSearch",
    "BestOfN",
    "CallbackEnv",
    "Candidate",
    "ChatMessage",
    "ConfigError",
    "DatabaseUnavailableError",
    "Env",
    "EnvCrashedError",
    "EnvError",
    "EnvPool",
    "EnvPrompt",
    "EnvTimeoutError",
    "EpisodeLimits",
    "Greedy",
    "History",
    "MissingDataError",
    "MissingDependencyError",
    "NoExpertPathError",
    "Observation",
    "Pipeline",
    "Policy",
    "PolicyCallError",
    "PolicyConfig",
    "PolicyError",
    "PolicyTimeoutError",
    "QGuided",
    "QlassError",
    "ReplayMismatchError",
    "RunConfig",
    "RuntimeFailure",
    "Sampled",
    "SchemaVersionError",
    "ScoredCandidate",
    "SearchStrategy",
    "StageFailedError",
    "Step",
    "StepCallback",
    "StepDecision",
    "StepResult",
    "StepwiseStrategy",
    "StopReason",
    "StoreError",
    "StrategySpec",
    "TaskGenerationError",
    "TaskSpec",
    "TrainingStopped",
    "Trajectory",
    "Turn",
    "UnknownNameError",
    "Usage",
    "UserError",
    "ValueModel",
    "ValueModelError",
    "ValueQuery",
    "__version__",
    "build_policy",
    "configure_logging",
    "create_env",
    "create_policy",
    "create_value_model",
    "env_names",
    "list_tasks",
    "load_config",
    "make_strategy",
]

# Leaves of the error tree that qlass raises and handles itself (an empty action reaching an
# env, a prompt too long for a local model's context): not part of the app-facing API.
_HANDLED_INSIDE = frozenset({"InvalidActionError", "PromptTooLongError"})

_MODULES: dict[str, tuple[str, ...]] = {
    "qlass.agent": ("REACT_SYSTEM_PROMPT", "Agent", "StepDecision", "StrategySpec"),
    "qlass._log": ("configure_logging",),
    "qlass.backends.base": ("Policy",),
    "qlass.backends.registry": ("build_policy", "create_policy"),
    "qlass.config": ("PolicyConfig", "RunConfig", "load_config"),
    "qlass.envs.base": ("Env", "EnvPrompt"),
    "qlass.envs.registry": ("create_env", "env_names", "list_tasks"),
    "qlass.envs.callback": ("CallbackEnv", "StepCallback"),
    "qlass.envs.pool": ("EnvPool",),
    "qlass.errors": tuple(n for n in _errors.__all__ if n not in _HANDLED_INSIDE),
    "qlass.qnet.base": ("BaseValueModel", "ValueModel", "ValueQuery"),
    "qlass.qnet.registry": ("create_value_model",),
    "qlass.runtime.episode": ("StepwiseStrategy",),
    "qlass.runtime.limits": ("EpisodeLimits",),
    "qlass.runtime.pipeline": ("Pipeline",),
    "qlass.runtime.strategies": (
        "BeamSearch",
        "BestOfN",
        "Greedy",
        "QGuided",
        "Sampled",
        "SearchStrategy",
        "make_strategy",
    ),
    "qlass.types": (
        "Candidate",
        "ChatMessage",
        "History",
        "Observation",
        "ScoredCandidate",
        "Step",
        "StepResult",
        "StopReason",
        "TaskSpec",
        "Trajectory",
        "Turn",
        "Usage",
    ),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qlass' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
