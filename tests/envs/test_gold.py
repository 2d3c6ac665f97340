"""Expert-trajectory export: real gold paths, the JSONL format BC reads, skips reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import ClassVar

from qlass.chat import OBSERVATION_PREFIX
from qlass.envs.gold import export_gold, replay_gold
from qlass.envs.registry import create_env, env_prompt, list_tasks
from qlass.parsing import parse_output
from qlass.types import Observation, StepResult, TaskSpec


async def test_export_writes_bc_conversations_that_replay_to_full_score(tmp_path: Path) -> None:
    tasks = await asyncio.to_thread(
        list_tasks, "textworld_express", "train", games=["coin", "arithmetic"], params="", limit=4
    )
    seen: list[tuple[str, bool]] = []
    out = tmp_path / "gold" / "twx.jsonl"
    report = await export_gold(
        "textworld_express", tasks, out, workers=2, on_task=lambda t, ok: seen.append((t.key, ok))
    )
    assert (report.written, report.skipped, report.total) == (4, (), 4)
    assert sorted(seen) == sorted((t.key, True) for t in tasks)
    lines = (await asyncio.to_thread(out.read_text)).splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["task"]["key"] for r in records] == [t.key for t in tasks]  # task order kept
    system = env_prompt("textworld_express").render(with_example=False)
    env = create_env("textworld_express")
    for record, task in zip(records, tasks, strict=True):
        messages = record["messages"]
        assert messages[0] == {"role": "system", "content": system}
        assert messages[1]["role"] == "user" and f"\n{OBSERVATION_PREFIX}" in messages[1]["content"]
        roles = [m["role"] for m in messages[2:]]
        assert roles == ["assistant", "user"] * (record["steps"] - 1) + ["assistant"]
        actions = [parse_output(m["content"]).action for m in messages if m["role"] == "assistant"]
        assert (
            len(actions) == record["steps"] and record["final_score"] == 1.0 and record["success"]
        )
        assert record["task"] == {
            "env": task.env,
            "name": task.name,
            "variation": task.variation,
            "split": task.split,
            "params": task.params,
            "key": task.key,
        }
        # The conversation replays in the simulator to a win with the same observations.
        first = await env.reset(task)
        assert messages[1]["content"].endswith(first.text)
        observations = [m["content"] for m in messages[3::2]]
        for action, observation in zip(actions, [*observations, None], strict=True):
            result = await env.step(action)
            if observation is not None:
                assert OBSERVATION_PREFIX + result.observation == observation
        assert result.done and result.score == 1.0
    await env.close()


async def test_paths_short_of_full_score_are_skipped_and_named(tmp_path: Path) -> None:
    tasks = [TaskSpec("textworld_express", "arithmetic", 0, "train")]
    report = await export_gold("textworld_express", tasks, tmp_path / "x.jsonl", max_steps=2)
    assert report.written == 0
    assert report.skipped == ((tasks[0].key, "gold path ends at score 0.00"),)
    assert (await asyncio.to_thread((tmp_path / "x.jsonl").read_text)) == ""


class ShiftingGold:
    """A fake simulator whose gold agent proposes a different path on each call."""

    PATHS: ClassVar[list[list[str]]] = [["a", "b", "c", "win"], ["lose"], ["x", "win"]]

    def __init__(self) -> None:
        self.calls = 0

    async def gold_actions(self, task: TaskSpec) -> list[str]:
        self.calls += 1
        return self.PATHS[(self.calls - 1) % len(self.PATHS)]

    async def reset(self, task: TaskSpec) -> Observation:
        return Observation(text="start", instruction="win")

    async def step(self, action: str) -> StepResult:
        score = 1.0 if action == "win" else 0.0
        return StepResult(action, score, action in {"win", "lose"}, score, score == 1.0)

    async def close(self) -> None:
        pass


async def test_more_tries_keep_the_shortest_winning_gold_path() -> None:
    task = TaskSpec("fake", "shifting", 0, "train")
    assert (await replay_gold(ShiftingGold(), task)).actions == ("a", "b", "c", "win")
    best = await replay_gold(ShiftingGold(), task, tries=3)
    assert best.actions == ("x", "win") and best.final_score == 1.0
    assert best.observations == ("x", "win")
