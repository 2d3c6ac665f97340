"""EnvPool unit tests on a small deterministic fake env (the real simulators are in
test_pool_simulators.py)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from qlass.envs.base import InvalidActionError, require_action
from qlass.envs.pool import EnvPool
from qlass.errors import EnvCrashedError, EnvTimeoutError, ReplayMismatchError
from qlass.types import Observation, StepResult, TaskSpec

TASK = TaskSpec("fake", "walk", 0, "train")
OTHER = TaskSpec("fake", "walk", 1, "train")


class PathEnv:
    """Observation = the path walked so far; the actions ``hang`` and ``crash`` misbehave."""

    instances: ClassVar[list[PathEnv]] = []

    def __init__(self, *, noisy: bool = False) -> None:
        self.path: list[str] = []
        self.task: TaskSpec | None = None
        self.resets = 0
        self.steps = 0
        self.closed = False
        self.noisy = noisy
        PathEnv.instances.append(self)

    async def reset(self, task: TaskSpec) -> Observation:
        self.task, self.path = task, []
        self.resets += 1
        return Observation(text=f"{task.variation}:", instruction="walk")

    async def step(self, action: str) -> StepResult:
        require_action(action)
        if action == "hang":
            await asyncio.Event().wait()
        if action == "crash":
            raise EnvCrashedError("fake simulator died")
        self.path.append(action)
        self.steps += 1
        text = f"{self.task.variation if self.task else '?'}:{'/'.join(self.path)}"
        if self.noisy:
            text += f" #{self.resets}"
        return StepResult(observation=text, reward=0.0, done=action == "end", score=0.0)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def _fresh_instances() -> None:
    PathEnv.instances = []


def obs(*path: str, variation: int = 0) -> str:
    return f"{variation}:{'/'.join(path)}"


async def test_exact_prefix_and_replay_positioning_cost_what_they_should() -> None:
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a", "b"]) as env:  # reset + replay 2
            assert env.actions == ("a", "b") and env.observation == obs("a", "b")
        assert (pool.stats.resets, pool.stats.replayed_steps) == (1, 2)
        async with pool.at(TASK, ["a", "b"]) as env:  # exact: 0 steps
            assert env.observation == obs("a", "b")
        assert pool.stats.exact_reuses == 1 and pool.stats.steps == 2
        async with pool.at(TASK, ["a", "b", "c", "d"]) as env:  # continue by 2
            result = await env.step("e")  # a new node: 1 caller step
            assert result.observation == obs("a", "b", "c", "d", "e")
        assert (pool.stats.continuations, pool.stats.advanced_steps, pool.stats.caller_steps) == (
            1,
            2,
            1,
        )
        async with pool.at(TASK, ["a", "x"]) as env:  # sibling branch: reset + replay 2
            assert env.observation == obs("a", "x")
        stats = pool.stats
        assert (stats.resets, stats.replays, stats.replayed_steps, stats.steps) == (2, 2, 4, 7)
        assert stats.created == 1 and len(PathEnv.instances) == 1


async def test_live_continuation_costs_one_step_per_child_and_replay_costs_depth() -> None:
    depth = 6
    path = [f"m{i}" for i in range(depth)]
    async with EnvPool(PathEnv, size=1) as pool:
        for i in range(depth):  # walk down a chain: each child from its live parent
            async with pool.at(TASK, path[:i]) as env:
                await env.step(path[i])
        chain = pool.stats.snapshot()
        assert chain.steps == depth and chain.caller_steps == depth and chain.resets == 1
        async with pool.at(TASK, path[:-1]) as env:  # sibling of the deepest node
            await env.step("other")
        sibling = pool.stats.since(chain)
        assert sibling.caller_steps == 1 and sibling.replayed_steps == depth - 1
        assert sibling.steps == depth  # depth - 1 replayed + 1 new


async def test_prefers_the_longest_idle_prefix_and_starts_new_envs_up_to_size() -> None:
    async with EnvPool(PathEnv, size=2, linger_s=0) as pool:
        async with pool.at(TASK, ["a"]), pool.at(TASK, ["a", "b", "c"]):
            pass
        assert pool.stats.created == 2
        before = pool.stats.snapshot()
        async with pool.at(TASK, ["a", "b", "c", "d"]) as env:
            assert env.actions == ("a", "b", "c", "d")
        assert pool.stats.since(before).steps == 1  # from the env at a/b/c, not the one at a
        async with pool.at(OTHER, ["z"]) as env:  # evicts the least recently used env
            assert env.observation == obs("z", variation=1)
        assert pool.stats.created == 2 and pool.live == 2


async def test_never_more_live_envs_than_size_under_concurrency() -> None:
    async with EnvPool(PathEnv, size=3, max_steps=1) as pool:
        busy = 0
        peak = 0

        async def episode(i: int) -> str:
            nonlocal busy, peak
            async with pool.at(TaskSpec("fake", "walk", i, "train")) as env:
                busy += 1
                peak = max(peak, busy)
                await asyncio.sleep(0.001)
                result = await env.step("go")
                busy -= 1
                return result.observation

        results = await asyncio.gather(*(episode(i) for i in range(20)))
        assert results == [obs("go", variation=i) for i in range(20)]
        assert peak == 3 and len(PathEnv.instances) == 3
    assert all(env.closed for env in PathEnv.instances)


async def test_replay_mismatch_names_the_task_and_step() -> None:
    async with EnvPool(lambda: PathEnv(noisy=True), size=1) as pool:
        with pytest.raises(ReplayMismatchError, match=r"fake/walk/train/0: after step 2 \('b'\)"):
            async with pool.at(TASK, ["a", "b"], expected=[obs("a") + " #1", obs("a", "b")]):
                pass
        # Deterministic replays with matching records pass.
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a", "b"], expected=[obs("a"), obs("a", "b")]) as env:
            assert env.observation == obs("a", "b")
        with pytest.raises(ReplayMismatchError):  # an exact reuse is checked too
            async with pool.at(TASK, ["a", "b"], expected=[obs("a"), "something else"]):
                pass
    with pytest.raises(ValueError, match="observations for 2 actions"):
        async with EnvPool(PathEnv) as pool, pool.at(TASK, ["a", "b"], expected=["x"]):
            pass


async def test_a_hung_step_times_out_and_the_env_is_replaced() -> None:
    async with EnvPool(PathEnv, size=1, step_timeout_s=0.2) as pool:
        async with pool.at(TASK) as env:
            with pytest.raises(EnvTimeoutError, match=r"step 1 \('hang'\) of fake/walk/train/0"):
                await env.step("hang")
            with pytest.raises(EnvCrashedError, match="lost"):
                await env.step("go")
        assert PathEnv.instances[0].closed
        async with pool.at(TASK, ["a"]) as env:
            assert env.observation == obs("a")
        assert (pool.stats.timeouts, pool.stats.replaced, pool.stats.created) == (1, 1, 2)


async def test_a_crash_reaches_the_caller_and_the_env_is_replaced() -> None:
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a"]) as env:
            with pytest.raises(EnvCrashedError, match="died"):
                await env.step("crash")
        assert PathEnv.instances[0].closed and pool.stats.crashes == 1
        async with pool.at(TASK, ["a"]) as env:
            assert env.observation == obs("a")
        assert pool.stats.created == 2


async def test_a_crash_while_positioning_is_retried_on_a_fresh_env() -> None:
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a"]):
            pass
        PathEnv.instances[0].step = _crash_once(PathEnv.instances[0].step)  # type: ignore[method-assign]
        async with pool.at(TASK, ["a", "b"]) as env:
            assert env.observation == obs("a", "b")
        assert pool.stats.replaced == 1 and pool.stats.created == 2


def _crash_once(step):  # type: ignore[no-untyped-def]
    async def crashing(action: str) -> StepResult:
        raise EnvCrashedError("died during positioning")

    return crashing


async def test_cancelled_step_forgets_the_position_but_keeps_the_env() -> None:
    async with EnvPool(PathEnv, size=1) as pool:

        async def hang() -> None:
            async with pool.at(TASK, ["a"]) as env:
                await env.step("hang")

        task = asyncio.create_task(hang())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.at(TASK, ["a"]) as env:  # position unknown: reset + replay
            assert env.observation == obs("a")
        assert pool.stats.resets == 2 and pool.stats.created == 1


async def test_empty_action_is_rejected_without_harming_the_env() -> None:
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a"]) as env:
            with pytest.raises(InvalidActionError):
                await env.step("  ")
            assert (await env.step("b")).observation == obs("a", "b")
        assert pool.stats.replaced == 0


async def test_closed_pool_closes_envs_and_refuses_new_work() -> None:
    pool = EnvPool(PathEnv, size=2)
    async with pool.at(TASK), pool.at(OTHER):
        pass
    await pool.aclose()
    assert [env.closed for env in PathEnv.instances] == [True, True]
    with pytest.raises(RuntimeError, match="closed"):
        async with pool.at(TASK):
            pass


async def test_an_env_mid_episode_lingers_for_its_branch_before_another_task_takes_it() -> None:
    # A linger far longer than the test: whatever the machine's load, the branch comes
    # back within it, so the order of events below is the pool's doing alone.
    async with EnvPool(PathEnv, size=1, linger_s=3600) as pool:
        async with pool.at(TASK, ["a"]):
            pass
        served: list[str] = []

        async def other() -> None:
            async with pool.at(OTHER, ["z"]):
                served.append("other")

        waiting = asyncio.create_task(other())
        await asyncio.sleep(0)  # it runs until it waits for the lingering env
        assert not waiting.done()
        async with pool.at(TASK, ["a", "b"]) as env:  # the branch comes back: continues
            assert env.observation == obs("a", "b")
            served.append("branch")
        assert pool.stats.continuations == 1
        await asyncio.sleep(0)
        assert not waiting.done()  # still lingering for the branch
        async with pool.at(TASK, ["a", "b", "c"]) as env:
            env.finish()  # the branch ends here: the env is free for the other task
        await waiting
        assert served == ["branch", "other"]
        assert pool.stats.resets == 2


async def test_a_waiting_task_takes_a_lingering_env_once_its_linger_time_is_out() -> None:
    async with EnvPool(PathEnv, size=1, linger_s=0.2) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the env goes idle: a lower bound of its idle time
        async with pool.at(TASK, ["a"]):
            pass

        async def other() -> float:  # another task (the one that gave it back never waits)
            async with pool.at(OTHER, ["z"]) as env:
                assert env.observation == obs("z", variation=1)
                return loop.time() - started

        async with asyncio.timeout(60):
            waited = await asyncio.create_task(other())
        assert waited >= 0.2  # it waited out the linger time (a load only makes it longer)
        assert pool.stats.resets == 2


async def test_without_a_grace_another_task_takes_an_idle_env_at_once() -> None:
    async with EnvPool(PathEnv, size=1, linger_s=0) as pool:
        async with pool.at(TASK, ["a"]):
            pass
        async with pool.at(OTHER, ["z"]):
            pass
        async with pool.at(TASK, ["a", "b"]):  # its env was taken: replayed
            pass
        assert (pool.stats.continuations, pool.stats.resets) == (0, 3)


async def test_envs_at_an_episode_end_are_reused_without_lingering() -> None:
    limits = {0: 2, 1: 2}
    async with EnvPool(
        PathEnv, size=1, linger_s=30, max_steps=lambda t: limits[t.variation]
    ) as pool:
        async with pool.at(TASK, ["a", "end"]):  # done
            pass
        async with pool.at(OTHER, ["a", "b"]):  # at max_steps
            pass
        async with pool.at(TASK, ["a"]) as env:
            env.finish()  # the caller will not continue from here
        async with asyncio.timeout(5):  # none of these waits for 30 s
            async with pool.at(OTHER, ["c"]) as env:
                assert env.observation == obs("c", variation=1)
        assert pool.stats.resets == 4


async def test_idle_env_at_an_end_is_evicted_before_a_live_one() -> None:
    async with EnvPool(PathEnv, size=2, linger_s=0) as pool:
        async with pool.at(TASK, ["a", "end"]):
            pass
        async with pool.at(OTHER, ["x"]):  # most recently used, but mid-episode
            pass
        async with pool.at(TaskSpec("fake", "walk", 2, "train"), ["q"]):
            pass
        async with pool.at(OTHER, ["x", "y"]):  # still there: continued, not replayed
            pass
        assert pool.stats.continuations == 1


async def test_replay_checks_observations_with_the_pools_comparison() -> None:
    """The generic pool compares replayed text exactly; a family's hook may be laxer."""
    async with EnvPool(PathEnv, size=1) as pool:
        async with pool.at(TASK, ["a"], [obs("a")]):
            pass
        with pytest.raises(ReplayMismatchError):
            async with pool.at(OTHER, ["a"], [obs("b", variation=1)]):
                pass
    lax = EnvPool(PathEnv, size=1, same_observation=lambda _a, _b: True)
    async with lax, lax.at(OTHER, ["a"], ["anything"]) as env:
        assert env.actions == ("a",)


