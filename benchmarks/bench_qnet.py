"""QNet scoring throughput: the batched scorer against the reference style, in one run.

    .venv/bin/python -m benchmarks.bench_qnet [--device auto|cpu|cuda] [--queries 64]

Reference style (the authors' released code): one candidate per forward pass, padded to
``max_length`` = 4096 tokens. Two variants are timed: as the authors ran it (the padding
mask handed to the backbone, so transformers builds a full attention mask) and, as the
baseline the ratios use, the conservative one through the QNet's own forward (right
padding needs no mask, so the fused causal attention path runs). qlass: 64 queries
arriving concurrently (32 episodes x 2 candidates) are micro-batched, bucketed by length
and padded to the longest of each bucket, under ``torch.inference_mode``. The "no padding"
row (one candidate per pass) separates the gain of dynamic padding from the gain of
batching. The cache is off, so every candidate is really computed. Methods are measured in
interleaved rounds (a shared machine's load drifts); best and median rates are reported.

Model: a BC-sized Llama (4 layers, width 128, 4 heads; random weights: speed does not
depend on them) with the paper's value head (1024). Histories are ReAct-style text-game
episodes of 1 to 12 turns (about 100 to 800 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from qlass._log import configure_logging
from qlass._torch import resolve_device
from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer
from qlass.qnet.base import ValueQuery
from qlass.qnet.encoding import encode_texts, render
from qlass.qnet.model import QNet
from qlass.qnet.scorer import QNetScorer
from qlass.types import History, Turn

ROOMS = ["kitchen", "pantry", "hallway", "living room", "bedroom", "bathroom", "backyard"]
THINGS = ["a fridge", "a stove", "a sofa", "a coin", "a key", "a table", "a drawer"]
DIRECTIONS = ["north", "south", "east", "west"]


def _observation(rng: random.Random) -> str:
    room = rng.choice(ROOMS)
    things = ", ".join(rng.sample(THINGS, 3))
    exits = " and ".join(rng.sample(DIRECTIONS, 2))
    return (
        f"You are in the {room}. In one part of the room you see {things}. "
        f"There is an open door to the {exits}."
    )


def _turn(rng: random.Random) -> Turn:
    direction = rng.choice(DIRECTIONS)
    text = (
        f"Thought: the coin is not here, so I should keep exploring towards the {direction}.\n"
        f"Action: move {direction}"
    )
    return Turn(text, f"move {direction}", _observation(rng))


def make_queries(count: int, seed: int) -> list[ValueQuery]:
    """``count`` queries with histories of 1 to 12 turns."""
    rng = random.Random(seed)
    queries = []
    for _ in range(count):
        history = History(
            "Your task is to find a coin. Explore the house and take the coin when you see it.",
            _observation(rng),
            tuple(_turn(rng) for _ in range(rng.randint(1, 12))),
        )
        queries.append(ValueQuery(history, _turn(rng).text))
    return queries


# Backbone shapes (Llama architecture, random weights) and value-head widths.
MODELS = {
    # The BC policy `qlass demo` trains and its QNet (qlass/configs/demo.toml: 4 layers,
    # width 128, 4 heads, head 256); the reference comparison uses the paper's head, 1024.
    "demo": {"layers": 4, "width": 128, "heads": 4, "head_dim": 256},
    # Real small language models' shapes, with the paper's head: Pythia-70M (6 layers,
    # width 512, 8 heads; 19 M parameters besides the embeddings) and GPT-2 small (12
    # layers, width 768, 12 heads; 85 M; slow on a 2-core CPU).
    "pythia-70m": {"layers": 6, "width": 512, "heads": 8, "head_dim": 1024},
    "gpt2-small": {"layers": 12, "width": 768, "heads": 12, "head_dim": 1024},
}


def build_checkpoint(
    directory: Path,
    max_length: int,
    seed: int,
    *,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
    head_dim: int = 1024,
) -> Path:
    corpus = [q.candidate_text for q in make_queries(200, seed + 1)] + [
        _observation(random.Random(i)) for i in range(200)
    ]
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    model = new_tiny_model(
        tokenizer, layers=layers, width=width, heads=heads, max_positions=max_length, seed=seed
    )
    save_model(model, tokenizer, directory / "policy")
    qnet = QNet.from_backbone(directory / "policy", head_dim=head_dim, max_length=max_length)
    return qnet.save_pretrained(directory / "qnet", tokenizer=tokenizer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_round(
    scorer: QNetScorer, ids: list[list[int]], pad_to: int | None, *, mask_to_backbone: bool = False
) -> float:
    """Candidates/s scoring one per forward pass, padded to ``pad_to`` (None: no padding).

    ``mask_to_backbone`` hands the padding mask to the backbone as the authors' code did
    (transformers then builds a full attention mask); without it the QNet's own forward
    runs, which skips the mask for right padding and so is faster.
    """
    qnet, device = scorer.qnet, scorer.device

    def one(seq: list[int]) -> None:
        width = pad_to or len(seq)
        input_ids = torch.full((1, width), scorer._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((1, width), dtype=torch.long, device=device)
        input_ids[0, : len(seq)] = torch.tensor(seq, device=device)
        mask[0, : len(seq)] = 1
        with torch.inference_mode():
            if mask_to_backbone:
                hidden = qnet.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
                out = qnet.head(hidden[:, len(seq) - 1].float())
            else:
                value = qnet(input_ids, mask).value
                assert value is not None
                out = value
        out.tolist()  # waits for the device, as a caller reading the score would

    _sync(device)
    started = time.perf_counter()
    for seq in ids:
        one(seq)
    _sync(device)
    return len(ids) / (time.perf_counter() - started)


async def batched_round(scorer: QNetScorer, queries: list[ValueQuery]) -> float:
    """Candidates/s with every query arriving in a concurrent 2-candidate ``score`` call."""
    pairs = [queries[i : i + 2] for i in range(0, len(queries), 2)]
    _sync(scorer.device)
    started = time.perf_counter()
    await asyncio.gather(*(scorer.score(pair) for pair in pairs))
    _sync(scorer.device)
    return len(queries) / (time.perf_counter() - started)


def state_of_length(tokenizer: Any, tokens: int, rng: random.Random) -> History:
    """A coin-game history whose rendering is about ``tokens`` tokens (at most one turn more)."""
    history = History(
        "Your task is to find a coin. Explore the house and take the coin when you see it.",
        _observation(rng),
    )
    while len(encode_texts(tokenizer, [render(tokenizer, history, "")], 10**9)[0]) < tokens:
        history = history.extend(_turn(rng))
    return history


def step_candidates(rng: random.Random, count: int) -> list[str]:
    """``count`` candidate turns of different lengths (about 8 to 40 tokens)."""
    shapes = [
        lambda d: f"Action: move {d}",
        lambda d: f"Thought: I should go {d}.\nAction: move {d}",
        lambda d: (
            f"Thought: the coin is not in this room and the {d} door is open, so the "
            f"next room to search is there.\nAction: move {d}"
        ),
        lambda d: "Thought: I see the coin.\nAction: take coin",
    ]
    return [shapes[i % len(shapes)](rng.choice(DIRECTIONS)) for i in range(count)]


async def steps_round(scorer: QNetScorer, steps: list[list[ValueQuery]]) -> float:
    """Candidates/s with each step's candidates asked in one concurrent ``score`` call."""
    started = time.perf_counter()
    await asyncio.gather(*(scorer.score(step) for step in steps))
    _sync(scorer.device)
    return sum(len(step) for step in steps) / (time.perf_counter() - started)


