"""From what was asked for to live parts: the one resolver of policies, value models,
prompts and env pools.

Two kinds of request reach it:

- a run configuration (:class:`~qlass.config.RunConfig`): the pipeline's stages, and
  :meth:`qlass.agent.Agent.from_config`, read the policy, value model and prompt from it
  through :func:`run_policy_config`, :func:`run_value_model` and :func:`run_system_prompt`;
- spec strings an app passes to :class:`~qlass.agent.Agent` (``"openai/gpt-4o"``, a model
  folder, a ``qlass serve-qnet`` URL, ``"constant"``): :func:`policy_from_spec` and
  :func:`value_model_from_spec`.

:class:`RunResources` builds a run's parts on first use (the policy once per model folder,
the value model and the env pool once) and closes them, last opened first, through one
:class:`contextlib.AsyncExitStack`. Building reads model files and imports packages, so it
happens in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from qlass.backends.base import CallCache, Policy
from qlass.backends.registry import build_policy
from qlass.config import PolicyConfig, RunConfig
from qlass.envs.pool import EnvPool
from qlass.envs.registry import env_prompt, task_max_steps
from qlass.errors import ConfigError, MissingDataError
from qlass.qnet.base import ValueModel
from qlass.qnet.registry import create_value_model
from qlass.runtime.checks import env_options
from qlass.runtime.context import EnvProvider, SearchContext
from qlass.runtime.limits import BudgetedPolicy, EpisodeLimits, EpisodeMeter, RunBudget
from qlass.types import TaskSpec

__all__ = [
    "SPEC_VALUE_KINDS",
    "RunResources",
    "ValueModelRequest",
    "close_later",
    "open_value_model",
    "policy_from_spec",
    "run_episode_limits",
    "run_max_steps",
    "run_policy_config",
    "run_system_prompt",
    "run_value_model",
    "value_model_from_spec",
]

log = structlog.get_logger(__name__)

SPEC_VALUE_KINDS = ("constant", "random")
"""Value-model kinds an :class:`~qlass.agent.Agent` takes by name (the ablations)."""


def close_later(stack: AsyncExitStack, closer: Callable[[], Awaitable[None]]) -> None:
    """Have ``stack`` await ``closer()`` when it closes; a failure to close is logged, so
    that it never hides the error that made the stack close."""

    async def close() -> None:
        try:
            await closer()
        except Exception as error:
            log.warning("close_failed", error=repr(error))

    stack.push_async_callback(close)


@dataclass(frozen=True, slots=True)
class ValueModelRequest:
    """A value model to build: its registry kind and constructor options."""

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)


# -- from a run configuration ----------------------------------------------------------


def run_policy_config(config: RunConfig, model_dir: Path | None = None) -> PolicyConfig:
    """The run's policy: the local model in ``model_dir``, else ``policy.model``, else the
    run's BC policy (``hf`` backend only)."""
    policy = config.policy
    if model_dir is not None:
        return policy.model_copy(update={"backend": "hf", "model": str(model_dir)})
    if policy.model is not None:
        return policy
    if policy.backend != "hf":
        raise ConfigError(f"policy.model must be set for backend {policy.backend!r}")
    return policy.model_copy(update={"model": str(config.policy_dir)})


def _qnet_options(config: RunConfig) -> dict[str, Any]:
    path = config.search.value_model_path
    return {
        "directory": Path(path) if path else config.qnet_dir,
        "max_batch": config.qnet.max_batch,
    }


def _server_options(config: RunConfig) -> dict[str, Any]:
    if not config.search.value_model_path:
        raise ConfigError("search.value_model_path must be the scorer URL for qnet-server")
    return {"url": config.search.value_model_path}


# How a run config spells each kind's options; a kind missing here takes none.
_RUN_VALUE_OPTIONS: Mapping[str, Callable[[RunConfig], dict[str, Any]]] = {
    "qnet": _qnet_options,
    "qnet-server": _server_options,
}


