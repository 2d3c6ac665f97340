"""What an :class:`~qlass.envs.pool.EnvPool` keeps per env (where it stands, who holds it)
and the :class:`EnvHandle` it lends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qlass.envs.base import Env, require_action
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["EnvHandle"]


@dataclass(frozen=True, slots=True)
class _Position:
    """Where an env stands: a task, the actions executed since reset, and what it showed."""

    task: TaskSpec
    actions: tuple[str, ...]
    initial: Observation
    last: StepResult | None = None

    def advance(self, action: str, result: StepResult) -> _Position:
        return _Position(self.task, (*self.actions, action), self.initial, result)

    @property
    def observation(self) -> str:
        return self.last.observation if self.last is not None else self.initial.text


@dataclass(eq=False)
class _Slot:
    env: Env | None = None
    position: _Position | None = None
    busy: bool = False
    broken: bool = False
    idle_since: float = 0.0
    finished: bool = False  # the caller said nobody continues from this position
    owner: asyncio.Task[Any] | None = None  # the task that gave it back
    branch: object | None = None  # the EnvBranch it is reserved for (compared by identity)


class EnvHandle:
    """An env lent by :meth:`EnvPool.at`. Step it through this handle so that the pool
    knows the path it stands at when it is given back."""

    def __init__(self, slot: _Slot, step: Callable[[_Slot, str], Awaitable[StepResult]]) -> None:
        self._slot = slot
        self._step = step

    @property
    def _position(self) -> _Position:
        assert self._slot.position is not None
        return self._slot.position

    @property
    def task(self) -> TaskSpec:
        return self._position.task

    @property
    def initial(self) -> Observation:
        """The observation after reset (instruction, first view)."""
        return self._position.initial

    @property
    def actions(self) -> tuple[str, ...]:
        """Actions executed since reset: the path of the node the env stands at."""
        return self._position.actions

    @property
    def last(self) -> StepResult | None:
        """The result of the latest step (None at the reset state)."""
        return self._position.last

    @property
    def observation(self) -> str:
        """The current observation text."""
        return self._position.observation

    @property
    def done(self) -> bool:
        last = self._position.last
        return last is not None and last.done

    @property
    def env(self) -> Env:
        """The underlying env, for inspection only: stepping it directly bypasses the pool's
        bookkeeping."""
        assert self._slot.env is not None
        return self._slot.env

    async def step(self, action: str) -> StepResult:
        """Execute ``action`` (a new node); errors leave the env to be replaced."""
        return await self._step(self._slot, require_action(action))

    def finish(self) -> None:
        """Say that nobody will continue from where this env stands (an episode cut at a
        step limit, an abandoned branch), so the pool may reuse it at once."""
        self._slot.finished = True
