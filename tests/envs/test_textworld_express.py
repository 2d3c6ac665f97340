"""TextWorldExpress adapter against the real simulator."""

from __future__ import annotations

import asyncio

import pytest

from qlass.envs.base import InvalidActionError
from qlass.envs.gold import replay_gold
from qlass.envs.registry import create_env, list_tasks
from qlass.envs.textworld_express import GAMES, TextWorldExpressEnv, seeds
from qlass.errors import ConfigError, UnknownNameError
from qlass.types import TaskSpec
from tests.envs.conftest import shutdown_simulator

SAMPLE_GAMES = ["coin", "cookingworld", "sorting", "arithmetic", "mapreader", "twc"]


async def test_gold_paths_reach_full_score_on_a_sample_of_games() -> None:
    tasks = list_tasks("textworld_express", "train", games=SAMPLE_GAMES, limit=12)
    tasks += list_tasks("textworld_express", "test", games=SAMPLE_GAMES, limit=6)
    env = create_env("textworld_express")
    try:
        for task in tasks:
            trajectory = await replay_gold(env, task)
            assert trajectory.final_score == 1.0, task.key
            assert trajectory.success, task.key
            assert trajectory.actions, task.key
    finally:
        await env.close()


async def test_observations_rewards_and_done_follow_the_simulator() -> None:
    task = TaskSpec("textworld_express", "coin", 1, "train", "numLocations=3,includeDoors=0")
    env = TextWorldExpressEnv()
    try:
        first = await env.reset(task)
        assert "coin" in first.instruction
        assert first.valid_actions is not None and "look around" in first.valid_actions
        assert "kitchen" in first.text
        miss = await env.step("move nowhere")
        assert (miss.done, miss.score, miss.reward) == (False, 0.0, 0.0)
        win = await env.step("take coin")
        assert (win.done, win.success, win.score, win.reward) == (True, True, 1.0, 1.0)
        assert win.observation == "You take the coin."
        assert win.info["moves"] == 2
    finally:
        await env.close()


async def test_same_actions_give_same_observations_across_instances() -> None:
    task = list_tasks("textworld_express", "dev", games=["coin"], params="numLocations=5", limit=1)[
        0
    ]
    envs = [TextWorldExpressEnv(), TextWorldExpressEnv()]
    try:
        gold = await envs[0].gold_actions(task)
        runs = []
        for env in envs:
            first = await env.reset(task)
            runs.append([first.text] + [(await env.step(a)).observation for a in gold])
        assert runs[0] == runs[1]
    finally:
        await asyncio.gather(*(env.close() for env in envs))


async def test_empty_action_is_rejected_before_the_simulator() -> None:
    env = TextWorldExpressEnv()
    try:
        await env.reset(TaskSpec("textworld_express", "coin", 0, "train"))
        for bad in ["", "   ", "\n"]:
            with pytest.raises(InvalidActionError):
                await env.step(bad)
        result = await env.step("look around")
        assert result.info["moves"] == 1  # the rejected actions never reached the simulator
    finally:
        await env.close()


async def test_bad_game_and_params_are_user_errors() -> None:
    env = TextWorldExpressEnv()
    try:
        with pytest.raises(UnknownNameError, match="coin"):
            await env.reset(TaskSpec("textworld_express", "chess", 0, "train"))
        with pytest.raises(ConfigError, match="numRooms"):
            await env.reset(TaskSpec("textworld_express", "coin", 0, "train", "numRooms=3"))
        first = await env.reset(TaskSpec("textworld_express", "coin", 0, "train"))
        assert first.text  # the env is still usable after a user error
    finally:
        await env.close()


def test_task_listing_interleaves_games_deterministically() -> None:
    tasks = list_tasks(
        "twx", "dev", games=["coin", "sorting"], params={"coin": "numLocations=5"}, limit=5
    )
    assert [(t.name, t.variation, t.params) for t in tasks] == [
        ("coin", 10000, "numLocations=5"),
        ("sorting", 10000, ""),
        ("coin", 10001, "numLocations=5"),
        ("sorting", 10001, ""),
        ("coin", 10002, "numLocations=5"),
    ]
    assert tasks == list_tasks(
        "twx", "dev", games=["coin", "sorting"], params={"coin": "numLocations=5"}, limit=5
    )
    assert all(t.split == "dev" and t.env == "textworld_express" for t in tasks)


def test_listed_seeds_are_the_simulators_folds_for_every_game() -> None:
    from textworld_express import TextWorldExpressEnv as Simulator

    simulator = Simulator(envStepLimit=10)
    try:
        for game in GAMES:
            simulator.load(game, "")
            assert list(simulator.getValidSeedsTrain()) == list(seeds("train")), game
            assert list(simulator.getValidSeedsDev()) == list(seeds("dev")), game
            assert list(simulator.getValidSeedsTest()) == list(seeds("test")), game
    finally:
        shutdown_simulator(simulator)
