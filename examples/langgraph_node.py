# Q-guided steps inside a LangGraph graph: qlass_node(agent) is an ordinary async node that
# reads the episode from the graph state, samples candidate actions, scores them with the
# QNet and writes the chosen one back. Here it sits between your own nodes: a reset node, a
# node of yours that looks at each decision (log, guardrail, human approval...) and the
# node that acts in the environment.
#
#   pip install 'qlass[langgraph]'
#   qlass demo                                   # trains runs/demo/policy and runs/demo/qnet
#   python examples/langgraph_node.py
#   python examples/langgraph_node.py --policy openai/gpt-4o --qnet http://gpu:8765
#
# --fast: one game of at most 4 steps (what the test suite runs).
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph

from qlass import REACT_SYSTEM_PROMPT, Agent, TaskSpec, configure_logging, create_env
from qlass.integrations.langgraph import QlassState, env_node, qlass_node, reset_node


async def review(state: QlassState) -> dict[str, Any]:
    """Your own node: sees every decision before it is executed (here it only prints)."""
    decision = state["decision"]
    values = ", ".join(
        f"{c.candidate.action}={c.value:.3f}" for c in decision.candidates if c.value is not None
    )
    print(f"step {state.get('steps', 0) + 1}: {decision.action!r} from [{values}]")
    return {}


async def play(agent: Agent, task: TaskSpec, max_steps: int) -> None:
    env = create_env("textworld_express")
    graph = StateGraph(QlassState)
    graph.add_node("reset", reset_node(env))
    graph.add_node("decide", qlass_node(agent))  # the Q-guided step
    graph.add_node("review", review)
    graph.add_node("act", env_node(env))
    graph.add_edge(START, "reset")
    graph.add_edge("reset", "decide")
    graph.add_edge("decide", "review")
    graph.add_edge("review", "act")
    graph.add_conditional_edges(
        "act",
        lambda s: END if s.get("done") or s.get("steps", 0) >= max_steps else "decide",
        ["decide", END],
    )
    try:
        final = await graph.compile().ainvoke(
            {"task": task}, {"recursion_limit": 4 * max_steps + 4}
        )
    finally:
        await env.close()
    print(f"final: score {final['score']:.2f} success {final['success']} steps {final['steps']}")


def main() -> None:
    configure_logging(level="WARNING")  # qlass logs to stderr; stdout shows the results
    parser = argparse.ArgumentParser(description="A QNet-guided LangGraph node.")
    parser.add_argument("--policy", default="runs/demo/policy", help="model dir or LiteLLM id")
    parser.add_argument("--qnet", default="runs/demo/qnet", help="QNet dir or serve-qnet URL")
    parser.add_argument("--api-base", help="OpenAI-compatible base URL for the policy")
    parser.add_argument("--max-turns", type=int, default=3, help="turns kept in the prompt")
    parser.add_argument("--params", default="numLocations=5,includeDoors=0")
    parser.add_argument("--fast", action="store_true", help="one short game (tests)")
    args = parser.parse_args()
    local = Path(args.policy).is_dir()
    if args.policy.startswith("runs/") and not local:
        parser.error(f"no model at {args.policy}: run `qlass demo` first, or pass --policy")
    agent = Agent(
        args.policy,
        args.qnet,
        "qlass:2",
        system_prompt=None if local else REACT_SYSTEM_PROMPT,
        max_tokens=16 if local else 128,
        max_turns_in_prompt=args.max_turns,
        api_base=args.api_base,
    )
    task = TaskSpec("textworld_express", "coin", 10_000, "dev", args.params)

    async def run() -> None:
        async with agent:
            await play(agent, task, max_steps=4 if args.fast else 20)

    asyncio.run(run())


if __name__ == "__main__":
    main()
