"""Prompts: every family has one; the simulator-backed examples are real gold episodes."""

from __future__ import annotations

import pytest

from qlass.envs.base import Env
from qlass.envs.prompts import EXAMPLE_EPISODES, prompt_for
from qlass.envs.registry import create_env, env_names, env_prompt, gold_actions
from qlass.errors import UnknownNameError
from qlass.parsing import parse_output
from qlass.types import TaskSpec


def _task_of(key: str) -> TaskSpec:
    env, rest = key.split("/", 1)
    name_params, split, variation = rest.rsplit("/", 2)
    name, _, params = name_params.partition("[")
    return TaskSpec(env, name, int(variation), split, params.rstrip("]"))  # type: ignore[arg-type]


async def replay_example(env: Env, family: str) -> None:
    """Check that ``family``'s example episode is a real gold episode of its simulator."""
    example = EXAMPLE_EPISODES[family]
    task = _task_of(example.task_key)
    assert task.key == example.task_key
    gold = await gold_actions(env, task)
    if family == "scienceworld":  # deterministic; TWX's gold agent explores at random
        assert example.actions == gold[: len(example.actions)]
    first = await env.reset(task)
    assert (first.instruction, first.text) == (example.instruction, example.observation)
    for _thought, action, observation in example.turns:
        result = await env.step(action)
        assert result.observation == observation
    assert result.done and result.score == 1.0


async def test_textworld_express_example_is_a_gold_episode() -> None:
    env = create_env("textworld_express")
    try:
        await replay_example(env, "textworld_express")
    finally:
        await env.close()


@pytest.mark.parametrize("name", env_names())
def test_every_env_has_a_prompt_whose_example_parses(name: str) -> None:
    prompt = env_prompt(name)
    assert "Action:" in prompt.system and "Thought:" in prompt.system
    rendered = prompt.render()
    assert rendered.startswith(prompt.system) and "Here is an example." in rendered
    assert prompt.render(with_example=False) == prompt.system
    example = EXAMPLE_EPISODES[name]
    turns = [block for block in prompt.example.split("\nObservation: ") if "Action:" in block]
    assert [parse_output(t).action for t in turns] == list(example.actions)
    assert example.instruction in prompt.example


def test_aliases_and_unknown_names() -> None:
    assert env_prompt("twx") == prompt_for("textworld_express")
    with pytest.raises(UnknownNameError, match="textworld_express"):
        env_prompt("minecraft")
