"""LangGraph: the Q-guided step as a graph node.

``qlass_node(agent)`` is an async LangGraph node: it reads the episode so far from the
state, asks :meth:`qlass.agent.Agent.step` for the next action (policy candidates scored by
the value model) and writes the decision back. Put it in your own graph beside your own
nodes, or take the whole loop from :func:`build_graph`::

    reset -> decide (qlass) -> act (your env) -> decide -> ... -> END

Example:
    ```python
    from qlass import Agent
    from qlass.integrations.langgraph import build_graph, run_graph

    async with Agent("openai/gpt-4o", "http://gpu-box:8765", "qlass:2") as agent:
        final = await run_graph(build_graph(agent, env), task, max_steps=20)
        print(final["score"], final["decision"].candidates)
    ```

Needs ``pip install 'qlass[langgraph]'``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, cast

from qlass.agent import Agent, StepDecision
from qlass.envs.base import Env
from qlass.errors import MissingDependencyError
from qlass.parsing import INVALID_OBSERVATION
from qlass.types import Candidate, History, ScoredCandidate, TaskSpec, Turn, Usage

try:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.graph import END, START, StateGraph
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("langgraph", "langgraph", "the LangGraph adapter") from exc

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

__all__ = [
    "STATE_TYPES",
    "Node",
    "QlassState",
    "build_graph",
    "checkpoint_serde",
    "env_node",
    "qlass_node",
    "reset_node",
    "run_graph",
]


class QlassState(TypedDict, total=False):
    """The graph state the nodes of this module read and write.

    Attributes:
        task: the task to play (read by :func:`reset_node`).
        history: the episode so far; :func:`qlass_node` decides from it.
        decision: the last :class:`~qlass.agent.StepDecision` (action, scored candidates,
            usage).
        action: the action chosen last (``None``: no parsable action).
        score: the environment's score so far, in [0, 1].
        done: whether the episode ended.
        success: the environment's success flag.
        steps: steps taken.
    """

    task: TaskSpec
    history: History
    decision: StepDecision
    action: str | None
    score: float
    done: bool
    success: bool
    steps: int


Node = Callable[[QlassState], Awaitable[dict[str, Any]]]
"""An async LangGraph node over :class:`QlassState`: reads the state, returns an update."""


STATE_TYPES: tuple[type, ...] = (
    TaskSpec,
    History,
    Turn,
    StepDecision,
    ScoredCandidate,
    Candidate,
    Usage,
)
"""The qlass types a :class:`QlassState` holds (what a checkpointer must deserialize)."""


def checkpoint_serde() -> JsonPlusSerializer:
    """A checkpoint serializer that allows the qlass types of the state.

    LangGraph refuses (or, for now, warns about) unregistered types in checkpoints; use it as
    ``graph.compile(checkpointer=InMemorySaver(serde=checkpoint_serde()))`` (any saver).
    """
    return JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)


def _history(value: Any) -> Any:
    """A History restored from a checkpoint has its turns as a list: make it a tuple again
    (the agent derives its sampling seed from the history, so the type must not change)."""
    if isinstance(value, History) and not isinstance(value.turns, tuple):
        return History(value.instruction, value.initial_observation, tuple(value.turns))
    return value


def qlass_node(agent: Agent, *, history_key: str = "history") -> Node:
    """A node that chooses the next action with ``agent.step(state[history_key])``.

    It writes ``decision`` (the :class:`~qlass.agent.StepDecision`) and ``action``.
    """

    async def decide(state: QlassState) -> dict[str, Any]:
        decision = await agent.step(_history(cast(Mapping[str, Any], state)[history_key]))
        return {"decision": decision, "action": decision.action}

    return decide


def reset_node(env: Env) -> Node:
    """A node that resets ``env`` to ``state["task"]`` and starts ``history``."""

    async def reset(state: QlassState) -> dict[str, Any]:
        first = await env.reset(state["task"])
        history = History(first.instruction, first.text)
        return {"history": history, "score": 0.0, "done": False, "success": False, "steps": 0}

    return reset


def env_node(env: Env) -> Node:
    """A node that executes ``state["action"]`` in ``env`` and extends ``history``.

    A decision without a parsable action costs a step and sends nothing to the env (the
    model is told its format was invalid), as in qlass's own episode loop.
    """

    async def act(state: QlassState) -> dict[str, Any]:
        decision = state["decision"]
        history: History = _history(state["history"])
        update: dict[str, Any] = {"steps": state.get("steps", 0) + 1}
        if decision.action is None:
            turn = Turn(decision.text, None, INVALID_OBSERVATION)
        else:
            result = await env.step(decision.action)
            turn = Turn(decision.text, decision.action, result.observation)
            update.update(score=result.score, done=result.done, success=result.success)
        return {**update, "history": history.extend(turn)}

    return act


def build_graph(agent: Agent, env: Env, *, max_steps: int | None = None) -> CompiledStateGraph:
    """The whole episode as a compiled graph: reset, then decide and act until done.

    The loop also ends after ``max_steps`` steps (default: the agent's). Invoke it with
    :func:`run_graph`, or ``graph.ainvoke({"task": task}, {"recursion_limit": ...})``.
    """
    limit = max_steps or agent.max_steps

    def route(state: QlassState) -> str:
        return END if state.get("done") or state.get("steps", 0) >= limit else "decide"

    graph = StateGraph(QlassState)
    # Any: LangGraph's node overloads do not accept a TypedDict state under mypy.
    nodes: dict[str, Any] = {
        "reset": reset_node(env),
        "decide": qlass_node(agent),
        "act": env_node(env),
    }
    for name, node in nodes.items():
        graph.add_node(name, node)
    graph.add_edge(START, "reset")
    graph.add_edge("reset", "decide")
    graph.add_edge("decide", "act")
    graph.add_conditional_edges("act", route, ["decide", END])
    return graph.compile()


async def run_graph(
    graph: CompiledStateGraph, task: TaskSpec, *, max_steps: int = 30
) -> dict[str, Any]:
    """Run a graph from :func:`build_graph` on ``task`` and return its final state.

    LangGraph counts every node run against its recursion limit; this sets the limit high
    enough for ``max_steps`` decide/act rounds.
    """
    state: dict[str, Any] = await graph.ainvoke(
        {"task": task}, {"recursion_limit": 2 * max_steps + 4}
    )
    return state
