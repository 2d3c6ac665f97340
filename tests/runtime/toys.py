"""Deterministic doubles for runtime unit tests: a corridor env and a value function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qlass.qnet.base import ValueQuery
from qlass.types import Observation, StepResult, TaskSpec


class Corridor:
    """Walk from 0 to ``length`` with 'move right'/'move left'; reaching the end scores 1.

    Every step is counted in ``steps``; ``log`` keeps (task key, action) pairs.
    """

    def __init__(self, length: int = 3) -> None:
        self.length = length
        self.position = 0
        self.steps = 0
        self.resets = 0
        self.log: list[tuple[str, str]] = []
        self.closed = False
        self._task: TaskSpec | None = None

    async def reset(self, task: TaskSpec) -> Observation:
        self._task = task
        self.position = 0
        self.resets += 1
        return Observation(f"You are at 0 of {self.length}.", f"Reach {self.length}.")

    async def step(self, action: str) -> StepResult:
        assert self._task is not None
        assert action.strip(), "an empty action reached the env"
        self.steps += 1
        self.log.append((self._task.key, action))
        if action == "move right":
            self.position += 1
        elif action == "move left":
            self.position = max(0, self.position - 1)
        done = self.position >= self.length
        return StepResult(
            observation=f"You are at {self.position} of {self.length}.",
            reward=1.0 if done else 0.0,
            done=done,
            score=1.0 if done else self.position / (2 * self.length),
            success=done,
        )

    async def close(self) -> None:
        self.closed = True


class FunctionValueModel:
    """Scores a candidate with ``fn(candidate_text)``; records every query."""

    def __init__(self, fn: Callable[[str], float]) -> None:
        self._fn = fn
        self.queries: list[ValueQuery] = []

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        self.queries.extend(queries)
        return [self._fn(q.candidate_text) for q in queries]

    async def aclose(self) -> None:
        return None


TASK = TaskSpec("corridor", "walk", 0, "dev")
