"""The requests waiting for an env of an :class:`~qlass.envs.pool.EnvPool`, each woken only
by a release that can change its choice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from qlass.types import TaskSpec

__all__ = ["Waiter", "Waiters"]


@dataclass(eq=False)
class Waiter:
    """A request for an env of ``task``; ``timed``: it waits for an idle env's grace to run
    out (else for any release)."""

    task: TaskSpec
    timed: bool
    woken: asyncio.Future[None]


class Waiters:
    """The pool's waiting requests (one event loop's)."""

    def __init__(self) -> None:
        self._waiting: list[Waiter] = []

    async def wait(self, task: TaskSpec, grace_left_s: float | None) -> None:
        """Wait until :meth:`wake` selects this request, or until an idle env's grace runs
        out in ``grace_left_s`` seconds (None: no env is idle, wait for a release)."""
        woken = asyncio.get_running_loop().create_future()
        waiter = Waiter(task, timed=grace_left_s is not None, woken=woken)
        self._waiting.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_left_s):
                    await woken
        finally:
            self._waiting.remove(waiter)

    def wake(self, wanted: Callable[[Waiter], bool]) -> None:
        """Wake every waiting request that ``wanted`` selects."""
        for waiter in self._waiting:
            if not waiter.woken.done() and wanted(waiter):
                waiter.woken.set_result(None)
