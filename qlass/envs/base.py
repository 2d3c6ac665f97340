"""The ``Env`` protocol: an async text environment that plays one task at a time.

Implementations wrap a simulator (TextWorldExpress, ScienceWorld, a WebShop server,
ALFWorld). Blocking simulators run their calls in worker threads, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qlass.errors import InvalidActionError
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["Env", "EnvPrompt", "GoldPathEnv", "InvalidActionError", "require_action"]


@dataclass(frozen=True, slots=True)
class EnvPrompt:
    """How to instruct a policy for an environment family.

    ``system`` explains the setting and the ``Thought: ... Action: ...`` format; ``example``
    is one worked in-context episode (may be empty for a fine-tuned policy).
    """

    system: str
    example: str = ""

    def render(self, *, with_example: bool = True) -> str:
        if with_example and self.example:
            return f"{self.system}\n\nHere is an example.\n{self.example}"
        return self.system


@runtime_checkable
class Env(Protocol):
    """An environment instance. One episode at a time; ``reset`` starts a new one."""

    async def reset(self, task: TaskSpec) -> Observation:
        """Start ``task`` from its initial state and return the first observation."""
        ...

    async def step(self, action: str) -> StepResult:
        """Execute one (non-empty) action in the current episode."""
        ...

    async def close(self) -> None:
        """Release the simulator (its JVM, process or connection). Idempotent."""
        ...


@runtime_checkable
class GoldPathEnv(Env, Protocol):
    """An env whose simulator can produce an expert (gold) action sequence for a task."""

    async def gold_actions(self, task: TaskSpec) -> list[str]:
        """Reset to ``task`` and return its gold action sequence (the env stands at reset)."""
        ...


def require_action(action: str) -> str:
    """Return ``action`` stripped, or raise :class:`InvalidActionError` (see there)."""
    if not isinstance(action, str) or not action.strip():
        raise InvalidActionError(f"env actions must be non-empty text, got {action!r}")
    try:
        action.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidActionError(
            f"env actions must be valid text; {action!r} holds bytes that are not UTF-8"
        ) from None
    return action.strip()
