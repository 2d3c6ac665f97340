# Embed Q-guided search in your app: your code keeps its own loop and its own world, and
# asks qlass only "what next?". Each call to agent.step(history) samples candidate actions
# from the policy, scores them with the QNet and returns the best one, with every
# candidate's score and the tokens spent; your app executes it however it likes.
#
#   qlass demo                                   # trains runs/demo/policy and runs/demo/qnet
#   python examples/embed_in_your_app.py         # uses them on a TextWorldExpress game
#   python examples/embed_in_your_app.py --policy openai/gpt-4o --qnet http://gpu:8765
#
# --fast: one game of at most 4 steps (what the test suite runs).
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from qlass import REACT_SYSTEM_PROMPT, Agent, History, TaskSpec, Turn, configure_logging, create_env


async def my_app(agent: Agent, task: TaskSpec, max_steps: int) -> None:
    world = create_env("textworld_express")  # stands for your app's own world
    try:
        first = await world.reset(task)
        history = History(first.instruction, first.text)
        print(f"task: {first.instruction}")
        success = False
        for turn in range(1, max_steps + 1):
            decision = await agent.step(history)  # qlass decides; nothing is executed
            chosen = next(
                i for i, c in enumerate(decision.candidates) if c.candidate.text == decision.text
            )
            for i, scored in enumerate(decision.candidates):
                mark = "->" if i == chosen else "  "
                value = "unscored" if scored.value is None else f"Q={scored.value:.3f}"
                print(f"  {mark} {value:<10} {scored.candidate.action or '(no action)'}")
            if decision.action is None:  # the model gave no usable action: try again
                history = history.extend(Turn(decision.text, None, "Invalid format."))
                continue
            result = await world.step(decision.action)  # your app acts
            history = history.extend(Turn(decision.text, decision.action, result.observation))
            print(
                f"turn {turn}: {decision.action!r} -> score {result.score:.2f} "
                f"({decision.usage.completion_tokens} completion tokens)"
            )
            if result.done:
                success = result.success
                break
        print(f"done: success={success} after {turn} turns")
    finally:
        await world.close()


def main() -> None:
    configure_logging(level="WARNING")  # qlass logs to stderr; stdout shows the results
    parser = argparse.ArgumentParser(description="Embed qlass in your own agent loop.")
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
        # the demo's policy was fine-tuned without a system prompt; an API model needs one
        system_prompt=None if local else REACT_SYSTEM_PROMPT,
        max_tokens=16 if local else 128,
        max_turns_in_prompt=args.max_turns,
        api_base=args.api_base,
    )
    task = TaskSpec("textworld_express", "coin", 10_003, "dev", args.params)

    async def run() -> None:
        async with agent:
            await my_app(agent, task, max_steps=4 if args.fast else 20)

    asyncio.run(run())


if __name__ == "__main__":
    main()
