"""EnvPool branches: an env reserved for a branch between its steps, whatever the clock."""

from __future__ import annotations

import asyncio

import pytest

from qlass.envs.pool import EnvPool

from .test_pool import OTHER, TASK, PathEnv, obs

THIRD = TASK.__class__("fake", "walk", 2, "train")


async def _until_waiting(pool: EnvPool, count: int = 1) -> None:
    """Let the other tasks run until ``count`` requests wait for an env (no clock)."""
    async with asyncio.timeout(60):
        while len(pool._waiters._waiting) < count:  # noqa: ASYNC110 (no event for it)
            await asyncio.sleep(0)


async def test_a_reserved_env_is_kept_for_its_branch_while_others_wait() -> None:
    # No grace at all (linger_s=0), as on a machine where every policy call outlasts it:
    # another task's request still never takes the branch's env.
    async with EnvPool(PathEnv, size=1, linger_s=0) as pool:
        served: list[str] = []

        async def other() -> None:
            async with pool.at(OTHER, ["z"]) as env:
                served.append(env.observation)

        with pool.branch() as branch:
            async with branch.session(TASK, ["a"]):
                pass
            waiting = asyncio.create_task(other())
            await _until_waiting(pool)
            for depth in range(2, 5):  # the branch goes on between its "policy calls"
                async with branch.session(TASK, ["a"] * depth) as env:
                    assert env.observation == obs(*["a"] * depth)
                await asyncio.sleep(0)
            assert not served  # still waiting: the env is the branch's
        await waiting  # the branch's end hands the env over
        assert served == [obs("z", variation=1)]
        stats = pool.stats
        assert (stats.continuations, stats.replayed_steps, stats.resets) == (3, 1 + 1, 2)


async def test_a_branch_takes_only_envs_no_branch_reserves() -> None:
    async with EnvPool(PathEnv, size=2, linger_s=3600) as pool:
        with pool.branch() as first, pool.branch() as second:
            async with first.session(TASK, ["a"]):
                pass
            # The idle env of `first` stands at a prefix of this path: a plain request
            # would continue from it; a second branch starts another env instead.
            async with second.session(TASK, ["a", "b"]) as env:
                assert env.observation == obs("a", "b")
            assert pool.stats.created == 2 and pool.stats.continuations == 0

            third_started = asyncio.Event()

            async def third() -> None:
                with pool.branch() as branch:
                    async with branch.session(THIRD, ["q"]):
                        third_started.set()

            waiting = asyncio.create_task(third())
            await _until_waiting(pool)  # every env reserved: the third branch waits
            second.release()  # ... until one is given back, then takes it at once
            await asyncio.wait_for(third_started.wait(), 60)
            await waiting
            async with first.session(TASK, ["a", "c"]):  # the first kept its env
                pass
        assert pool.stats.continuations == 1


async def test_a_branch_reuses_an_unreserved_env_without_waiting_out_its_grace() -> None:
    async with EnvPool(PathEnv, size=1, linger_s=3600) as pool:
        async with pool.at(TASK, ["a"]):  # idle mid-episode, reserved for nobody
            pass
        with pool.branch() as branch:
            async with asyncio.timeout(60), branch.session(OTHER, ["x"]) as env:
                assert env.observation == obs("x", variation=1)


async def test_a_branch_lends_its_env_to_one_session_at_a_time() -> None:
    async with EnvPool(PathEnv, size=2) as pool:
        with pool.branch() as branch:
            async with branch.session(TASK, ["a"]):
                with pytest.raises(RuntimeError, match="one session at a time"):
                    async with branch.session(TASK, ["a", "b"]):
                        pass


async def test_a_failed_step_replaces_the_branchs_env_and_keeps_the_reservation() -> None:
    async with EnvPool(PathEnv, size=1, linger_s=0) as pool:
        with pool.branch() as branch:
            with pytest.raises(Exception, match="died"):
                async with branch.session(TASK, ["a"]) as env:
                    await env.step("crash")
            async with branch.session(TASK, ["a", "b"]) as env:  # a fresh env, replayed
                assert env.observation == obs("a", "b")
        assert pool.stats.replaced == 1 and pool.stats.created == 2
