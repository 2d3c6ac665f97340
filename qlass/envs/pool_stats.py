"""The counters of an :class:`~qlass.envs.pool.EnvPool`: how it reached the nodes asked for."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["PoolStats"]


@dataclass
class PoolStats:
    """Counters of the work a pool did; ``snapshot()`` gives a copy to diff against."""

    created: int = 0
    replaced: int = 0
    crashes: int = 0
    timeouts: int = 0
    resets: int = 0
    steps: int = 0
    caller_steps: int = 0
    advanced_steps: int = 0
    replayed_steps: int = 0
    exact_reuses: int = 0
    continuations: int = 0
    replays: int = 0

    @property
    def steps_per_caller_step(self) -> float:
        """All env steps divided by the steps callers asked for (1.0 = no overhead)."""
        return self.steps / self.caller_steps if self.caller_steps else 0.0

    def snapshot(self) -> PoolStats:
        return replace(self)

    def since(self, before: PoolStats) -> PoolStats:
        """The counts accumulated after ``before`` (a snapshot)."""
        return PoolStats(
            **{
                name: getattr(self, name) - getattr(before, name)
                for name in self.__dataclass_fields__
            }
        )
