"""Shared-prefix scoring gives the plain scorer's scores (within float tolerance), runs the
shared history once, and falls back to plain scoring where truncation cuts into it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qlass.qnet.base import ValueQuery
from qlass.qnet.encoding import encode_texts, render
from qlass.qnet.model import QNet, load_tokenizer
from qlass.qnet.prefix import plan_shared_prefixes
from qlass.qnet.scorer import QNetScorer
from tests.qnet.qnet_helpers import make_history

CANDIDATES = [
    "Action: look",
    "Thought: the kitchen is north.\nAction: move north",
    "Thought: nothing here; the coin may be further away, so I should go back and try the "
    "rooms to the east first.\nAction: move east",
    "Action: take coin",
]


def step_queries(turns: list[int], per_state: list[int]) -> list[list[ValueQuery]]:
    """One list of candidates per state: state i has ``turns[i]`` turns and
    ``per_state[i]`` candidates of different lengths."""
    return [
        [ValueQuery(make_history(i, n), CANDIDATES[(i + j) % len(CANDIDATES)]) for j in range(m)]
        for i, (n, m) in enumerate(zip(turns, per_state, strict=True))
    ]


def checkpoint(tiny_model_dir: Path, out: Path, **spec: int) -> Path:
    qnet = QNet.from_backbone(tiny_model_dir, head_dim=32, seed=3, **spec)
    return qnet.save_pretrained(out, tokenizer=load_tokenizer(tiny_model_dir))


async def score_steps(scorer: QNetScorer, steps: list[list[ValueQuery]]) -> list[float]:
    """Every step's candidates in one concurrent ``score`` call, as episodes ask."""
    results = await asyncio.gather(*(scorer.score(step) for step in steps))
    return [value for step in results for value in step]


async def plain_and_shared(
    directory: Path, steps: list[list[ValueQuery]], **options: float
) -> tuple[list[float], list[float], QNetScorer]:
    common = {"device": "cpu", "cache_size": 0, "max_wait_s": 0.05, **options}
    async with await QNetScorer.aload(directory, shared_prefix=False, **common) as plain:
        want = await score_steps(plain, steps)
        assert plain.stats.shared_prefixes == 0
    async with await QNetScorer.aload(directory, **common) as shared:
        assert shared.shares_prefixes
        got = await score_steps(shared, steps)
    return want, got, shared


@pytest.mark.parametrize(
    ("token_budget", "cache_budget", "max_padding"),
    [(4096, 32768, 0.25), (4096, 32768, 100.0), (256, 32768, 0.25), (4096, 64, 0.25)],
    # mixed-prefix-lengths: every state's prefix in one pass, padded to the longest, so
    # each row's own prefix is shorter than the cache it attends into.
    ids=["bucketed", "mixed-prefix-lengths", "many-prefix-passes", "one-candidate-per-pass"],
)
async def test_shared_prefix_scores_equal_plain_scores(
    tiny_model_dir: Path, tmp_path: Path, token_budget: int, cache_budget: int, max_padding: float
) -> None:
    directory = await asyncio.to_thread(
        checkpoint, tiny_model_dir, tmp_path / "qnet", max_length=1024
    )
    steps = step_queries(turns=[0, 1, 3, 5, 7, 2], per_state=[2, 4, 3, 2, 4, 1])
    want, got, scorer = await plain_and_shared(
        directory,
        steps,
        token_budget=token_budget,
        cache_budget=cache_budget,
        max_padding=max_padding,
    )
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(want)) > 5
    stats = scorer.stats
    assert stats.shared_prefixes == 5  # every state with two or more candidates
    assert stats.shared_sequences == 15
    assert stats.prefix_fallbacks == 0
    assert stats.sequences == 16


async def test_history_window_is_shared_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = await asyncio.to_thread(
        checkpoint, tiny_model_dir, tmp_path / "qnet", max_length=1024, max_turns=2
    )
    steps = step_queries(turns=[6, 6, 9], per_state=[3, 2, 4])
    want, got, scorer = await plain_and_shared(directory, steps)
    assert got == pytest.approx(want, abs=1e-5)
    assert scorer.stats.shared_prefixes == 3


async def test_truncation_into_the_prefix_falls_back_to_plain(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    max_length = 160
    directory = await asyncio.to_thread(
        checkpoint, tiny_model_dir, tmp_path / "qnet", max_length=max_length
    )
    # States 0-1 fit; states 2-3 are longer than max_length, so left truncation starts
    # each of their (different-length) candidates at a different history token.
    steps = step_queries(turns=[0, 1, 6, 7], per_state=[2, 3, 2, 3])
    tokenizer = await asyncio.to_thread(load_tokenizer, directory)
    lengths = [
        len(ids)
        for step in steps
        for ids in encode_texts(
            tokenizer, [render(tokenizer, q.history, q.candidate_text) for q in step], 10**6
        )
    ]
    assert max(lengths[:5]) <= max_length < min(lengths[5:])
    want, got, scorer = await plain_and_shared(directory, steps)
    assert got == pytest.approx(want, abs=1e-5)
    assert scorer.stats.shared_prefixes == 2
    assert scorer.stats.prefix_fallbacks == 2


async def test_shared_prefix_runs_fewer_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = await asyncio.to_thread(
        checkpoint, tiny_model_dir, tmp_path / "qnet", max_length=1024
    )
    steps = step_queries(turns=[7, 7], per_state=[4, 4])
    common = {"device": "cpu", "cache_size": 0, "max_wait_s": 0.05}
    async with await QNetScorer.aload(directory, shared_prefix=False, **common) as plain:
        await score_steps(plain, steps)
    async with await QNetScorer.aload(directory, **common) as shared:
        await score_steps(shared, steps)
    # Two histories instead of eight, plus the candidates' own tokens.
    assert shared.stats.tokens < plain.stats.tokens / 2


def test_plan_groups_by_state_and_keeps_a_token_per_candidate() -> None:
    sequences = [
        [1, 2, 3, 4, 5],  # state a
        [1, 2, 3, 9],  # state a
        [1, 2, 3],  # state a: the whole shared part; keeps its last token as its suffix
        [1, 2, 3, 4, 6],  # state b, alone: plain
        [7, 8, 1, 2],  # state c: nothing in common with its sibling: plain, a fallback
        [8, 1, 2, 3],  # state c
    ]
    groups, plain, fallbacks = plan_shared_prefixes(sequences, "aaabcc", min_shared=2)
    assert [(g.prefix, g.members, g.suffixes) for g in groups] == [
        ([1, 2], [0, 1, 2], [[3, 4, 5], [3, 9], [3]])
    ]
    assert plain == [3, 4, 5]
    assert fallbacks == 1
