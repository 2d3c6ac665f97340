"""EnvPool and the JVM envs with the real simulators: concurrency, crashes, hangs, leaks."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal

import pytest

from qlass.envs._jvm import java_child_pids
from qlass.envs.pool import EnvHandle, EnvPool
from qlass.envs.registry import create_env, gold_actions, list_tasks
from qlass.envs.textworld_express import TextWorldExpressEnv
from qlass.errors import EnvCrashedError, EnvTimeoutError, ReplayMismatchError
from qlass.types import TaskSpec


async def jvms() -> list[int]:
    return await asyncio.to_thread(java_child_pids)


def process_state(pid: int) -> str:
    """The kernel's state letter of ``pid`` (T: stopped), or why it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError as error:
        return f"unreadable: {error}"


async def stopped(pid: int, timeout_s: float = 30.0) -> bool:
    """Wait until ``pid`` is stopped (SIGSTOP delivered); polls, whatever the load."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process_state(pid) != "T":
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def pid_of(handle: EnvHandle) -> int:
    pid = handle.env.pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return pid


async def golds(name: str, tasks: list[TaskSpec]) -> list[list[str]]:
    env = create_env(name)
    try:
        return [await gold_actions(env, task) for task in tasks]
    finally:
        await env.close()


async def play(pool: EnvPool, task: TaskSpec, gold: list[str], kill_at: int | None = None) -> float:
    """Play ``gold`` to the end of the episode (killing the JVM before step ``kill_at``)."""
    async with pool.at(task) as env:
        score = 0.0
        for i, action in enumerate(gold):
            if i == kill_at:
                os.kill(pid_of(env), signal.SIGKILL)
            result = await env.step(action)
            score = result.score
            if result.done:
                break
        return score


async def test_32_concurrent_twx_episodes_on_a_pool_of_4() -> None:
    tasks = await asyncio.to_thread(
        list_tasks,
        "textworld_express",
        "train",
        games=["coin", "sorting", "arithmetic", "twc"],
        limit=32,
    )
    paths = await golds("textworld_express", tasks)
    async with EnvPool.for_env("textworld_express", size=4) as pool:
        scores = await asyncio.gather(
            *(play(pool, t, g) for t, g in zip(tasks, paths, strict=True))
        )
        assert scores == [1.0] * 32
        assert pool.stats.created == 4 and len(await jvms()) == 4
        assert pool.stats.caller_steps == pool.stats.steps > 32 * 2
    assert await jvms() == []


@pytest.mark.slow  # 4 JVM starts and 8 gold paths: 20-55 s on a busy 2-core machine
async def test_32_concurrent_scienceworld_episodes_on_a_pool_of_4_survive_a_killed_jvm() -> None:
    names = [
        "find-animal",
        "find-living-thing",
        "lifespan-longest-lived",
        "lifespan-shortest-lived",
    ]
    tasks = [
        t
        for name in names
        for t in await asyncio.to_thread(list_tasks, "scienceworld", "train", games=[name], limit=2)
    ]
    paths = await golds("scienceworld", tasks)
    episodes = [(tasks[i % 8], paths[i % 8]) for i in range(32)]
    async with EnvPool.for_env("scienceworld", size=4) as pool:
        results = await asyncio.gather(
            *(play(pool, t, g, kill_at=2 if i == 5 else None) for i, (t, g) in enumerate(episodes)),
            return_exceptions=True,
        )
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [5]
        error = results[5]
        assert isinstance(error, EnvCrashedError)
        assert f"step 3 ('{episodes[5][1][2]}') of {episodes[5][0].key}" in str(error)
        assert "died" in str(error) and "pid" in str(error)
        assert [r for i, r in enumerate(results) if i != 5] == [1.0] * 31
        assert await play(pool, *episodes[5]) == 1.0  # the episode runs again on a new JVM
        assert (pool.stats.crashes, pool.stats.replaced, pool.stats.created) == (1, 1, 5)
        assert len(await jvms()) == 4
    assert await jvms() == []


async def test_a_killed_twx_jvm_fails_the_episode_clearly_and_is_replaced() -> None:
    task = TaskSpec("textworld_express", "coin", 3, "train", "numLocations=5,includeDoors=0")
    async with EnvPool.for_env("textworld_express", size=1) as pool:
        async with pool.at(task, ["look around"]) as env:
            old_pid = pid_of(env)
            os.kill(old_pid, signal.SIGKILL)
            with pytest.raises(EnvCrashedError, match=rf"pid {old_pid}\) died during step 2"):
                await env.step("move north")
        async with pool.at(task, ["look around"]) as env:
            assert pid_of(env) != old_pid
            assert env.observation.startswith("You are in the kitchen")
        assert await jvms() == [pid_of(env)]


async def test_a_hung_simulator_times_out_and_its_jvm_is_killed() -> None:
    task = TaskSpec("textworld_express", "coin", 3, "train")
    async with EnvPool.for_env("textworld_express", size=1, step_timeout_s=1.0) as pool:
        async with pool.at(task) as env:
            hung = pid_of(env)
            os.kill(hung, signal.SIGSTOP)  # the JVM stops answering
            # kill() only queues the stop: step once the kernel says the JVM is stopped (a
            # run once saw this step answered; if it happens again, the state is reported)
            assert await stopped(hung), f"JVM {hung} not stopped: {process_state(hung)}"
            (outcome,) = await asyncio.gather(env.step("look around"), return_exceptions=True)
            state = process_state(hung)
            assert isinstance(outcome, EnvTimeoutError), f"JVM in state {state}: {outcome!r}"
            assert re.search(rf"pid {hung}\).*within 1 s; its JVM was killed", str(outcome))
            assert hung not in await jvms()
        async with pool.at(task, ["look around"]) as env:
            assert pid_of(env) != hung
        assert (pool.stats.timeouts, pool.stats.replaced) == (1, 1)


async def test_replay_is_checked_against_recorded_observations() -> None:
    task = TaskSpec("textworld_express", "cookingworld", 7, "train", "numLocations=2")
    recorder = TextWorldExpressEnv()
    try:
        gold = (await recorder.gold_actions(task))[:6]
        await recorder.reset(task)
        recorded = [(await recorder.step(a)).observation for a in gold]
    finally:
        await recorder.close()
    async with EnvPool.for_env("textworld_express", size=1) as pool:
        async with pool.at(task, gold, expected=recorded) as env:  # another JVM agrees
            assert env.observation == recorded[-1]
        tampered = [*recorded[:3], "You see a dragon.", *recorded[4:]]
        with pytest.raises(ReplayMismatchError, match=rf"after step 4 \('{gold[3]}'\)"):
            async with pool.at(task, gold[:5], expected=tampered[:5]):
                pass


async def test_tree_expansion_steps_with_live_continuation_and_replay() -> None:
    task = TaskSpec("textworld_express", "coin", 11, "train", "numLocations=6,includeDoors=0")
    async with EnvPool.for_env("textworld_express", size=1) as pool:
        async with pool.at(task) as env:
            chain = [sorted(env.initial.valid_actions or ())[0]]
        path: list[str] = []
        for action in ["look around"] * 5:  # a chain of new nodes, each from its live parent
            async with pool.at(task, path) as env:
                await env.step(action)
            path.append(action)
        assert pool.stats.caller_steps == 5 and pool.stats.steps == 5
        before = pool.stats.snapshot()
        async with pool.at(task, path[:-1]) as env:  # the deepest node's sibling
            await env.step(chain[0])
        assert pool.stats.since(before).steps == 5  # 4 replayed + 1 new


async def test_an_env_dropped_without_close_does_not_leak_its_jvm() -> None:
    env = TextWorldExpressEnv()
    await env.reset(TaskSpec("textworld_express", "coin", 0, "train"))
    pid = env.pid
    assert pid in await jvms()
    del env
    gc.collect()
    assert pid not in await jvms()


async def test_close_is_idempotent_and_frees_the_jvm() -> None:
    env = TextWorldExpressEnv()
    await env.reset(TaskSpec("textworld_express", "coin", 0, "train"))
    pid = env.pid
    await env.close()
    await env.close()
    assert pid not in await jvms() and env.pid is None and not env.alive
    with pytest.raises(RuntimeError, match="closed"):
        await env.step("look around")
