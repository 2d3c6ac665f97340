"""Run by ``test_light_install.py`` with the Python of a venv that holds only qlass's core
install: an Agent with an API policy (LiteLLM to ``qlass serve``) and a remote QNet
(``qlass serve-qnet``), one step and one episode in a callback env. Prints JSON."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys

OPTIONAL = (
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "numpy",
    "matplotlib",
    "textworld_express",
    "scienceworld",
    "fastapi",
    "uvicorn",
)


async def main(policy_url: str, model: str, qnet_url: str) -> dict[str, object]:
    import qlass
    from qlass import Agent, History, MissingDependencyError, TaskSpec, create_env

    moves = 0

    async def act(action: str) -> str:
        nonlocal moves
        moves += 1
        return f"You did '{action}'. You are in room {moves}."

    agent = Agent(
        f"openai/{model}",
        qnet_url,
        "qlass:2",
        api_base=policy_url,
        api_key_env="OPENAI_API_KEY",
        system_prompt=None,
        max_turns_in_prompt=1,
        max_tokens=16,
        max_steps=3,
    )
    async with agent:
        decision = await agent.step(History("Find the coin.", "You are in the kitchen."))
        trajectory = await agent.run(
            act, instruction="Find the coin.", observation="You are in the kitchen."
        )
    simulator = create_env("textworld_express")  # listing and creating need no simulator
    try:
        await simulator.reset(TaskSpec("textworld_express", "coin", 0, "dev"))
        simulator_error = ""
    except MissingDependencyError as exc:
        simulator_error = str(exc)
    finally:
        await simulator.close()
    return {
        "qlass_file": qlass.__file__,
        "simulator_error": simulator_error,
        "installed": [m for m in OPTIONAL if importlib.util.find_spec(m) is not None],
        "imported": [m for m in OPTIONAL if m in sys.modules],
        "decision_values": [c.value for c in decision.candidates],
        "steps": len(trajectory.steps),
        "step_values": [s.value for s in trajectory.steps],
        "completion_tokens": trajectory.usage.completion_tokens,
        "cost_usd": trajectory.usage.cost_usd,
        "stop_reason": trajectory.stop_reason,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