def run_value_model(config: RunConfig) -> ValueModelRequest:
    """The value model of ``search.value_model`` with the options the config gives it."""
    kind = config.search.value_model
    options = _RUN_VALUE_OPTIONS.get(kind, lambda _config: {})(config)
    return ValueModelRequest(kind, options)


def run_system_prompt(config: RunConfig) -> str | None:
    """The env family's prompt as ``policy.prompt`` asks (``none``: no system prompt)."""
    mode = config.policy.prompt
    if mode == "none":
        return None
    return env_prompt(config.env.name).render(with_example=mode == "full")


def run_episode_limits(config: RunConfig) -> EpisodeLimits:
    """The per-episode limits of the ``eval`` section."""
    section = config.eval
    return EpisodeLimits(
        token_limit=section.token_limit,
        completion_token_limit=section.completion_token_limit,
        time_limit_s=section.time_limit_s,
        cost_limit_usd=section.cost_limit_usd,
    )


def run_max_steps(config: RunConfig, task: TaskSpec) -> int:
    """``env.max_steps``, else the family's limit for ``task``, else 30."""
    return config.env.max_steps or task_max_steps(task) or 30


# -- from an app's spec strings ---------------------------------------------------------


def policy_from_spec(spec: str | Path | PolicyConfig, options: Mapping[str, Any]) -> Policy:
    """Build the policy ``spec`` names: a :class:`PolicyConfig`, a local model folder (the
    ``hf`` backend) or a LiteLLM model string; ``options`` are more PolicyConfig fields.
    Blocking: call it in a worker thread."""
    if isinstance(spec, PolicyConfig):
        return build_policy(spec)
    if not isinstance(spec, str | Path):
        raise TypeError(f"policy must be a string, a path, a PolicyConfig or a Policy: {spec!r}")
    fields = {k: v for k, v in options.items() if v is not None}
    path = Path(spec).expanduser()
    local = isinstance(spec, Path) or path.is_dir()
    if local and not path.is_dir():
        raise ConfigError(f"policy: {path} is not a model directory")
    if local:
        fields = {k: v for k, v in fields.items() if k not in ("api_base", "api_key_env")}
    try:
        config = PolicyConfig(
            backend="hf" if local else "litellm", model=str(path) if local else str(spec), **fields
        )
    except ValidationError as exc:
        names = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise ConfigError(f"policy_options: invalid {names}: {exc}") from exc
    try:
        return build_policy(config)
    except ConfigError as exc:
        if config.backend != "litellm":
            raise
        raise ConfigError(f"{exc} (and {spec!r} is not a local model directory)") from exc


def value_model_from_spec(
    spec: str | Path | ValueModelRequest, options: Mapping[str, Any]
) -> ValueModel:
    """Build the value model ``spec`` names: an ``http(s)://`` scorer URL, an ablation kind,
    a QNet checkpoint folder or a request; ``options`` are more constructor options.
    Blocking: call it in a worker thread."""
    if isinstance(spec, ValueModelRequest):
        return open_value_model(ValueModelRequest(spec.kind, {**spec.options, **options}))
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return open_value_model(ValueModelRequest("qnet-server", {"url": text, **options}))
    if text in SPEC_VALUE_KINDS:
        return open_value_model(ValueModelRequest(text, options))
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"value_model {text!r} is none of: a QNet checkpoint directory, an http(s) "
            f"URL of qlass serve-qnet, {' or '.join(SPEC_VALUE_KINDS)}"
        )
    return open_value_model(ValueModelRequest("qnet", {"directory": path, **options}))


def open_value_model(request: ValueModelRequest) -> ValueModel:
    """Build ``request``; a QNet folder that does not exist is missing data. Blocking."""
    directory = request.options.get("directory")
    if directory is not None and not Path(directory).exists():
        raise MissingDataError(f"no QNet at {directory}: run the train_qnet stage first")
    return create_value_model(request.kind, **request.options)


# -- a run's parts, built once ----------------------------------------------------------


