"""WebShop adapter over real HTTP against the AgentGym-interface test server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qlass.envs.pool import EnvPool
from qlass.envs.registry import create_env, gold_actions, list_tasks
from qlass.envs.webshop import WebShopEnv
from qlass.errors import ConfigError, EnvCrashedError, UserError
from qlass.types import TaskSpec


def winning_actions(goal: dict[str, Any]) -> list[str]:
    options = [f"click[{value}]" for value in goal["options"].values()]
    return [
        f"search[{goal['instruction'][7:40]}]",
        f"click[{goal['asin'].lower()}]",
        *options,
        "click[buy now]",
    ]


async def test_an_episode_over_http_reaches_the_servers_reward(
    webshop_url: str, webshop_goals: list[dict[str, Any]]
) -> None:
    env = create_env("webshop", url=webshop_url)
    try:
        for session, goal in enumerate(webshop_goals):
            task = TaskSpec("webshop", "webshop", session, "test")
            first = await env.reset(task)
            assert first.instruction == goal["instruction"]
            assert first.text.startswith("WebShop [SEP] Instruction:")
            assert first.valid_actions == ("search[<keywords>]", "click[search]")
            actions = winning_actions(goal)
            for action in actions[:-1]:
                result = await env.step(action)
                assert not result.done and result.score == 0.0
            assert result.valid_actions is not None and "click[buy now]" in result.valid_actions
            final = await env.step(actions[-1])
            assert (final.done, final.success, final.score, final.reward) == (True, True, 1.0, 1.0)
            assert final.observation.startswith("Thank you for shopping with us!")
    finally:
        await env.close()


async def test_partial_purchase_scores_below_one_and_bad_actions_change_nothing(
    webshop_url: str, webshop_goals: list[dict[str, Any]]
) -> None:
    env = WebShopEnv(url=webshop_url)
    try:
        first = await env.reset(TaskSpec("webshop", "webshop", 0, "test"))
        unchanged = await env.step("jump[around]")
        assert unchanged.observation == first.text and not unchanged.done
        await env.step("search[deodorant]")
        await env.step("click[b0test0004]")  # the wrong product
        final = await env.step("click[buy now]")
        assert final.done and not final.success and 0.0 < final.score < 1.0
    finally:
        await env.close()


async def test_pool_of_webshop_clients_runs_concurrent_episodes(
    webshop_url: str, webshop_goals: list[dict[str, Any]]
) -> None:
    async with EnvPool.for_env("webshop", size=2, url=webshop_url) as pool:

        async def episode(session: int) -> float:
            goal = webshop_goals[session % len(webshop_goals)]
            async with pool.at(TaskSpec("webshop", "webshop", session, "test")) as env:
                for action in winning_actions(goal):
                    result = await env.step(action)
                return result.score

        assert await asyncio.gather(*(episode(i) for i in range(6))) == [1.0] * 6
        assert pool.stats.created == 2


async def test_unreachable_server_is_a_clear_crash() -> None:
    env = WebShopEnv(url="http://127.0.0.1:9", step_timeout_s=2)
    try:
        with pytest.raises(
            EnvCrashedError, match=r"WebShop server unreachable for POST http://127.0.0.1:9/create"
        ):
            await env.reset(TaskSpec("webshop", "webshop", 0, "test"))
    finally:
        await env.close()


async def test_webshop_needs_a_url_and_has_no_gold_paths(webshop_url: str) -> None:
    with pytest.raises(ConfigError, match="server_url"):
        create_env("webshop")
    env = create_env("webshop", url=webshop_url)
    try:
        with pytest.raises(UserError, match="no gold paths"):
            await gold_actions(env, TaskSpec("webshop", "webshop", 0, "test"))
    finally:
        await env.close()


def test_splits_follow_the_webshop_paper() -> None:
    test = list_tasks("webshop", "test", limit=200)
    assert [t.variation for t in test] == list(range(200))
    assert list_tasks("webshop", "dev", limit=1)[0].variation == 500
    assert list_tasks("webshop", "train", limit=1)[0].variation == 1500
    assert len(list_tasks("webshop", "train", goals=2000)) == 500
