"""The public Agent with test doubles: step, run on an Env or a callback, strategies, set-up.

Real models, real HTTP and a real simulator are in ``test_api_model_e2e.py``; this module
checks the Agent's own logic on the corridor toy env, a scripted policy and a value function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from qlass import Agent, CallbackEnv, History, Observation, StepResult
from qlass.backends.scripted import ScriptedPolicy
from qlass.config import PolicyConfig, RunConfig
from qlass.errors import ConfigError, UnknownNameError, UserError
from qlass.qnet.base import ValueQuery
from qlass.runtime.resources import ValueModelRequest
from qlass.types import ChatMessage
from tests.runtime.toys import TASK, Corridor, FunctionValueModel


def _left_then_right(messages: Sequence[ChatMessage], index: int) -> str:
    """Sample 0 goes left, sample 1 goes right: only a value model finds the way."""
    return "Action: move left" if index % 2 == 0 else "Thought: onward\nAction: move right"


def _prefers_right(text: str) -> float:
    return 0.9 if "right" in text else 0.1


def _agent(strategy: str = "qlass:2", **kw: object) -> tuple[Agent, ScriptedPolicy]:
    policy = ScriptedPolicy(rule=_left_then_right)
    value = FunctionValueModel(_prefers_right)
    return Agent(policy, value, strategy, max_steps=8, **kw), policy  # type: ignore[arg-type]


async def test_step_returns_the_best_scored_candidate_and_runs_nothing() -> None:
    agent, policy = _agent()
    history = History("Reach 3.", "You are at 0 of 3.")
    async with agent:
        decision = await agent.step(history)
    assert decision.action == "move right"
    assert decision.text == "Thought: onward\nAction: move right"
    assert decision.value == pytest.approx(0.9)
    assert [(c.candidate.action, c.value) for c in decision.candidates] == [
        ("move left", pytest.approx(0.1)),
        ("move right", pytest.approx(0.9)),
    ]
    assert decision.candidate.thought == "onward"
    assert decision.strategy == "qlass:2"
    # usage = the scripted policy's word counts: prompt counted per candidate, completions
    prompt_words = sum(len(m["content"].split()) for m in policy.calls[0].messages)
    assert decision.usage.prompt_tokens == 2 * prompt_words
    assert decision.usage.completion_tokens == 3 + 5
    assert decision.as_dict()["candidates"][1]["value"] == pytest.approx(0.9)
    # the policy saw the default ReAct system prompt, then the task
    assert policy.calls[0].messages[0]["role"] == "system"
    assert "Action:" in policy.calls[0].messages[0]["content"]
    assert policy.calls[0].n == 2 and policy.calls[0].temperature == 0.7


async def test_step_is_reproducible_and_takes_an_observation() -> None:
    agent, policy = _agent("greedy", system_prompt=None)
    async with agent:
        first = await agent.step(Observation("You are at 0 of 3.", "Reach 3."))
        again = await agent.step(History("Reach 3.", "You are at 0 of 3."))
        await agent.step(History("Reach 3.", "You are at 0 of 3."), seed=123)
    assert first.action == "move left"  # greedy takes the policy's own (only) sample
    assert first.value is None and len(first.candidates) == 1
    assert policy.calls[0].seed == policy.calls[1].seed != policy.calls[2].seed == 123
    assert policy.calls[0].messages == (
        {"role": "user", "content": "Reach 3.\nObservation: You are at 0 of 3."},
    )
    assert again == first


async def test_step_refuses_episode_strategies() -> None:
    agent, _ = _agent("best_of_n:2")
    with pytest.raises(UserError, match=r"Agent\.run"):
        await agent.step(History("Reach 3.", "You are at 0 of 3."))
    await agent.aclose()


async def test_run_on_an_env_greedy_vs_qlass() -> None:
    agent, _ = _agent()
    env = Corridor(3)
    greedy = await agent.run(env, TASK, strategy="greedy")
    guided = await agent.run(env, TASK)
    assert not greedy.success and len(greedy.steps) == 8  # walked into the wall to the limit
    assert guided.success and guided.final_score == 1.0
    assert [s.candidate.action for s in guided.steps] == ["move right"] * 3
    assert all(s.value == pytest.approx(0.9) and len(s.considered) == 2 for s in guided.steps)
    assert guided.info["strategy"] == "qlass:2"
    assert guided.info["tally"]["value_queries"] == 6
    assert guided.info["tally"]["env_steps"] == 3
    assert guided.usage.completion_tokens == 3 * (3 + 5)
    assert guided.usage.cost_usd == 0.0
    assert not env.closed  # the env is the caller's


async def test_run_with_a_bare_callback() -> None:
    agent, _ = _agent()
    actions: list[str] = []

    async def step(action: str) -> str | StepResult:
        actions.append(action)
        if len(actions) == 2:
            return StepResult("You found it.", 1.0, True, 1.0, success=True)
        return f"Nothing happens after {action}."

    with pytest.raises(UserError, match="instruction"):
        await agent.run(step)
    trajectory = await agent.run(step, instruction="Find it.", observation="A room.")
    assert actions == ["move right", "move right"]
    assert trajectory.success and trajectory.final_score == 1.0
    assert trajectory.instruction == "Find it." and trajectory.initial_observation == "A room."
    assert trajectory.steps[0].result.observation == "Nothing happens after move right."
    assert trajectory.task.key == "custom/task/dev/0"


async def test_best_of_n_needs_a_reset_callback() -> None:
    agent, _ = _agent("best_of_n:2")
    position = 0

    async def step(action: str) -> StepResult:
        nonlocal position
        position += 1 if action == "move right" else -1
        done = position >= 2
        return StepResult(f"at {position}", 0.0, done, 1.0 if done else 0.0, success=done)

    async def reset() -> str:
        nonlocal position
        position = 0
        return "at 0"

    with pytest.raises(UserError, match="reset"):
        await agent.run(CallbackEnv(step, instruction="Reach 2."), "walk")
    position = 0
    env = CallbackEnv(step, instruction="Reach 2.", observation="at 0", reset=reset)
    trajectory = await agent.run(env, "walk", max_steps=4)
    assert trajectory.info["strategy"] == "best_of_n:2"
    assert len(trajectory.info["scores"]) == 2


class _YieldingCorridor(Corridor):
    """A corridor whose steps take a moment (like a simulator in a worker thread)."""

    async def step(self, action: str) -> StepResult:
        await asyncio.sleep(0.001)
        return await super().step(action)


async def test_concurrent_rollouts_share_one_env_safely() -> None:
    # Best-of-N plays its rollouts concurrently through one user env: each step must land
    # in the env positioned for its own rollout, never one reset under its feet.
    def rule(messages: Sequence[ChatMessage], index: int) -> str:
        return "Action: move right" if len(messages) % 4 else "Action: move left"

    agent = Agent(
        ScriptedPolicy(rule=rule),
        FunctionValueModel(lambda _: 0.5),
        "best_of_n:3",
        system_prompt=None,
        max_steps=6,
    )
    env = _YieldingCorridor(3)
    trajectory = await agent.run(env, TASK)
    expected = 0
    for step in trajectory.steps:
        expected = expected + 1 if step.candidate.action == "move right" else max(0, expected - 1)
        assert step.result.observation == f"You are at {expected} of 3."


async def test_value_model_required_for_scoring_strategies() -> None:
    with pytest.raises(ConfigError, match="value_model"):
        Agent(ScriptedPolicy(actions=["look"]), None, "qlass:2")
    with pytest.raises(UnknownNameError):
        Agent(ScriptedPolicy(actions=["look"]), None, "nonsense")
    agent = Agent(ScriptedPolicy(actions=["look"]), None, "greedy")
    with pytest.raises(ConfigError, match="needs a value model"):
        await agent.step(History("x", "y"), strategy="qlass:2")


async def test_strings_build_backends_and_are_closed(tiny_model_dir: Path, tmp_path: Path) -> None:
    agent = Agent(str(tiny_model_dir), "random", "qlass:2", value_options={"seed": 3})
    async with agent:
        assert type(agent.policy).__name__ == "HFPolicy"
        assert type(agent.value_model).__name__ == "RandomValueModel"
        scores = await agent.value_model.score([ValueQuery(History("a", "b"), "c")])  # type: ignore[union-attr]
        assert 0.0 <= scores[0] < 1.0
    with pytest.raises(RuntimeError, match="not open"):
        _ = agent.policy

    remote = Agent("hosted_vllm/some-model", "http://127.0.0.1:9/", api_base="http://x/v1")
    await remote.open()
    assert "LiteLLMPolicy" in repr(remote.policy) or "Policy" in type(remote.policy).__name__
    assert type(remote.value_model).__name__ == "RetryingValueModel"
    assert type(remote.value_model.inner).__name__ == "QNetClient"  # type: ignore[union-attr]
    await remote.aclose()

    with pytest.raises(ConfigError, match="QNet checkpoint directory"):
        await Agent("hosted_vllm/m", str(tmp_path / "missing")).open()
    with pytest.raises(ConfigError, match="not a local model directory"):
        await Agent("no-such-dir-or-provider", None, "greedy").open()


async def test_passed_in_objects_stay_open() -> None:
    policy = ScriptedPolicy(actions=["look"])
    value = FunctionValueModel(lambda _: 0.0)
    async with Agent(policy, value) as agent:
        assert agent.policy is policy and agent.value_model is value
    assert not policy.closed
    async with agent:  # reopening keeps using them
        decision = await agent.step(History("x", "y"))
    assert decision.action == "look"


def test_from_config_takes_policy_value_prompt_and_strategy() -> None:
    config = RunConfig.model_validate(
        {
            "seed": 7,
            "env": {"name": "textworld_express", "max_steps": 12},
            "policy": {
                "backend": "litellm",
                "model": "openai/gpt-4o",
                "max_tokens": 99,
                "prompt": "instructions",
                "max_turns_in_prompt": 4,
            },
            "search": {
                "strategies": ["greedy", "best_of_n:2", "qlass:3"],
                "value_model": "qnet-server",
                "value_model_path": "http://127.0.0.1:8765",
                "temperature": 0.5,
            },
        }
    )
    agent = Agent.from_config(config)
    assert agent.strategy.name == "qlass:3"
    assert isinstance(agent._policy_spec, PolicyConfig)
    assert agent._policy_spec.model == "openai/gpt-4o"
    assert agent._value_spec == ValueModelRequest("qnet-server", {"url": "http://127.0.0.1:8765"})
    assert agent.max_tokens == 99 and agent.max_steps == 12 and agent.seed == 7
    assert agent.temperature == 0.5 and agent.max_turns_in_prompt == 4
    assert agent.system_prompt is not None and "text-based game" in agent.system_prompt
    assert "Here is an example" not in agent.system_prompt
    local_config = RunConfig.model_validate({"name": "r", "policy": {"prompt": "none"}})
    local = Agent.from_config(local_config, strategy="greedy")
    assert local.system_prompt is None
    assert local._policy_spec.model == str(Path("runs/r/policy"))  # type: ignore[union-attr]
    assert local._value_spec == ValueModelRequest(
        "qnet", {"directory": Path("runs/r/qnet"), "max_batch": local_config.qnet.max_batch}
    )


def test_evaluation_reports_sum_the_episodes_cost() -> None:
    from qlass.runtime.evaluate import StrategyReport, summarise
    from qlass.types import Trajectory, Usage

    episodes = [
        Trajectory(TASK, "i", "o", (), 1.0, True, usage=Usage(100, 10, 0.25)),
        Trajectory(TASK, "i", "o", (), 0.0, False, usage=Usage(50, 5, 0.5)),
    ]
    report = summarise("qlass:2", "dev", episodes)
    assert report.cost_usd == pytest.approx(0.75)
    assert report.prompt_tokens == 150 and report.completion_tokens == 15
    stored_before_cost_existed = {k: v for k, v in report.as_dict().items() if k != "cost_usd"}
    assert StrategyReport(**stored_before_cost_existed).cost_usd == 0.0  # type: ignore[arg-type]


async def test_bad_policy_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="rpm"):
        await Agent("hosted_vllm/m", None, "greedy", policy_options={"rpm": -1}).open()
    with pytest.raises(ConfigError, match="no_such_field"):
        await Agent("hosted_vllm/m", None, "greedy", policy_options={"no_such_field": 1}).open()
