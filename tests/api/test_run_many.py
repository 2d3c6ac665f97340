"""Agent.run_many: many episodes of a real simulator over a bounded pool of JVMs.

Real TextWorldExpress (one JVM per env) and a scripted policy; the corridor toy only where
a failing episode is needed.
"""

from __future__ import annotations

import asyncio

import pytest

from qlass import Agent, EnvPool, EpisodeLimits, StopReason
from qlass.backends.scripted import ScriptedPolicy
from qlass.envs._jvm import java_child_pids
from qlass.envs.base import Env
from qlass.envs.registry import create_env, list_tasks
from qlass.errors import PolicyCallError
from qlass.types import TaskSpec, Trajectory
from tests.runtime.toys import Corridor

ACTIONS = ["look around", "move north", "move east", "take coin", "move south"]
EPISODES = 24


def _tasks(n: int = EPISODES) -> list[TaskSpec]:
    return list_tasks(
        "textworld_express", "dev", games=["coin"], params="numLocations=3,includeDoors=0"
    )[:n]


def _agent(**kw: object) -> Agent:
    policy = ScriptedPolicy(actions=ACTIONS)
    return Agent(policy, None, "sampled", system_prompt=None, max_steps=6, **kw)  # type: ignore[arg-type]


async def test_run_many_plays_every_task_over_a_pool_of_two_jvms() -> None:
    tasks = _tasks()
    assert len(tasks) == EPISODES
    pool = EnvPool.for_env("textworld_express", size=2, max_steps=6)
    live: list[int] = []

    async def seen(trajectory: Trajectory) -> None:
        live.append(pool.live)

    async with pool, _agent() as agent:
        trajectories = await agent.run_many(tasks, pool, concurrency=4, on_episode=seen)
        # One episode played alone with run() is the same episode (same seed, same steps).
        alone = await agent.run(pool, tasks[5])
    assert [t.task for t in trajectories] == tasks
    assert max(live) <= 2 and pool.stats.created == 2  # 24 episodes, 2 simulators
    assert all(t.stop_reason in {StopReason.DONE, StopReason.STEP_LIMIT} for t in trajectories)
    assert any(t.success for t in trajectories)  # the scripted policy finds some coins
    assert [s.candidate.text for s in alone.steps] == [
        s.candidate.text for s in trajectories[5].steps
    ]
    assert alone.final_score == trajectories[5].final_score


async def test_run_many_with_a_factory_bounds_and_closes_the_envs() -> None:
    made: list[Env] = []

    def factory() -> Env:
        env = create_env("textworld_express")
        made.append(env)
        return env

    pids: set[int] = set()

    async def seen(trajectory: Trajectory) -> None:
        pids.update(env.pid for env in made if env.pid is not None)  # type: ignore[attr-defined]

    limits = EpisodeLimits(completion_token_limit=6)  # two 3-word turns per episode
    async with _agent(limits=limits) as agent:
        trajectories = await agent.run_many(
            _tasks(12), factory, pool_size=3, concurrency=6, on_episode=seen
        )
    assert len(trajectories) == 12 and 1 <= len(made) <= 3 and pids
    assert all(len(t.steps) <= 2 for t in trajectories)
    assert any(t.stop_reason == StopReason.TOKEN_LIMIT for t in trajectories)
    # The agent made the pool, so it closed every simulator it started.
    assert not pids & set(await asyncio.to_thread(java_child_pids))


async def test_a_failed_episode_is_recorded_and_the_others_go_on() -> None:
    policy = ScriptedPolicy(actions=["move right"], errors=[PolicyCallError("HTTP 500")])
    tasks = [TaskSpec("corridor", "walk", i, "dev") for i in range(3)]
    async with Agent(policy, None, "greedy", max_steps=5) as agent:
        trajectories = await agent.run_many(tasks, Corridor, concurrency=1, on_error="record")
        failing = ScriptedPolicy(actions=["move right"], errors=[PolicyCallError("500")])
        with pytest.raises(PolicyCallError):
            await Agent(failing, None, "greedy").run_many(tasks, Corridor)
    assert [t.stop_reason for t in trajectories] == ["error", "done", "done"]
    assert trajectories[0].info["error"] == "HTTP 500"


async def test_run_many_refuses_what_is_not_a_pool_or_factory() -> None:
    async with _agent() as agent:
        with pytest.raises(TypeError, match="EnvPool or an env factory"):
            await agent.run_many(_tasks(1), "textworld_express")  # type: ignore[arg-type]
