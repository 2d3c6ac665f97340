import asyncio
from pathlib import Path

import pytest
import torch

from qlass.errors import ValueModelError
from qlass.qnet.base import ValueModel, ValueQuery
from qlass.qnet.scorer import QNetScorer
from tests.qnet.qnet_helpers import make_history, varied_queries


async def test_batched_scores_equal_one_at_a_time(qnet_dir: Path) -> None:
    queries = varied_queries(24)
    # Reference: one query per forward pass, no cache, no padding at all.
    single = await QNetScorer.aload(qnet_dir, device="cpu", max_batch=1, cache_size=0)
    reference = [single.score_batch([q])[0] for q in queries]
    # Batched: 12 "episodes" ask concurrently; a small token budget forces several buckets.
    batched = await QNetScorer.aload(
        qnet_dir, device="cpu", max_batch=16, token_budget=2048, cache_size=0, max_wait_s=0.05
    )
    assert isinstance(batched, ValueModel)
    pairs = [queries[i : i + 2] for i in range(0, len(queries), 2)]
    results = await asyncio.gather(*(batched.score(pair) for pair in pairs))
    scores = [s for pair in results for s in pair]
    await batched.aclose()
    assert scores == pytest.approx(reference, abs=1e-5)
    assert len(set(reference)) > 1
    # Fewer forward passes than queries, and padding only to each bucket's longest.
    assert batched.stats.forward_passes < len(queries)
    assert batched._batcher.stats.mean_batch > 2


async def test_dynamic_padding_never_pads_to_max_length(qnet_dir: Path) -> None:
    async with await QNetScorer.aload(qnet_dir, device="cpu", cache_size=0) as scorer:
        await scorer.score(varied_queries(16))
        stats = scorer.stats
    assert stats.sequences == 16
    assert stats.padded_tokens < 16 * scorer.max_length / 2
    assert stats.tokens <= stats.padded_tokens <= 1.25 * stats.tokens  # buckets keep waste low


async def test_cache_answers_repeated_queries(qnet_dir: Path) -> None:
    async with await QNetScorer.aload(qnet_dir, device="cpu") as scorer:
        queries = varied_queries(4)
        first = await scorer.score(queries)
        # The same (history, candidate) built anew, and a duplicate within one call.
        again = await scorer.score([ValueQuery(make_history(0, 0), queries[0].candidate_text)])
        dup = await scorer.score([queries[1], queries[1]])
        assert again == [first[0]]
        assert dup == [first[1], first[1]]
        assert scorer.stats.sequences == 4
        assert scorer.stats.cache_hits == 3
        assert scorer.stats.queries == 7


async def test_cache_is_bounded(qnet_dir: Path) -> None:
    async with await QNetScorer.aload(qnet_dir, device="cpu", cache_size=3) as scorer:
        await scorer.score(varied_queries(8))
        assert len(scorer._cache) == 3


async def test_non_finite_score_raises(qnet_dir: Path) -> None:
    scorer = await QNetScorer.aload(qnet_dir, device="cpu")
    with torch.no_grad():
        scorer.qnet.head.net[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueModelError, match="non-finite"):
        await scorer.score(varied_queries(2))
    await scorer.aclose()


async def test_closed_scorer_raises_value_model_error(qnet_dir: Path) -> None:
    scorer = await QNetScorer.aload(qnet_dir, device="cpu")
    assert len(await scorer.score(varied_queries(1))) == 1
    await scorer.aclose()
    await scorer.aclose()  # idempotent
    with pytest.raises(ValueModelError, match="closed"):
        await scorer.score(varied_queries(1))


async def test_empty_query_list() -> None:
    from qlass.qnet.constant import ConstantValueModel

    assert await ConstantValueModel(1.0).score([]) == []


def test_unavailable_cuda_is_a_clear_error(qnet_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueModelError, match="no CUDA GPU"):
        QNetScorer.from_pretrained(qnet_dir, device="cuda")


@pytest.mark.gpu
async def test_gpu_bf16_scores_close_to_cpu(qnet_dir: Path) -> None:
    queries = varied_queries(8)
    async with await QNetScorer.aload(qnet_dir, device="cpu") as cpu:
        expected = await cpu.score(queries)
    async with await QNetScorer.aload(qnet_dir, device="cuda") as gpu:
        assert next(gpu.qnet.backbone.parameters()).dtype == torch.bfloat16
        got = await gpu.score(queries)
    assert got == pytest.approx(expected, abs=0.05)
