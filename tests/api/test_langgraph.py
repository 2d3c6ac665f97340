"""The LangGraph adapter on the corridor toy: the graph plays the same episode as Agent.run,
and an unparsable decision costs a step without reaching the env."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError

from qlass import Agent
from qlass.backends.scripted import ScriptedPolicy
from qlass.integrations.langgraph import build_graph, checkpoint_serde, qlass_node, run_graph
from qlass.runtime.episode import INVALID_OBSERVATION
from qlass.types import ChatMessage, History, Turn
from tests.runtime.toys import TASK, Corridor, FunctionValueModel


def _left_then_right(messages: Sequence[ChatMessage], index: int) -> str:
    return "Action: move left" if index % 2 == 0 else "Thought: onward\nAction: move right"


async def test_graph_plays_a_guided_episode() -> None:
    agent = Agent(
        ScriptedPolicy(rule=_left_then_right),
        FunctionValueModel(lambda text: 1.0 if "right" in text else 0.0),
        system_prompt=None,
    )
    env = Corridor(3)
    final = await run_graph(build_graph(agent, env, max_steps=10), TASK, max_steps=10)
    assert final["done"] and final["success"] and final["score"] == 1.0
    assert final["steps"] == 3
    assert final["history"].actions == ("move right",) * 3
    assert [a for _, a in env.log] == ["move right"] * 3
    assert [c.value for c in final["decision"].candidates] == [0.0, 1.0]
    # the same episode through Agent.run
    trajectory = await agent.run(Corridor(3), TASK)
    assert trajectory.history.actions == final["history"].actions


async def test_graph_stops_at_the_step_limit_and_skips_unparsable_turns() -> None:
    def rule(messages: Sequence[ChatMessage], index: int) -> str:
        return "I am not sure." if len(messages) == 1 else "Action: move left"  # 1st: invalid

    agent = Agent(ScriptedPolicy(rule=rule), None, "greedy", system_prompt=None)
    env = Corridor(3)
    final = await run_graph(build_graph(agent, env, max_steps=4), TASK, max_steps=4)
    assert final["steps"] == 4 and not final["done"]
    turns = final["history"].turns
    assert turns[0].action is None and turns[0].observation == INVALID_OBSERVATION
    assert [t.action for t in turns[1:]] == ["move left"] * 3
    assert env.steps == 3  # the unparsable turn never reached the env
    with pytest.raises(GraphRecursionError):
        await run_graph(build_graph(agent, env, max_steps=10), TASK, max_steps=2)


async def test_checkpointed_graph_keeps_qlass_state(caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(
        ScriptedPolicy(rule=_left_then_right),
        FunctionValueModel(lambda text: 1.0 if "right" in text else 0.0),
        system_prompt=None,
    )
    env = Corridor(2)
    graph = build_graph(agent, env, max_steps=5)
    saver = InMemorySaver(serde=checkpoint_serde())
    checkpointed = graph.builder.compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "episode-1"}, "recursion_limit": 20}
    with caplog.at_level(logging.WARNING):
        final = await checkpointed.ainvoke({"task": TASK}, config)
        stored = (await checkpointed.aget_state(config)).values
    assert final["success"] and final["history"].actions == ("move right",) * 2
    # msgpack brings tuples back as lists; the nodes normalise what they read
    assert stored["history"].actions == final["history"].actions
    assert stored["decision"].as_dict() == final["decision"].as_dict()
    assert stored["task"] == TASK
    assert not [r for r in caplog.records if "unregistered" in r.getMessage()]


async def test_a_restored_history_decides_like_the_original() -> None:
    texts = [f"Action: move {d} {i}" for d in ("left", "right") for i in range(20)]
    agent = Agent(ScriptedPolicy(texts), FunctionValueModel(len), "qlass:2")  # seed-picked
    history = History("Reach 3.", "at 0", (Turn("Action: move right", "move right", "at 1"),))
    restored = History(history.instruction, history.initial_observation, list(history.turns))  # type: ignore[arg-type]
    decide = qlass_node(agent)
    original = await decide({"history": history})
    again = await decide({"history": restored})
    assert again["decision"] == original["decision"]  # same seed, same candidates
