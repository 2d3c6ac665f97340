"""Q-guided search inside your own agent: :class:`Agent`.

An :class:`Agent` puts together a policy (a local model or any LiteLLM model, GPT-4o
included), a value model (a QNet in process, a ``qlass serve-qnet`` server, or your own
:class:`~qlass.qnet.base.ValueModel`) and a search strategy, and offers two calls:

- ``await agent.step(history)``: one step. The policy proposes candidates, the value model
  scores them, the strategy picks one. You execute the action wherever you like.
- ``await agent.run(env, task)``: a whole episode in an environment you own (any object
  with the :class:`~qlass.envs.base.Env` methods, or a plain ``async def step(action)``
  callback), returning a :class:`~qlass.types.Trajectory` with token usage and cost.
- ``await agent.run_many(tasks, envs)``: many episodes at once over a bounded
  :class:`~qlass.envs.pool.EnvPool` (or an env factory): 200 episodes, 4 simulators.

Example:
    ```python
    from qlass import Agent, History

    async with Agent("openai/gpt-4o", "http://gpu-box:8765", "qlass:2") as agent:
        decision = await agent.step(History("Find the coin.", "You are in the kitchen."))
        print(decision.action, [c.value for c in decision.candidates])
    ```

Objects you pass in (a ``Policy``, a ``ValueModel``, an ``Env``) stay yours to close; what
the agent builds from strings it closes in :meth:`Agent.aclose` (or at the end of
``async with``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Self, TypeAlias, cast

import structlog

from qlass._seeding import derive_seed
from qlass.backends.base import Policy
from qlass.config import PolicyConfig, RunConfig
from qlass.envs.base import Env
from qlass.envs.callback import CallbackEnv, StepCallback
from qlass.envs.pool import EnvPool
from qlass.errors import ConfigError, UserError
from qlass.qnet.base import ValueModel
from qlass.runtime.batch import OnError, play_many
from qlass.runtime.context import EnvSession, SearchContext
from qlass.runtime.episode import EpisodeState, StepwiseStrategy, play_episode
from qlass.runtime.limits import EpisodeLimits, EpisodeMeter
from qlass.runtime.resources import (
    ValueModelRequest,
    close_later,
    policy_from_spec,
    run_episode_limits,
    run_policy_config,
    run_system_prompt,
    run_value_model,
    value_model_from_spec,
)
from qlass.runtime.strategies import SearchStrategy, make_strategy
from qlass.types import (
    History,
    Observation,
    ScoredCandidate,
    StepDecision,
    TaskSpec,
    Trajectory,
)

__all__ = [
    "REACT_SYSTEM_PROMPT",
    "Agent",
    "StepDecision",
    "StrategySpec",
]

log = structlog.get_logger(__name__)

REACT_SYSTEM_PROMPT = (
    "You are an agent acting in a text environment. The task and the first observation are "
    "given at the start; after each of your actions you see what happened. Reply with "
    "exactly one action on a line starting with 'Action:', optionally after a short "
    "thought:\nThought: <your reasoning about what to do next>\nAction: <one action>"
)
"""The default system prompt: asks for the ``Thought: ... Action: ...`` format that
:mod:`qlass.parsing` reads. Pass ``system_prompt=None`` for a policy fine-tuned without one."""

StrategySpec: TypeAlias = str | SearchStrategy | StepwiseStrategy
"""A strategy name (``"greedy"``, ``"qlass:2"``, ``"best_of_n:4"``, ``"beam:2"``...) or a
strategy object (:class:`~qlass.runtime.strategies.QGuided`, your own...)."""

_STEP_TASK = TaskSpec("agent", "step", 0, "dev")


class _NoEnvs:
    """The env provider of :meth:`Agent.step`, which only decides and never acts."""

    def session(
        self, task: TaskSpec, actions: Sequence[str] = (), expected: Sequence[str] | None = None
    ) -> AbstractAsyncContextManager[EnvSession]:
        raise UserError(
            "Agent.step decides one step and runs no action; this strategy needs an env "
            "(use Agent.run)"
        )


def _as_history(state: History | Observation) -> History:
    if isinstance(state, History):
        return state
    if isinstance(state, Observation):
        return History(state.instruction, state.text)
    raise TypeError(f"step() takes a History or an Observation, not {type(state).__name__}")


def _as_task(task: TaskSpec | str | None) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    return TaskSpec("custom", task or "task", 0, "dev")


class Agent:
    """A policy guided by a value model under a search strategy, for use in your own code.

    Args:
        policy: a LiteLLM model string (``"openai/gpt-4o"``, ``"hosted_vllm/NAME"`` with
            ``api_base``), a local model directory (run by the transformers backend), a
            :class:`~qlass.config.PolicyConfig` (every backend option: rate limits,
            retries...), or any object implementing :class:`~qlass.backends.base.Policy`.
        value_model: a QNet checkpoint directory, the ``http(s)://`` URL of a
            ``qlass serve-qnet`` server, ``"constant"`` or ``"random"`` (ablations), any
            :class:`~qlass.qnet.base.ValueModel`, a
            :class:`~qlass.runtime.resources.ValueModelRequest` (a registry kind and its
            options, what :meth:`from_config` passes), or ``None`` for strategies that need
            none (``greedy``, ``sampled``).
        strategy: ``"qlass:M"`` (Q-guided, M candidates a step), ``"greedy"``,
            ``"sampled"``, ``"best_of_n:N"``, ``"beam:B"``, or a strategy object.
        system_prompt: the policy's system prompt (default: :data:`REACT_SYSTEM_PROMPT`);
            ``None`` sends none (for a policy fine-tuned without one).
        max_tokens: completion tokens per turn at most.
        temperature: sampling temperature of the candidates (``greedy`` uses 0).
        max_steps: the episode's step limit in :meth:`run`.
        limits: per-episode token, time and cost limits (``trajectory.stop_reason``).
        clock: the clock of the time limit and wall times (tests pass their own).
        max_turns_in_prompt: keep only this many recent turns in the prompt.
        api_base: the OpenAI-compatible base URL for a LiteLLM model string.
        api_key_env: the NAME of the environment variable that holds the API key.
        seed: seeds every sample, so a run can be repeated.
        policy_options: more :class:`~qlass.config.PolicyConfig` fields for a policy
            string (``rpm``, ``retries``, ``timeout_s``, ``device``...).
        value_options: more options for the value model built from a string
            (``device``, ``max_batch`` for a QNet; ``timeout_s``, ``retries`` for a URL).

    Raises:
        ConfigError: the strategy needs a value model and none was given, or an option is
            not valid.
        UnknownNameError: an unknown strategy name.

    Example:
        ```python
        agent = Agent("runs/demo/policy", "runs/demo/qnet", "qlass:2",
                      system_prompt=None, max_turns_in_prompt=3)
        async with agent:
            trajectory = await agent.run(my_env, "find-the-coin")
        print(trajectory.final_score, trajectory.usage)
        ```
    """

    def __init__(
        self,
        policy: str | Path | PolicyConfig | Policy,
        value_model: str | Path | ValueModel | ValueModelRequest | None = None,
        strategy: StrategySpec = "qlass:2",
        *,
        system_prompt: str | None = REACT_SYSTEM_PROMPT,
        max_tokens: int = 128,
        temperature: float = 0.7,
        max_steps: int = 30,
        limits: EpisodeLimits | None = None,
        clock: Callable[[], float] = time.perf_counter,
        max_turns_in_prompt: int | None = None,
        api_base: str | None = None,
        api_key_env: str | None = None,
        seed: int = 0,
        policy_options: Mapping[str, Any] | None = None,
        value_options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_steps < 1 or max_tokens < 1:
            raise ConfigError("max_steps and max_tokens must be at least 1")
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_steps = max_steps
        self.limits = limits or EpisodeLimits()
        self.clock = clock
        self.max_turns_in_prompt = max_turns_in_prompt
        self.seed = seed
        self.strategy = self._strategy(strategy)
        self._policy_spec = policy
        self._policy_config = {
            "api_base": api_base,
            "api_key_env": api_key_env,
            **(policy_options or {}),
        }
        self._value_spec = value_model
        self._value_options = dict(value_options or {})
        if value_model is None and getattr(self.strategy, "needs_value", False):
            raise ConfigError(
                f"strategy {self.strategy.name!r} scores candidates: give a value_model "
                "(a QNet directory, a qlass serve-qnet URL or a ValueModel)"
            )
        self._policy: Policy | None = policy if isinstance(policy, Policy) else None
        self._value: ValueModel | None = (
            value_model if isinstance(value_model, ValueModel) else None
        )
        self._owned = AsyncExitStack()
        self._opened = False
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: RunConfig, *, strategy: StrategySpec | None = None) -> Agent:
        """An agent with a run configuration's policy, value model, prompt and limits.

        The policy is ``config.policy`` (the run's BC policy when its ``model`` is unset),
        the value model ``config.search.value_model`` (with ``value_model_path``, else the
        run's QNet), the system prompt the env family's (per ``policy.prompt``). The
        strategy defaults to the first ``qlass:*`` of ``search.strategies`` (else the last).

        Example:
            ```python
            config = load_config(Path("examples/configs/api-gpt4o.toml"))
            async with Agent.from_config(config) as agent: ...
            ```
        """
        search = config.search
        if strategy is None:
            names = search.strategies
            strategy = next((s for s in names if s.startswith("qlass")), names[-1])
        return cls(
            run_policy_config(config),
            run_value_model(config),
            strategy,
            system_prompt=run_system_prompt(config),
            max_tokens=config.policy.max_tokens,
            temperature=search.temperature,
            max_steps=config.env.max_steps or 30,
            limits=run_episode_limits(config),
            max_turns_in_prompt=config.policy.max_turns_in_prompt,
            seed=config.seed,
        )

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def open(self) -> Self:
        """Build the policy and value model named by strings (in a worker thread: loading
        a model reads files). Called by ``async with`` and on first use."""
        async with self._open_lock:
            if not self._opened:
                try:
                    await self._build()
                except BaseException:
                    await self._close_owned()
                    raise
                self._opened = True
        return self

    async def _build(self) -> None:
        policy_spec, value_spec = self._policy_spec, self._value_spec
        if self._policy is None and not isinstance(policy_spec, Policy):
            policy = await asyncio.to_thread(policy_from_spec, policy_spec, self._policy_config)
            close_later(self._owned, policy.aclose)
            self._policy = policy
        if (
            self._value is None
            and value_spec is not None
            and not isinstance(value_spec, ValueModel)
        ):
            value = await asyncio.to_thread(value_model_from_spec, value_spec, self._value_options)
            close_later(self._owned, value.aclose)
            self._value = value

    async def aclose(self) -> None:
        """Close the policy and value model the agent built (not the ones passed in)."""
        async with self._open_lock:
            await self._close_owned()
            self._opened = False

    async def _close_owned(self) -> None:
        await self._owned.aclose()
        self._policy = self._policy_spec if isinstance(self._policy_spec, Policy) else None
        self._value = self._value_spec if isinstance(self._value_spec, ValueModel) else None

    @property
    def policy(self) -> Policy:
        """The policy (built on first use when given as a string)."""
        if self._policy is None:
            raise RuntimeError("the agent is not open: use 'async with agent' or await open()")
        return self._policy

    @property
    def value_model(self) -> ValueModel | None:
        """The value model, or ``None`` when the agent has none."""
        return self._value

    # -- search ------------------------------------------------------------------------

    def _strategy(self, spec: StrategySpec) -> SearchStrategy | StepwiseStrategy:
        if isinstance(spec, str):
            return make_strategy(spec, temperature=self.temperature)
        if not hasattr(spec, "run") and not hasattr(spec, "decide"):
            raise ConfigError(f"{spec!r} is not a strategy (it has neither run() nor decide())")
        return spec

    def _context(self, envs: Any, max_steps: int | None = None) -> SearchContext:
        return SearchContext(
            policy=self.policy,
            envs=envs,
            value_model=self._value,
            system_prompt=self.system_prompt,
            max_steps=max_steps or self.max_steps,
            max_tokens=self.max_tokens,
            max_turns_in_prompt=self.max_turns_in_prompt,
            temperature=self.temperature,
            seed=self.seed,
            meter=EpisodeMeter(self.limits, self.clock),
        )

    def _checked(self, spec: StrategySpec | None) -> SearchStrategy | StepwiseStrategy:
        strategy = self.strategy if spec is None else self._strategy(spec)
        if getattr(strategy, "needs_value", False) and self._value is None:
            raise ConfigError(f"strategy {strategy.name!r} needs a value model; the agent has none")
        return strategy

    async def step(
        self,
        history: History | Observation,
        *,
        strategy: StrategySpec | None = None,
        seed: int | None = None,
    ) -> StepDecision:
        """Choose the next action after ``history``; nothing is executed.

        Args:
            history: the episode so far (a :class:`~qlass.types.History`), or the
                :class:`~qlass.types.Observation` your env's ``reset`` returned.
            strategy: override the agent's strategy for this call (a step-wise one:
                ``greedy``, ``sampled`` or ``qlass:M``).
            seed: the sampling seed (default: derived from the agent's seed and the
                history, so the same history gives the same candidates).

        Raises:
            UserError: the strategy plays whole episodes (``best_of_n``, ``beam``): use
                :meth:`run`.
            PolicyError: the policy failed after its retries.
            ValueModelError: the value model failed.
        """
        await self.open()
        chosen = self._checked(strategy)
        if not hasattr(chosen, "decide"):
            raise UserError(
                f"strategy {chosen.name!r} compares whole episodes and cannot choose one step; "
                "use Agent.run, or a step-wise strategy (greedy, sampled, qlass:M)"
            )
        stepwise = cast(StepwiseStrategy, chosen)
        state = EpisodeState(task=_STEP_TASK, history=_as_history(history))
        ctx = self._context(_NoEnvs())
        if seed is None:
            h = state.history
            turns = [(t.text, t.action, t.observation) for t in h.turns]
            seed = derive_seed(self.seed, "step", h.instruction, h.initial_observation, turns)
        decision = await stepwise.decide(ctx, state, seed)
        considered = decision.considered or (ScoredCandidate(decision.chosen),)
        return StepDecision(
            action=decision.chosen.action,
            text=decision.chosen.text,
            value=decision.value,
            candidates=considered,
            usage=ctx.tally.usage + ctx.tally.cached_usage,
            strategy=stepwise.name,
        )

    async def run(
        self,
        env: Env | StepCallback | EnvPool,
        task: TaskSpec | str | None = None,
        *,
        instruction: str | None = None,
        observation: str = "",
        strategy: StrategySpec | None = None,
        max_steps: int | None = None,
        seed: int | None = None,
    ) -> Trajectory:
        """Play one episode of ``task`` in ``env`` and return its trajectory.

        Args:
            env: your environment: any object with the :class:`~qlass.envs.base.Env`
                methods (``reset(task)``, ``step(action)``, ``close()``), a
                :class:`CallbackEnv`, or a bare ``async def step(action)`` callback
                (then ``instruction`` is required), or an :class:`EnvPool`. The agent
                does not close it.
            task: the :class:`~qlass.types.TaskSpec` passed to ``env.reset``; a string
                names a task of your own env.
            instruction: the task text, for a bare callback.
            observation: the first observation, for a bare callback.
            strategy: override the agent's strategy for this episode.
            max_steps: override the agent's step limit.
            seed: the episode's seed (default: derived from the agent's seed, the
                strategy and the task).

        Returns:
            The trajectory: every step with the candidates considered and their scores,
            the final score, success, ``stop_reason`` (done, step_limit, token_limit,
            time_limit, cost_limit) and ``usage`` (prompt and completion tokens, cost in
            USD where the provider has a price). ``info["tally"]`` holds the episode's
            full accounting (policy calls, value queries, env steps, time per part).

        Raises:
            UserError: a bare callback without ``instruction``; a strategy that must
                replay episodes with a callback env that cannot reset.
            PolicyError, ValueModelError, EnvError: a part failed while running.
        """
        await self.open()
        if not isinstance(env, Env | EnvPool):
            if not callable(env):
                raise TypeError(f"env must be an Env, EnvPool or async callback, not {env!r}")
            if instruction is None:
                raise UserError("a bare step callback needs instruction=... (the task text)")
            env = CallbackEnv(env, instruction=instruction, observation=observation)
        chosen = self._checked(strategy)
        spec = _as_task(task)
        pool = env if isinstance(env, EnvPool) else EnvPool.around(env)
        ctx = self._context(pool, max_steps)
        seed = derive_seed(self.seed, "run", chosen.name, spec.key) if seed is None else seed
        trajectory = await play_episode(ctx, spec, chosen, seed, chosen.name)
        log.info(
            "agent.episode",
            task=spec.key,
            strategy=chosen.name,
            score=trajectory.final_score,
            steps=len(trajectory.steps),
            completion_tokens=trajectory.usage.completion_tokens,
            cost_usd=round(trajectory.usage.cost_usd, 6),
        )
        return replace(trajectory, info={**trajectory.info, "tally": ctx.tally.as_dict()})

    async def run_many(
        self,
        tasks: Sequence[TaskSpec | str],
        envs: EnvPool | Callable[[], Env],
        *,
        pool_size: int = 4,
        concurrency: int | None = None,
        strategy: StrategySpec | None = None,
        max_steps: int | None = None,
        on_error: OnError = "raise",
        on_episode: Callable[[Trajectory], Awaitable[None]] | None = None,
    ) -> list[Trajectory]:
        """Play each of ``tasks`` once, many at a time, over a bounded pool of envs.

        ``envs`` is an :class:`~qlass.envs.pool.EnvPool` (yours to close, e.g.
        ``EnvPool.for_env("textworld_express", size=4)``) or a function making a new env,
        of which the agent keeps at most ``pool_size`` alive and closes them at the end.
        ``concurrency``: episodes under way at once (default: the pool's size; more share
        the envs by replaying actions). ``on_error="record"`` returns a failed episode with
        ``stop_reason="error"`` and goes on (default ``"raise"``). ``on_episode`` is
        awaited as each episode ends. Returns the trajectories in the order of ``tasks``;
        each episode has the seed :meth:`run` gives it, so it plays the same as there.
        """
        await self.open()
        chosen = self._checked(strategy)
        specs = [_as_task(task) for task in tasks]
        async with AsyncExitStack() as stack:
            if isinstance(envs, EnvPool):
                pool = envs
            elif callable(envs):
                pool = EnvPool(envs, size=pool_size, max_steps=max_steps or self.max_steps)
                stack.push_async_callback(pool.aclose)
            else:
                raise TypeError(f"envs must be an EnvPool or an env factory, not {envs!r}")
            ctx = self._context(pool, max_steps)
            return await play_many(
                ctx,
                specs,
                chosen,
                chosen.name,
                seed_of=lambda task: derive_seed(self.seed, "run", chosen.name, task.key),
                concurrency=concurrency or pool.size,
                on_error=on_error,
                on_episode=on_episode,
            )
