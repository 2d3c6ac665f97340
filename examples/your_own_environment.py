# Use your own environment: any class with async reset(task) / step(action) / close() is a
# qlass Env, so agent.run() plays it with greedy, Q-guided (QLASS), best-of-N or beam
# search. A bare `async def step(action) -> str` callback works too (shown at the end).
#
#   qlass demo                                   # trains runs/demo/policy and runs/demo/qnet
#   python examples/your_own_environment.py      # greedy vs QLASS on the little house below
#     (the demo's tiny policy knows only TextWorldExpress and rarely solves this house;
#     an API model gets the house's actions in its system prompt)
#   python examples/your_own_environment.py --policy openai/gpt-4o --qnet http://gpu:8765
#
# --fast: 2 tasks of at most 3 steps (what the test suite runs).
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from pathlib import Path

from qlass import REACT_SYSTEM_PROMPT, Agent, Observation, StepResult, TaskSpec, configure_logging

ACTIONS = "Actions: look around, move east, move west, take coin."
ROOMS = ("kitchen", "corridor", "pantry", "living room")
FURNITURE = ("a stove", "a key holder", "a folding chair", "a sofa")


class CoinHouse:
    """Rooms on a line from west to east, a coin in one of them (chosen by the variation).

    Worded like TextWorldExpress, the game the demo's small policy was trained on.
    """

    def __init__(self) -> None:
        self.at, self.coin = 0, 1

    async def reset(self, task: TaskSpec) -> Observation:
        self.at = 0
        self.coin = random.Random(task.variation).randrange(1, len(ROOMS))
        instruction = (
            "Your task is to search the environment and find the coin.  "
            "Once you find the coin, take it."
        )
        return Observation(self._look(), instruction)

    def _look(self) -> str:
        text = f"You are in the {ROOMS[self.at]}. In one part of the room you see {FURNITURE[self.at]}. "
        if self.at == self.coin:
            text += "There is also a coin. "
        text += "\n"
        if self.at > 0:
            text += f"To the West you see the {ROOMS[self.at - 1]}. "
        if self.at < len(ROOMS) - 1:
            text += f"To the East you see the {ROOMS[self.at + 1]}. "
        return text.strip()

    async def step(self, action: str) -> StepResult:
        if action == "take coin" and self.at == self.coin:
            return StepResult("You take the coin. You win!", 1.0, True, 1.0, success=True)
        if action in ("move east", "move west"):
            moved = self.at + (1 if action == "move east" else -1)
            if 0 <= moved < len(ROOMS):
                self.at = moved
                return StepResult(self._look(), 0.0, False, 0.0)
        if action == "look around":
            return StepResult(self._look(), 0.0, False, 0.0)
        return StepResult("That is not possible here.", 0.0, False, 0.0)

    async def close(self) -> None:
        pass


async def compare(agent: Agent, tasks: list[TaskSpec], max_steps: int) -> None:
    house = CoinHouse()
    for strategy in ("greedy", "qlass:2"):
        episodes = [
            await agent.run(house, task, strategy=strategy, max_steps=max_steps) for task in tasks
        ]
        score = statistics.fmean(t.final_score for t in episodes)
        wins = sum(t.success for t in episodes)
        tokens = sum(t.usage.total_tokens for t in episodes)
        print(
            f"{strategy:<8} avg score {score:.2f}  success {wins}/{len(episodes)}  "
            f"tokens {tokens}  actions {[s.candidate.action for s in episodes[0].steps]}"
        )

    # The same world behind a bare callback: qlass needs only the task text and a step.
    first = await house.reset(tasks[0])
    trajectory = await agent.run(
        house.step, instruction=first.instruction, observation=first.text, max_steps=max_steps
    )
    print(f"callback  score {trajectory.final_score:.2f}  steps {len(trajectory.steps)}")


def main() -> None:
    configure_logging(level="WARNING")  # qlass logs to stderr; stdout shows the results
    parser = argparse.ArgumentParser(description="Run qlass on your own environment.")
    parser.add_argument("--policy", default="runs/demo/policy", help="model dir or LiteLLM id")
    parser.add_argument("--qnet", default="runs/demo/qnet", help="QNet dir or serve-qnet URL")
    parser.add_argument("--api-base", help="OpenAI-compatible base URL for the policy")
    parser.add_argument("--max-turns", type=int, default=3, help="turns kept in the prompt")
    parser.add_argument("--fast", action="store_true", help="2 short tasks (tests)")
    args = parser.parse_args()
    local = Path(args.policy).is_dir()
    if args.policy.startswith("runs/") and not local:
        parser.error(f"no model at {args.policy}: run `qlass demo` first, or pass --policy")
    agent = Agent(
        args.policy,
        args.qnet,
        # a system prompt for your world: the format, and the actions it understands
        system_prompt=None if local else REACT_SYSTEM_PROMPT + "\n" + ACTIONS,
        max_tokens=16 if local else 128,
        max_turns_in_prompt=args.max_turns,
        api_base=args.api_base,
    )
    tasks = [TaskSpec("coin-house", "find-coin", v, "dev") for v in range(2 if args.fast else 10)]

    async def run() -> None:
        async with agent:
            await compare(agent, tasks, max_steps=3 if args.fast else 12)

    asyncio.run(run())


if __name__ == "__main__":
    main()
