"""Micro-batching: gather concurrent single requests into one batched call.

Many episodes on one event loop each ask for one generation or one score; a model is far
faster on one batch of 16 than on 16 batches of one. :class:`MicroBatcher` collects the
requests that arrive within ``max_wait_s`` of the first (up to ``max_batch``), runs the
batch function once in a worker thread (so the loop keeps running), and hands each caller
its own result. Used by the local transformers backend and the QNet scorer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchStats:
    """Counters a benchmark or a progress bar can read."""

    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher(Generic[In, Out]):
    """Run ``batch_fn`` over requests gathered from concurrent ``submit`` calls.

    ``batch_fn`` is synchronous (a forward pass), takes a list of inputs and must return a
    list of outputs of the same length and order. It runs in one dedicated thread, so
    batches execute one at a time, in arrival order. An exception in ``batch_fn`` is raised
    in every caller of that batch.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._name = name
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats = BatchStats()

    async def submit(self, item: In) -> Out:
        """Queue ``item`` and wait for its result."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # First use, or first use on a new event loop: start a worker on this loop.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._executor = self._executor or ThreadPoolExecutor(1, thread_name_prefix=self._name)
            self._worker = loop.create_task(self._run(), name=self._name)
        assert self._queue is not None
        future: asyncio.Future[Out] = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def submit_many(self, items: Sequence[In]) -> list[Out]:
        """Submit several items at once; they may be split over batches."""
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    async def _run(self) -> None:
        assert self._queue is not None and self._executor is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            inputs = [item for item, _ in live]
            try:
                outputs = await loop.run_in_executor(self._executor, self._batch_fn, inputs)
                if len(outputs) != len(inputs):
                    raise RuntimeError(
                        f"{self._name}: batch function returned {len(outputs)} results "
                        f"for {len(inputs)} inputs"
                    )
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.items += len(inputs)
            self.stats.sizes.append(len(inputs))
            for (_, fut), out in zip(live, outputs, strict=True):
                if not fut.done():
                    fut.set_result(out)

    async def aclose(self) -> None:
        """Stop the worker and its thread. Requests still queued are cancelled."""
        self._closed = True
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                fut.cancel()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # Wait for a batch still running in the thread, without blocking the loop.
            await asyncio.to_thread(executor.shutdown, wait=True)