def shared_prefix_comparison(args: argparse.Namespace) -> None:
    """Shared-prefix vs plain batched scoring, per model and history length, one run."""
    lengths = [int(x) for x in args.history_tokens.split(",")]
    rows = []
    for model in args.models.split(","):
        shape = MODELS[model]
        with tempfile.TemporaryDirectory() as tmp:
            max_length = max(lengths) + 512  # room for the candidate: nothing is truncated
            checkpoint = build_checkpoint(Path(tmp), max_length, args.seed, **shape)
            options: dict[str, Any] = {
                "device": args.device,
                "max_batch": args.max_batch,
                "cache_size": 0,
                "max_wait_s": 0.01,
            }
            plain = QNetScorer.from_pretrained(checkpoint, shared_prefix=False, **options)
            shared = QNetScorer.from_pretrained(checkpoint, **options)
            assert shared.shares_prefixes
            for tokens in lengths:
                rng = random.Random(args.seed + tokens)
                steps = []
                for _ in range(args.states):
                    history = state_of_length(plain.tokenizer, tokens, rng)
                    texts = step_candidates(rng, args.candidates)
                    steps.append([ValueQuery(history, text) for text in texts])
                print(f"  {model}, history {tokens} tokens ...", flush=True)
                for scorer in (plain, shared):  # warm-up
                    asyncio.run(steps_round(scorer, steps[:1]))
                rates: dict[str, list[float]] = {"plain": [], "shared": []}
                for _ in range(args.rounds):
                    rates["plain"].append(asyncio.run(steps_round(plain, steps)))
                    rates["shared"].append(asyncio.run(steps_round(shared, steps)))
                rows.append((model, tokens, rates))
            fallbacks = shared.stats.prefix_fallbacks
            asyncio.run(plain.aclose())
            asyncio.run(shared.aclose())
            assert fallbacks == 0, "a prefix was not shared: the comparison is not what it says"

    print(
        f"\nM={args.candidates} candidates per state, {args.states} states per round "
        f"(asked concurrently), {args.rounds} interleaved rounds; candidates/s, median (best)"
    )
    print(f"{'model':<11} {'history':>8} {'plain batched':>16} {'shared prefix':>16} {'ratio':>7}")
    for model, tokens, rates in rows:
        plain_m, shared_m = (statistics.median(rates[k]) for k in ("plain", "shared"))
        print(
            f"{model:<11} {tokens:>8} {plain_m:>8.3g} ({max(rates['plain']):>5.3g}) "
            f"{shared_m:>8.3g} ({max(rates['shared']):>5.3g}) {shared_m / plain_m:>6.1f}x"
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    parser.add_argument("--queries", type=int, default=64, help="concurrent candidates per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each method")
    parser.add_argument(
        "--ref-candidates",
        type=int,
        default=4,
        help="candidates per round scored the reference way (slow)",
    )
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shared-prefix",
        action="store_true",
        help="compare shared-prefix scoring with the plain batched scorer instead",
    )
    parser.add_argument(
        "--models",
        default="demo,pythia-70m",
        help=f"shared-prefix: models, comma-separated, of {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--history-tokens", default="512,2048,4096", help="shared-prefix: history lengths"
    )
    parser.add_argument("--states", type=int, default=4, help="shared-prefix: states per round")
    parser.add_argument("--candidates", type=int, default=4, help="shared-prefix: M per state")
    args = parser.parse_args()
    configure_logging(level="WARNING")
    hf_logging.disable_progress_bar()
    if args.shared_prefix:
        print(f"device: {device_name(resolve_device(args.device))}")
        shared_prefix_comparison(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp), args.max_length, args.seed)
        scorer = QNetScorer.from_pretrained(
            checkpoint, device=args.device, max_batch=args.max_batch, cache_size=0, max_wait_s=0.01
        )
        queries = make_queries(args.queries, args.seed)
        texts = [render(scorer.tokenizer, q.history, q.candidate_text) for q in queries]
        ids = encode_texts(scorer.tokenizer, texts, args.max_length)
        lengths = sorted(len(x) for x in ids)
        dtype = next(scorer.qnet.backbone.parameters()).dtype
        print(f"device: {device_name(scorer.device)}; backbone dtype {dtype}")
        print(
            f"queries: {len(ids)}, tokens min/median/max {lengths[0]}/"
            f"{lengths[len(lengths) // 2]}/{lengths[-1]}; reference pads to {args.max_length}"
        )
        ref_ids = ids[: args.ref_candidates]
        # Warm-up, then interleaved rounds: on a shared machine the load drifts, and
        # interleaving exposes every method to the same drift.
        reference_round(scorer, ref_ids[:1], pad_to=args.max_length)
        reference_round(scorer, ref_ids[:1], pad_to=args.max_length, mask_to_backbone=True)
        reference_round(scorer, ids[:2], pad_to=None)
        asyncio.run(batched_round(scorer, queries))
        rates: dict[str, list[float]] = {
            "authors": [],
            "reference": [],
            "unpadded": [],
            "batched": [],
        }
        for number in range(args.rounds):
            print(f"  round {number + 1}/{args.rounds} ...", flush=True)
            rates["authors"].append(
                reference_round(scorer, ref_ids, pad_to=args.max_length, mask_to_backbone=True)
            )
            rates["reference"].append(reference_round(scorer, ref_ids, pad_to=args.max_length))
            rates["unpadded"].append(reference_round(scorer, ids, pad_to=None))
            rates["batched"].append(asyncio.run(batched_round(scorer, queries)))
        stats = scorer.stats
        asyncio.run(scorer.aclose())

    labels = {
        "authors": "1 per pass, padded to max_length, + pad mask",
        "reference": "reference: 1 per pass, padded to max_length",
        "unpadded": "1 per pass, no padding",
        "batched": "qlass batched scorer (bucketed, dynamic pad)",
    }
    best = {key: max(values) for key, values in rates.items()}
    median = {key: statistics.median(values) for key, values in rates.items()}
    print()
    print(f"{'method (candidates/s)':<46} {'best':>8} {'median':>8} {'x ref (best)':>13}")
    for key, label in labels.items():
        print(
            f"{label:<46} {best[key]:>8.1f} {median[key]:>8.1f} "
            f"{best[key] / best['reference']:>12.1f}x"
        )
    print(
        f"median ratio batched / reference: {median['batched'] / median['reference']:.1f}x; "
        f"batched / unpadded: {median['batched'] / median['unpadded']:.2f}x"
    )
    waste = stats.padded_tokens / stats.tokens - 1 if stats.tokens else 0.0
    print(
        f"\nbatched: {stats.forward_passes} forward passes for {stats.sequences} candidates, "
        f"padding overhead {waste:.1%}"
    )


if __name__ == "__main__":
    main()
