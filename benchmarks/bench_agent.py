"""An embedding app's episodes: one after another vs many at once through one ``Agent``.

    .venv/bin/python -m benchmarks.bench_agent [--episodes 16] [--concurrency 8]
                                               [--policy DIR --qnet DIR] [--rounds 2]

One :class:`qlass.Agent` (a local policy and a QNet in process, Q-guided ``qlass:2``) plays
the same TextWorldExpress coin episodes twice: sequentially with one env (what a naive
app loop does), and concurrently with ``--concurrency`` envs via ``asyncio.gather``. The
local policy and the QNet batch the requests of concurrent episodes into shared forward
passes, which is where the gain comes from. Rounds are interleaved (a shared machine's
load drifts) and the best round of each mode is reported, with the ratio.

Without ``--policy``, a small policy is behaviour-cloned on gold paths first (qlass's own
BC, ~15 s) and the QNet is an untrained head on it: speed does not depend on its values.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qlass import Agent, TaskSpec, configure_logging, create_env, list_tasks

PARAMS = "numLocations=3,includeDoors=0"


def build_models(base: Path) -> tuple[Path, Path]:
    """A BC policy (2 layers, width 64) and an untrained QNet on it, under ``base``."""
    from qlass.config import BCConfig
    from qlass.envs.gold import export_gold
    from qlass.qnet.model import QNet, load_tokenizer
    from qlass.runtime.bc import load_conversations, train_policy

    tasks = list_tasks("textworld_express", "train", games=["coin"], params=PARAMS, limit=10)
    expert = base / "expert.jsonl"
    asyncio.run(export_gold("textworld_express", tasks, expert))
    conversations = [[m for m in c if m["role"] != "system"] for c in load_conversations(expert)]
    config = BCConfig(layers=2, width=64, heads=2, vocab_size=512, epochs=25, lr=1e-2)
    policy = base / "policy"
    train_policy(conversations, config, output_dir=policy, system_prompt=None, max_turns=1)
    qnet = QNet.from_backbone(policy, head_dim=1024, max_length=1024)
    return policy, qnet.save_pretrained(base / "qnet", tokenizer=load_tokenizer(policy))


@dataclass
class Round:
    seconds: float
    episodes: int
    steps: int

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


async def play(agent: Agent, tasks: list[TaskSpec], concurrency: int) -> Round:
    envs = [create_env("textworld_express") for _ in range(concurrency)]
    try:
        for env in envs:  # start the simulators before the clock
            await env.reset(tasks[0])
        started = time.perf_counter()
        steps = 0
        for first in range(0, len(tasks), concurrency):
            batch = tasks[first : first + concurrency]
            done = await asyncio.gather(
                *(agent.run(env, task) for env, task in zip(envs, batch, strict=False))
            )
            steps += sum(len(t.steps) for t in done)
        return Round(time.perf_counter() - started, len(tasks), steps)
    finally:
        for env in envs:
            await env.close()


async def main_async(args: argparse.Namespace, policy: Path, qnet: Path) -> None:
    tasks = list_tasks("textworld_express", "dev", games=["coin"], params=PARAMS)
    tasks = tasks[: args.episodes]
    agent = Agent(
        str(policy),
        str(qnet),
        "qlass:2",
        system_prompt=None,
        max_turns_in_prompt=1,
        max_tokens=16,
        max_steps=args.max_steps,
        policy_options={"device": "cpu"},
        value_options={"device": "cpu"},
    )
    results: dict[str, list[Round]] = {"sequential": [], "concurrent": []}
    async with agent:
        await play(agent, tasks[:2], 1)  # warm-up: first forward passes, JIT paths
        for _ in range(args.rounds):
            results["sequential"].append(await play(agent, tasks, 1))
            results["concurrent"].append(await play(agent, tasks, args.concurrency))
    best = {mode: max(rounds, key=lambda r: r.steps_per_s) for mode, rounds in results.items()}
    base = best["sequential"].steps_per_s
    print(
        f"\n{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{args.episodes} episodes of qlass:2 (max {args.max_steps} steps), best of {args.rounds}"
    )
    print("| mode | envs | seconds | episodes/s | agent steps/s | ratio |")
    print("|---|---|---|---|---|---|")
    for mode, r in best.items():
        envs = 1 if mode == "sequential" else args.concurrency
        print(
            f"| {mode} | {envs} | {r.seconds:.2f} | {r.episodes_per_s:.2f} "
            f"| {r.steps_per_s:.1f} | {r.steps_per_s / base:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policy", type=Path, help="a local policy dir (default: train one)")
    parser.add_argument("--qnet", type=Path, help="a QNet dir (default: untrained head)")
    args = parser.parse_args()
    configure_logging(level="WARNING")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.policy is None or args.qnet is None:
            policy, qnet = build_models(Path(tmp))
        else:
            policy, qnet = args.policy, args.qnet
        asyncio.run(main_async(args, policy, qnet))


if __name__ == "__main__":
    main()
