"""qlass's deterministic expert: the search on a toy graph, and on the real TextWorldExpress
games whose own gold agent is random (coin, twc)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from qlass.envs.expert import SearchState, search_expert_path
from qlass.envs.gold import export_gold, replay_gold
from qlass.envs.registry import expert_actions, list_tasks
from qlass.envs.textworld_express import RANDOM_GOLD_GAMES, TextWorldExpressEnv
from qlass.errors import NoExpertPathError
from qlass.types import TaskSpec

# room -> {action: next room}; "gem" in room d raises the score, "door" in e wins.
MAZE: Mapping[str, Mapping[str, str]] = {
    "a": {"east": "b", "south": "c", "look": "a"},
    "b": {"west": "a", "south": "d", "look": "b"},
    "c": {"north": "a", "east": "d", "look": "c"},
    "d": {"north": "b", "west": "c", "look": "d", "east": "e"},
    "e": {"west": "d", "look": "e"},
}


class Maze:
    """A deterministic toy simulator: a room maze with a gem to take and a door to open."""

    def __init__(self, *, gems: bool = True) -> None:
        self.gems = gems
        self.room, self.gem, self.restarts, self.steps = "a", False, 0, 0

    def _state(self, won: bool = False) -> SearchState:
        actions = list(MAZE[self.room])
        if self.room == "d" and self.gems and not self.gem:
            actions.append("take gem")
        if self.room == "e" and (self.gem or not self.gems):
            actions.append("open door")
        score = 1.0 if won else 0.5 if self.gem else 0.0
        return SearchState((self.room, self.gem), tuple(actions), score, success=won)

    def restart(self) -> SearchState:
        self.restarts += 1
        self.room, self.gem = "a", False
        return self._state()

    def act(self, action: str) -> SearchState:
        self.steps += 1
        if action == "take gem":
            self.gem = True
        elif action == "open door":
            return self._state(won=True)
        else:
            self.room = MAZE[self.room][action]
        return self._state()


def test_search_finds_the_shortest_path_through_each_gain_with_ties_in_sorted_order() -> None:
    maze = Maze()
    path = search_expert_path(maze)
    # b-d and c-d both take two moves; "east" sorts before "south", so via b.
    assert path == ["east", "south", "take gem", "east", "open door"]
    assert search_expert_path(Maze()) == path  # the same on every call
    # "look" changes nothing: it is tried without a replay, so restarts stay below steps.
    assert maze.restarts < maze.steps


def test_search_without_a_gain_to_find_or_within_its_bound_says_why() -> None:
    class Sealed(Maze):
        def _state(self, won: bool = False) -> SearchState:
            state = super()._state(won)
            return SearchState(state.key, tuple(a for a in state.actions if a != "take gem"), 0)

    with pytest.raises(NoExpertPathError, match=r"no action sequence raises the score above 0"):
        search_expert_path(Sealed())
    with pytest.raises(NoExpertPathError, match="within 5 simulator calls"):
        search_expert_path(Maze(), max_calls=5)


COIN = "numLocations=5,includeDoors=0"


async def test_coin_and_twc_get_the_same_winning_path_from_fresh_simulators() -> None:
    tasks = list_tasks("textworld_express", "train", games=["coin"], params=COIN, limit=6)
    tasks += list_tasks(
        "textworld_express", "train", games=["twc"], params="numLocations=2", limit=1
    )
    assert {t.name for t in tasks} == RANDOM_GOLD_GAMES
    paths: list[list[list[str]]] = []
    for _ in range(2):
        env = TextWorldExpressEnv()
        try:
            paths.append([await expert_actions(env, task) for task in tasks])
            for task, path in zip(tasks, paths[-1], strict=True):
                trajectory = await replay_gold(env, task)
                assert trajectory.actions == tuple(path) and trajectory.success, task.key
                gold = await env.gold_actions(task)  # the simulator's random walk
                assert len(path) <= len(gold), task.key
        finally:
            await env.close()
    assert paths[0] == paths[1]


async def test_games_with_a_deterministic_gold_agent_keep_the_simulators_path() -> None:
    task = TaskSpec("textworld_express", "sorting", 3, "train")
    env = TextWorldExpressEnv()
    try:
        assert await expert_actions(env, task) == await env.gold_actions(task)
        assert env.search_calls == 0
    finally:
        await env.close()


async def test_two_gold_exports_of_coin_write_the_same_file(tmp_path: Path) -> None:
    tasks = list_tasks("textworld_express", "train", games=["coin"], params=COIN, limit=12)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    reports = await asyncio.gather(
        export_gold("textworld_express", tasks, first, workers=2, tries=5),
        export_gold("textworld_express", tasks, second, workers=1),
    )
    assert [r.written for r in reports] == [12, 12]
    # The searches' simulator calls are counted too, the same in both.
    assert reports[0].env_steps == reports[1].env_steps > reports[0].steps
    assert first.read_bytes() == second.read_bytes()


async def test_a_task_without_an_expert_path_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = TextWorldExpressEnv.expert_actions

    async def tiny_budget(self: TextWorldExpressEnv, task: TaskSpec, **_: object) -> list[str]:
        return await original(self, task, max_calls=3)

    monkeypatch.setattr(TextWorldExpressEnv, "expert_actions", tiny_budget)
    task = TaskSpec("textworld_express", "twc", 0, "train")
    report = await export_gold("textworld_express", [task], tmp_path / "x.jsonl")
    assert report.written == 0
    assert report.skipped == (
        (task.key, "expert search found no winning path within 3 simulator calls"),
    )


def test_the_expert_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/bench_expert`` (so it cannot rot): its paths win and repeat."""
    from benchmarks.bench_expert import main

    main(["--games", "3", "--settings", "coin:numLocations=3,includeDoors=0"])
    out = capsys.readouterr().out
    assert "coin [numLocations=3,includeDoors=0], 3 train games" in out
    assert "the same path on a fresh simulator for every game" in out