class RunResources:
    """The policy, value model and env pool of one run, built on first use and closed by
    :meth:`aclose` (or ``async with``).

    ``policy(model_dir)`` is built once per model folder (self-training evaluates a round's
    policy and then collects with it); ``cache`` (the store's call cache) answers seeded
    policy calls made before. ``stack``: an outer exit stack to close into (the pipeline's,
    which also holds the store). ``budget``: every policy's fresh calls are charged to it.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        cache: CallCache | None = None,
        stack: AsyncExitStack | None = None,
        budget: RunBudget | None = None,
    ) -> None:
        self.config = config
        self.budget = budget
        self._cache = cache
        self._stack = stack or AsyncExitStack()
        self._policies: dict[str, Policy] = {}
        self._value: ValueModel | None = None
        self._pool: EnvPool | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> RunResources:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close what was built, last first."""
        await self._stack.aclose()

    async def policy(self, model_dir: Path | None = None) -> Policy:
        """The run's policy (see :func:`run_policy_config`), or the local model in
        ``model_dir``, wrapped with limits, retries and the call cache."""
        config = run_policy_config(self.config, model_dir)
        key = config.model_dump_json()  # the BC policy asked for by folder or by default
        async with self._lock:
            if key not in self._policies:
                bc_dir = self.config.policy_dir
                uses_bc = model_dir is None and self.config.policy.model is None
                if uses_bc and not await asyncio.to_thread(bc_dir.exists):
                    raise MissingDataError(
                        f"no policy at {bc_dir}: run the bc stage first (qlass bc) or set "
                        "policy.model"
                    )
                policy = await asyncio.to_thread(build_policy, config, cache=self._cache)
                close_later(self._stack, policy.aclose)
                if self.budget is not None:  # outside the cache: cached answers are free
                    policy = BudgetedPolicy(policy, self.budget)
                self._policies[key] = policy
            return self._policies[key]

    def forget_policy(self, model_dir: Path | None = None) -> None:
        """Build the policy of ``model_dir`` (default: the run's) again on next use: its
        folder was rewritten. The old one is closed with the rest."""
        self._policies.pop(run_policy_config(self.config, model_dir).model_dump_json(), None)

    async def value_model(self) -> ValueModel:
        """The configured value model (see :func:`run_value_model`), built once."""
        async with self._lock:
            if self._value is None:
                request = run_value_model(self.config)
                self._value = await asyncio.to_thread(open_value_model, request)
                close_later(self._stack, self._value.aclose)
            return self._value

    async def env_pool(self) -> EnvPool:
        """The run's env pool (one for every stage)."""
        if self._pool is None:
            env = self.config.env
            creating, _ = env_options(env)
            self._pool = EnvPool.for_env(
                env.name,
                size=env.pool_size,
                step_timeout_s=env.step_timeout_s,
                max_steps=self.max_steps,
                **creating,
            )
            close_later(self._stack, self._pool.aclose)
        return self._pool

    def max_steps(self, task: TaskSpec) -> int:
        """The step limit of ``task`` in this run (see :func:`run_max_steps`)."""
        return run_max_steps(self.config, task)

    def system_prompt(self) -> str | None:
        """The policy's system prompt in this run (see :func:`run_system_prompt`)."""
        return run_system_prompt(self.config)

    def search_context(
        self,
        policy: Policy,
        envs: EnvProvider,
        value: ValueModel | None,
        *,
        episode_limits: bool = False,
    ) -> SearchContext:
        """What a strategy or explorer works with, with this run's prompt and limits;
        ``episode_limits``: with the ``eval`` section's per-episode limits (evaluation and
        self-training episodes; exploration trees have none)."""
        config = self.config
        limits = run_episode_limits(config) if episode_limits else EpisodeLimits()
        return SearchContext(
            policy=policy,
            envs=envs,
            value_model=value,
            system_prompt=self.system_prompt(),
            max_tokens=config.policy.max_tokens,
            max_turns_in_prompt=config.policy.max_turns_in_prompt,
            temperature=config.search.temperature,
            seed=config.seed,
            oracle_terminal_reward=config.search.oracle_terminal_reward,
            meter=EpisodeMeter(limits),
        )