async def test_around_lends_the_callers_env_and_never_closes_it() -> None:
    env = PathEnv()
    async with EnvPool.around(env) as pool:
        async with pool.at(TASK, ["a"]) as handle:
            assert handle.env is env
        async with pool.at(TASK, ["a", "b"]):  # continued, not replayed
            pass
        with pytest.raises(EnvCrashedError):  # a failure: the env is kept, reset next time
            async with pool.at(TASK, ["a", "b"]) as handle:
                await handle.step("crash")
        async with pool.at(TASK, ["a"]) as handle:
            assert handle.env is env and env.path == ["a"]
        assert (pool.stats.continuations, env.resets, pool.stats.created) == (1, 2, 1)
    assert not env.closed


class CountingPool(EnvPool):
    """Counts how often a request looks for an env (each wake-up of a waiter is one)."""

    looks = 0

    def _choose(
        self, task: TaskSpec, path: tuple[str, ...], now: float, *, reserving: bool = False
    ) -> Any:
        CountingPool.looks += 1
        return super()._choose(task, path, now, reserving=reserving)


async def test_a_release_wakes_only_the_requests_it_can_serve() -> None:
    # One env, a long grace: while it stands mid-episode of TASK, requests of other
    # tasks wait for the grace to run out. TASK's own steps must not wake them each time.
    async with CountingPool(PathEnv, size=1, linger_s=3600) as pool:
        async with pool.at(TASK, ["a"]):
            pass
        others = [TaskSpec("fake", "walk", v, "train") for v in range(1, 21)]

        async def want(task: TaskSpec) -> None:
            async with pool.at(task, ["x"]) as env:
                env.finish()

        CountingPool.looks = 0
        waiting = [asyncio.create_task(want(t)) for t in others]
        await asyncio.sleep(0)  # each new task runs until it waits
        assert CountingPool.looks == len(others)
        CountingPool.looks = 0
        for depth in range(2, 6):  # TASK's branch goes on from its env: no replay
            async with pool.at(TASK, ["a"] * depth):
                pass
            await asyncio.sleep(0)
        assert CountingPool.looks == 4  # its own four requests, no other request woke
        assert pool.stats.replays == 1  # its first reset only
        async with pool.at(TASK, ["a"] * 6) as env:
            env.finish()  # the episode is over: the env is free for anyone now
        await asyncio.gather(*waiting)
        assert pool.stats.replays == 1 + len(others)
