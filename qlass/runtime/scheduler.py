"""Run many coroutines with bounded concurrency, and stop gracefully on Ctrl-C/SIGTERM.

The first SIGINT or SIGTERM sets :attr:`StopSignal.requested`: workers check it before they
start new work (a policy call, an env step), so every step already under way finishes and
is committed. A second signal cancels everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

import structlog

__all__ = ["StopSignal", "bounded_map"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class StopSignal:
    """A graceful-stop flag that workers poll, optionally wired to SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.signals = 0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    @contextlib.contextmanager
    def installed(self, main: asyncio.Task[object] | None = None) -> Iterator[StopSignal]:
        """Handle SIGINT/SIGTERM on the running loop while the block runs.

        First signal: graceful stop. Second: cancel ``main`` (the task running the work).
        """
        loop = asyncio.get_running_loop()
        main = main or asyncio.current_task()
        installed: list[signal.Signals] = []

        def on_signal(signum: int) -> None:
            self.signals += 1
            if self.signals == 1:
                self.request()
                print(
                    f"\n{signal.Signals(signum).name}: finishing the steps under way and "
                    "committing them (press Ctrl-C again to abort at once)",
                    file=sys.stderr,
                )
            elif main is not None:
                main.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        try:
            yield self
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)


async def bounded_map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    concurrency: int,
    stop: StopSignal | None = None,
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``concurrency`` running at once.

    Results keep the order of ``items``. Items not yet started when a stop is requested are
    skipped (the list then holds only the finished ones' results); an exception cancels the
    rest and propagates as itself (not wrapped in an ``ExceptionGroup``).
    """
    limit = asyncio.Semaphore(concurrency)
    results: dict[int, R] = {}

    async def one(index: int, item: T) -> None:
        async with limit:
            if stop is not None and stop.requested:
                return
            results[index] = await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            for index, item in enumerate(items):
                group.create_task(one(index, item))
    except BaseExceptionGroup as errors:
        # Propagate the error itself (a ConfigError stays a ConfigError for the CLI), not
        # the group the task group wraps it in; further concurrent errors are logged.
        first, *others = errors.exceptions
        for other in others:
            log.warning("concurrent_error", error=repr(other))
        raise first from first.__cause__
    return [results[i] for i in sorted(results)]
