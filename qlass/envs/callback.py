"""An environment made of an ``async def step(action)`` callback: :class:`CallbackEnv`.

The smallest way to let :meth:`qlass.agent.Agent.run` act in your app: no class, just the
function that executes an action (``agent.run(step, instruction=...)`` wraps it for you).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from qlass.errors import UserError
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["CallbackEnv", "StepCallback"]

StepCallback: TypeAlias = Callable[[str], Awaitable[str | StepResult]]
"""``async def step(action) -> observation``: the smallest environment. Return a
:class:`~qlass.types.StepResult` to report reward, score and the end of the episode."""


class CallbackEnv:
    """An :class:`~qlass.envs.base.Env` made of an ``async def step(action)`` callback.

    Args:
        step: called with each action; returns the observation text (the episode then
            never ends by itself: the agent's step limit ends it) or a
            :class:`~qlass.types.StepResult`.
        instruction: the task given to the agent.
        observation: what the agent sees before its first action.
        reset: optional ``async def reset() -> str | Observation`` that puts your world
            back to its start. Strategies that compare whole episodes (``best_of_n``,
            ``beam``) replay from the start and need it; ``greedy`` and ``qlass`` do not.

    Example:
        ```python
        async def step(action: str) -> str:
            return await my_app.execute(action)

        trajectory = await agent.run(CallbackEnv(step, instruction="Book a table for 2."))
        ```
    """

    def __init__(
        self,
        step: StepCallback,
        *,
        instruction: str,
        observation: str = "",
        reset: Callable[[], Awaitable[str | Observation]] | None = None,
    ) -> None:
        self._step = step
        self._reset = reset
        self.instruction = instruction
        self.observation = observation
        self._score = 0.0
        self._resets = 0

    async def reset(self, task: TaskSpec) -> Observation:
        """Start the episode (calls the ``reset`` callback from the second time on)."""
        self._resets += 1
        self._score = 0.0
        if self._resets > 1:
            if self._reset is None:
                raise UserError(
                    "this strategy replays the episode from its start, but the CallbackEnv "
                    "has no reset callback: pass reset=..., or use 'greedy' or 'qlass:M'"
                )
            start = await self._reset()
            if isinstance(start, Observation):
                return start
            self.observation = start
        return Observation(self.observation, self.instruction)

    async def step(self, action: str) -> StepResult:
        """Run ``action`` through the callback."""
        result = await self._step(action)
        if isinstance(result, StepResult):
            self._score = result.score
            return result
        return StepResult(str(result), 0.0, False, self._score)

    async def close(self) -> None:
        """Nothing to release: the callback's owner closes its world."""
