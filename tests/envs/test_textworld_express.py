"""TextWorldExpress adapter against the real simulator."""

from __future__ import annotations

import asyncio
import re

import pytest

from qlass.envs.base import InvalidActionError
from qlass.envs.gold import replay_gold
from qlass.envs.registry import create_env, list_tasks
from qlass.envs.textworld_express import _PARAMS, GAMES, TextWorldExpressEnv, check_params, seeds
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


def test_listed_seeds_and_parameter_names_are_the_simulators_for_every_game() -> None:
    from textworld_express import TextWorldExpressEnv as Simulator

    simulator = Simulator(envStepLimit=10)
    try:
        for game in GAMES:
            simulator.load(game, "")
            assert list(simulator.getValidSeedsTrain()) == list(seeds("train")), game
            assert list(simulator.getValidSeedsDev()) == list(seeds("dev")), game
            assert list(simulator.getValidSeedsTest()) == list(seeds("test")), game
            # The simulator lists the names it knows when given one it does not; its
            # message glues "None" to the last name (simonsays: "..., verboseNone").
            with pytest.raises(ValueError, match="Known properties: ") as refused:
                simulator.load(game, "noSuchParameter=1")
            listed = str(refused.value).split("Known properties: ")[1].strip().rstrip(".")
            names = [] if listed == "None" else listed.removesuffix("None").split(", ")
            assert sorted(names) == sorted(_PARAMS[game]), game
    finally:
        shutdown_simulator(simulator)


def test_parameters_are_checked_by_name_and_type_without_a_simulator() -> None:
    check_params("coin", "numLocations=5, includeDoors=0,")  # spaces and a trailing comma
    check_params("sorting", "")
    refused = {
        ("coin", "numLocations=abc"): "numLocations must be a whole number, got 'abc'",
        ("coin", "numLocations=1.5"): "numLocations must be a whole number, got '1.5'",
        ("coin", "numLocations=--5"): "numLocations must be a whole number, got '--5'",
        ("coin", "includeDoors=2"): "includeDoors must be 0 or 1, got '2'",
        ("coin", "includeDoors=true"): "includeDoors must be 0 or 1, got 'true'",
        ("sorting", "numLocations=3"): "sorting has no parameter 'numLocations' (it takes: no",
        ("coin", "numLocations"): "'numLocations' must look like name=value",
    }
    for (game, params), message in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_params(game, params)
    with pytest.raises(ConfigError, match="numLocations must be a whole number"):
        list_tasks("twx", "train", games=["coin"], params="numLocations=abc")
    with pytest.raises(ConfigError, match="arithmetic has no parameter 'numLocations'"):
        list_tasks("twx", "train", params="numLocations=3")  # all games share the string


async def test_parameters_that_pass_the_check_generate_games() -> None:
    """Every name of the table with a valid value loads and generates a game."""
    env = TextWorldExpressEnv()
    values = {"numLocations": "3", "maxDistanceApart": "1", "gameLength": "3"}
    try:
        for game, known in _PARAMS.items():
            params = ",".join(f"{n}={values.get(n, '1')}" for n in known)
            first = await env.reset(TaskSpec("textworld_express", game, 0, "train", params))
            assert first.text and not first.text.startswith("ERROR"), (game, params)
    finally:
        await env.close()
