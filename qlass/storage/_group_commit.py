"""Group commit: concurrent writes of one kind coalesced into one transaction.

Exploration commits every node as soon as its env step returns, from many coroutines at
once (the branches of 8-32 trees). One transaction per node costs a BEGIN, a COMMIT and a
few statements, each a round trip through SQLAlchemy and the driver's thread; the
transaction's fixed part was most of the explorer's CPU per node. :class:`GroupCommit`
keeps the per-node guarantee (a writer returns only once its own item is committed) while
the items that arrive during one transaction share the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")

Commit = Callable[[Sequence[I]], Awaitable[Sequence[R | Exception]]]


class GroupCommit(Generic[I, R]):
    """Commits the items submitted while an earlier batch was being written in one call.

    ``commit(items)`` writes the items in one transaction and returns, per item, its result
    or the exception that concerns that item alone (an unknown parent, say); its own
    exceptions (the database failed) make each item of the batch be retried alone, so one
    bad item cannot fail the others and every caller gets the error it would have got on
    its own. :meth:`submit` returns when its item's transaction has committed. Items are
    committed in the order they were submitted, at most ``max_batch`` per transaction; a
    lone writer pays one transaction per item, as without grouping.
    """

    def __init__(self, commit: Commit[I, R], *, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._commit = commit
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def max_batch(self) -> int:
        """The most items one ``commit`` call gets (1: a transaction per item)."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_batch must be at least 1")
        self._max_batch = value

    async def submit(self, item: I) -> R:
        """Commit ``item`` (with whatever else is waiting) and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._drain_pending(), name="group-commit")
        return await future

    async def wait_idle(self) -> None:
        """Return once nothing is pending or being committed (before closing the store)."""
        while self._drain is not None and not self._drain.done():
            await asyncio.wait([self._drain])

    async def _drain_pending(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._pending:
                # A writer cancelled before its transaction began gave up its item.
                batch = [(i, f) for i, f in self._pending[: self.max_batch] if not f.done()]
                del self._pending[: self.max_batch]
                if not batch:
                    continue
                items = [item for item, _ in batch]
                try:
                    outcomes: Sequence[R | Exception] = await self._commit(items)
                except Exception as error:
                    outcomes = [error] if len(items) == 1 else [await self._alone(i) for i in items]
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its writer was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        except BaseException:
            for _, future in [*batch, *self._pending]:
                future.cancel()
            self._pending.clear()
            raise

    async def _alone(self, item: I) -> R | Exception:
        try:
            return (await self._commit([item]))[0]
        except Exception as error:
            return error
