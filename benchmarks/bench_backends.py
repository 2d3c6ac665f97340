"""Policy backend benchmark: micro-batching vs one request at a time on the local backend.

32 episodes run at once, each asking the policy for one turn per step (prompts of about
300-700 tokens that grow by a turn each step, ``max_tokens=24``, temperature 0.7, seeded),
against :class:`~qlass.backends.hf.HFPolicy` with a BC-sized model (Llama architecture, 4
layers, width 128, random weights: speed does not depend on what the weights say). Two
configurations, alternated over ``--rounds`` so that load from other processes hits both:

- ``batched``: ``max_batch=32`` (concurrent requests decoded together);
- ``one-at-a-time``: ``max_batch=1`` (the same requests, one generation after another).

Because every request is seeded, both produce exactly the same texts; the benchmark checks
that. Reported: requests/s and completion tokens/s per round, and the ratio batched /
one-at-a-time (median over rounds); also the process CPU time of each configuration, which
a machine shared with other work disturbs less than wall time. On a CUDA machine ``--device cuda`` runs the same on GPU.

    .venv/bin/python -m benchmarks.bench_backends
    .venv/bin/python -m benchmarks.bench_backends --episodes 32 --steps 3 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qlass.backends.hf import Generation, HFPolicy
from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer
from qlass.types import ChatMessage

SENTENCES = [
    "You are in the kitchen.",
    "In one part of the room you see a stove.",
    "There is also an oven.",
    "You also see a fridge that is closed.",
    "In another part of the room you see a counter, that has nothing on it.",
    "To the East you see the pantry.",
    "To the West you see the corridor.",
    "You see a coin on the dining table.",
    "The door to the north is open.",
    "Thought: I should explore the house to find the coin.",
    "Action: move east",
    "Action: look around",
    "Action: take coin",
]


def build_model(directory: Path, *, layers: int, width: int, heads: int) -> Path:
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(SENTENCES, k=20)) for _ in range(400)]
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    model = new_tiny_model(tokenizer, layers=layers, width=width, heads=heads, max_positions=2048)
    return save_model(model, tokenizer, directory)


def episode_prompts(
    policy: HFPolicy, episode: int, steps: int, low: int, high: int
) -> list[list[ChatMessage]]:
    """Prompts of one episode: start at a length in [low, high - 100], add a turn a step."""
    rng = random.Random(episode)
    target = rng.randint(low, max(low, high - 100))
    system: ChatMessage = {"role": "system", "content": "You play a text game. " * 5}
    task: ChatMessage = {"role": "user", "content": "Your task is to find the coin."}
    messages: list[ChatMessage] = [system, task]
    while policy.count_prompt_tokens(messages) < target:
        task["content"] += " " + rng.choice(SENTENCES)
    prompts = []
    for _ in range(steps):
        prompts.append(list(messages))
        messages.append({"role": "assistant", "content": f"Action: {rng.choice(SENTENCES)}"})
        observation = " ".join(rng.choices(SENTENCES, k=6))
        messages.append({"role": "user", "content": f"Observation: {observation}"})
    return prompts


@dataclass
class Result:
    name: str
    seconds: float
    cpu_seconds: float  # process CPU time: less sensitive than wall time to a busy machine
    requests: int  # samples (rows): a call with n samples counts n
    completion_tokens: int
    prompt_tokens: int
    mean_batch: float
    texts: list[str]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


async def run(
    policy: HFPolicy,
    name: str,
    prompts: list[list[list[ChatMessage]]],
    max_tokens: int,
    n: int = 1,
) -> Result:
    batches_before, items_before = policy.stats.batches, policy.stats.items

    async def episode(index: int, steps: list[list[ChatMessage]]) -> list[Generation]:
        out = []
        for step, messages in enumerate(steps):
            gens = await policy.generate(
                messages, n=n, temperature=0.7, max_tokens=max_tokens, seed=1000 * index + step
            )
            out.extend(gens)
        return out

    started, cpu_started = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(episode(i, p) for i, p in enumerate(prompts)))
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    gens = [g for episode_gens in results for g in episode_gens]
    batches = policy.stats.batches - batches_before
    items = policy.stats.items - items_before
    return Result(
        name,
        seconds,
        cpu_seconds,
        len(gens),
        sum(g.completion_tokens for g in gens),
        sum(g.prompt_tokens for g in gens),
        items / batches if batches else 0.0,
        [g.text for g in gens],
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "bc-sized", layers=4, width=128, heads=4)
        batched = HFPolicy(model_dir, device=args.device, max_batch=args.max_batch)
        single = HFPolicy(model_dir, device=args.device, max_batch=1)
        prompts = [
            episode_prompts(batched, e, args.steps, args.min_prompt, args.max_prompt)
            for e in range(args.episodes)
        ]
        lengths = [batched.count_prompt_tokens(p) for steps in prompts for p in steps]
        # warm-up (allocations, kernel choices for full-size batches) outside the timings
        await run(batched, "warm-up", [steps[:1] for steps in prompts], 4)
        await run(single, "warm-up", [steps[:1] for steps in prompts[:4]], 4)
        rows: list[Result] = []
        for _ in range(args.rounds):
            name = f"batched (max_batch={args.max_batch})"
            rows.append(await run(batched, name, prompts, 24, args.n))
            rows.append(await run(single, "one-at-a-time (max_batch=1)", prompts, 24, args.n))
        await batched.aclose()
        await single.aclose()

    reference = rows[0].texts
    identical = all(r.texts == reference for r in rows)
    print(
        f"\nHFPolicy, {args.episodes} concurrent episodes x {args.steps} steps, prompts "
        f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), "
        f"n={args.n} samples a call, max_tokens=24, device={args.device}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(
        f"{'round':>5}  {'configuration':<30} {'wall s':>7} {'cpu s':>7} {'req/s':>7} "
        f"{'tok/s':>8} {'rows':>6}"
    )
    for i, r in enumerate(rows):
        print(
            f"{i // 2 + 1:>5}  {r.name:<30} {r.seconds:>7.2f} {r.cpu_seconds:>7.2f} "
            f"{r.requests_per_s:>7.2f} {r.tokens_per_s:>8.1f} {r.mean_batch:>6.1f}"
        )
    ratios = [rows[i].requests_per_s / rows[i + 1].requests_per_s for i in range(0, len(rows), 2)]
    token_ratios = [rows[i].tokens_per_s / rows[i + 1].tokens_per_s for i in range(0, len(rows), 2)]
    print(
        f"\nbatched / one-at-a-time: requests/s x{statistics.median(ratios):.2f} "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}), completion tokens/s "
        f"x{statistics.median(token_ratios):.2f}"
    )
    cpu_ratios = [rows[i + 1].cpu_seconds / rows[i].cpu_seconds for i in range(0, len(rows), 2)]
    print(
        f"CPU seconds, one-at-a-time / batched: x{statistics.median(cpu_ratios):.2f} "
        f"(rounds: {', '.join(f'{r:.2f}' for r in cpu_ratios)})"
    )
    print(f"same texts in every configuration (seeded, batch-independent): {identical}")
    if not identical:
        raise SystemExit("batched and one-at-a-time generations differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="turns per episode")
    parser.add_argument("--n", type=int, default=1, help="samples per call (QLASS: 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--min-prompt", type=int, default=300)
    parser.add_argument("--max-prompt", type=int, default=700)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
