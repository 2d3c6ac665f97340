"""Guiding an "API model" with a QNet, end to end over real HTTP.

``qlass serve`` stands in for the API (an OpenAI-compatible server over a small local
policy) and ``qlass serve-qnet`` serves the QNet; the Agent reaches the first through
LiteLLM (``openai/<name>`` + ``api_base``, the path GPT-4o takes) and the second through
``QNetClient``, and plays TextWorldExpress. Checked against the servers' own counters: every
token the trajectories report was billed by the server, every score was asked of the QNet;
and the cost is LiteLLM's price for those tokens (the stand-in answers as a priced model).
"""

from __future__ import annotations

import asyncio
import re

import litellm  # imported here, not on the event loop: it reads files
import pytest

from qlass import Agent, ScoredCandidate, TaskSpec
from qlass.envs.textworld_express import TextWorldExpressEnv
from qlass.runtime.episode import INVALID_OBSERVATION
from tests.api.models import GAME, MAX_TURNS, PARAMS
from tests.examples.conftest import PRICED, Examples
from tests.examples.servers import Served


def price(prompt_tokens: int, completion_tokens: int) -> float:
    prices = litellm.model_cost[PRICED]
    return (
        prompt_tokens * prices["input_cost_per_token"]
        + completion_tokens * prices["output_cost_per_token"]
    )


async def test_agent_guides_a_served_model_over_http(
    servers: tuple[Served, Served], examples: Examples
) -> None:
    await asyncio.to_thread(examples.wait, Examples.GUIDE)  # the servers are ours alone now
    policy, qnet = servers
    before = await asyncio.to_thread(policy.get, "/stats")
    queries_before = (await asyncio.to_thread(qnet.get, "/health"))["stats"]["queries"]
    agent = Agent(
        f"openai/{policy.name}",
        qnet.url,
        "qlass:2",
        api_base=policy.url,
        api_key_env="OPENAI_API_KEY",
        system_prompt=None,
        max_turns_in_prompt=MAX_TURNS,
        max_tokens=16,
        max_steps=5,
    )
    env = TextWorldExpressEnv()
    task = TaskSpec("textworld_express", GAME, 10_001, "dev", PARAMS)
    try:
        async with agent:
            trajectory = await agent.run(env, task)
            decision = await agent.step(trajectory.history)
    finally:
        await env.close()
    after = await asyncio.to_thread(policy.get, "/stats")
    queries_after = (await asyncio.to_thread(qnet.get, "/health"))["stats"]["queries"]
    tally = trajectory.info["tally"]

    # every token reported was counted by the server, and nothing else reached it
    usage = trajectory.usage + decision.usage
    assert usage.prompt_tokens == after["prompt_tokens"] - before["prompt_tokens"]
    assert usage.completion_tokens == after["completion_tokens"] - before["completion_tokens"]
    assert after["requests"] - before["requests"] == tally["policy_calls"] + 1  # native n
    assert after["completions"] - before["completions"] == 2 * (tally["policy_calls"] + 1)
    assert trajectory.usage.cost_usd > 0
    assert trajectory.usage.cost_usd == pytest.approx(
        price(trajectory.usage.prompt_tokens, trajectory.usage.completion_tokens)
    )

    # every valid candidate was scored by the served QNet, the best one executed
    def distinct_scored(considered: tuple[ScoredCandidate, ...]) -> int:
        return len({c.candidate.text for c in considered if c.value is not None})

    scored = sum(distinct_scored(s.considered) for s in trajectory.steps)
    assert scored == tally["value_queries"] > 0  # identical texts are scored once
    assert queries_after - queries_before == scored + distinct_scored(decision.candidates)
    for step in trajectory.steps:
        values = [c.value for c in step.considered if c.value is not None]
        if values:
            assert step.value == max(values)
    # parsed actions reached the simulator, which answered
    executed = [s for s in trajectory.steps if s.candidate.action is not None]
    assert executed and trajectory.env_steps == len(executed)
    assert all(s.result.observation != INVALID_OBSERVATION for s in executed)
    assert 0 < len(trajectory.steps) <= 5


def test_guide_api_model_example(examples: Examples) -> None:
    finished = examples.wait(Examples.GUIDE)
    out, billed = finished.stdout, finished.server_delta
    episodes = re.findall(
        r"^episode +(\S+) +\S+ +score ([\d.]+) +steps +(\d+) +tokens (\d+)\+(\d+) +cost \$([\d.]+)$",
        out,
        re.MULTILINE,
    )
    assert sorted({e[0] for e in episodes}) == ["best_of_n:2", "greedy", "qlass:2"], out
    assert len(episodes) == 6  # 3 strategies x 2 tasks
    assert all(1 <= int(e[2]) <= 4 for e in episodes)
    for e in episodes:  # cost per episode, printed to 4 decimals
        assert float(e[5]) == pytest.approx(price(int(e[3]), int(e[4])), abs=5.1e-5)
    # the tokens reported per episode are exactly what the server billed
    assert sum(int(e[3]) for e in episodes) == billed["prompt_tokens"]
    assert sum(int(e[4]) for e in episodes) == billed["completion_tokens"]
    # the comparison table, one row per strategy, with tokens and cost per episode
    rows = re.findall(
        r"^\| (\S+) \| 2 \| ([\d.]+) \| (\d+)% \| (\d+)\+(\d+) \| ([\d.]+) \|$", out, re.M
    )
    assert [r[0] for r in rows] == ["greedy", "best_of_n:2", "qlass:2"], out
    assert "cost $/ep" in out
