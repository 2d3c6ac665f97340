import asyncio
import threading

import pytest

from qlass._batching import MicroBatcher


async def test_concurrent_submits_are_batched_and_ordered() -> None:
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(items)
        return [2 * x for x in items]

    batcher = MicroBatcher(double, max_batch=8, max_wait_s=0.05)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    await batcher.aclose()
    assert results == [2 * i for i in range(20)]
    assert sum(len(b) for b in seen) == 20
    assert max(len(b) for b in seen) == 8
    assert len(seen) <= 4


async def test_batch_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def record(items: list[int]) -> list[int]:
        threads.append(threading.get_ident())
        return items

    batcher = MicroBatcher(record, max_batch=4)
    await batcher.submit_many([1, 2, 3])
    await batcher.aclose()
    assert threads and all(t != loop_thread for t in threads)


async def test_exception_reaches_every_caller_and_batcher_survives() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return items

    batcher = MicroBatcher(flaky, max_batch=4, max_wait_s=0.05)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await batcher.submit(5) == 5
    await batcher.aclose()


async def test_wrong_result_count_is_an_error() -> None:
    batcher = MicroBatcher(lambda items: items[:-1], max_batch=2, max_wait_s=0.05)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 inputs"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
    await batcher.aclose()
