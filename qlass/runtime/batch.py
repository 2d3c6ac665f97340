"""Many episodes at once over one bounded env pool: what :meth:`qlass.agent.Agent.run_many`
runs.

Each episode gets its own tally and meter (its limits count for it alone) and a seed
given by the caller, so its result does not depend on which episodes ran beside it. The
pool bounds the live simulators (one JVM each for TextWorldExpress and ScienceWorld), so
200 episodes need ``size`` JVMs, not 200.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Literal

import structlog

from qlass.errors import QlassError
from qlass.runtime.context import SearchContext
from qlass.runtime.episode import EpisodeState, play_episode, to_trajectory
from qlass.runtime.scheduler import StopSignal, bounded_map
from qlass.types import History, StopReason, TaskSpec, Trajectory

__all__ = ["OnError", "play_many"]

log = structlog.get_logger(__name__)

OnError = Literal["raise", "record"]
"""What a failed episode does: ``raise`` stops the batch with its error; ``record``
returns a trajectory with ``stop_reason="error"`` and the error in ``info["error"]`` (the
steps played before the error are not kept), and the other episodes go on."""


async def play_many(
    ctx: SearchContext,
    tasks: Sequence[TaskSpec],
    strategy: object,
    name: str,
    *,
    seed_of: Callable[[TaskSpec], int],
    concurrency: int,
    on_error: OnError = "raise",
    on_episode: Callable[[Trajectory], Awaitable[None]] | None = None,
    stop: StopSignal | None = None,
) -> list[Trajectory]:
    """Play every task once with ``strategy`` in ``ctx.envs``, ``concurrency`` at a time.

    Returns the trajectories in the order of ``tasks`` (after a stop request, only those
    of the episodes that started). ``on_episode`` is awaited as each episode ends.
    """

    async def one(task: TaskSpec) -> Trajectory:
        episode = ctx.for_episode()
        try:
            trajectory = await play_episode(episode, task, strategy, seed_of(task), name)
        except QlassError as exc:
            if on_error == "raise":
                raise
            log.warning("episode_failed", task=task.key, error=str(exc))
            state = EpisodeState(task, History("", ""), started=episode.meter.start())
            failed = to_trajectory(episode, state, {"strategy": name, "error": str(exc)})
            trajectory = replace(failed, stop_reason=StopReason.ERROR)
        if on_episode is not None:
            await on_episode(trajectory)
        return trajectory

    return await bounded_map(one, tasks, concurrency=concurrency, stop=stop)
