"""The local transformers backend: batching, per-request determinism, stopping, truncation."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from qlass.backends.cache import sample_seed
from qlass.backends.hf import Generation, HFPolicy, PromptTooLongError
from qlass.errors import ConfigError, MissingDataError
from qlass.types import ChatMessage


def conversation(i: int, turns: int = 0) -> list[ChatMessage]:
    messages: list[ChatMessage] = [
        {"role": "system", "content": "You are in a house."},
        {"role": "user", "content": f"Find the coin number {i}. You are in the kitchen."},
    ]
    for t in range(turns):
        messages.append({"role": "assistant", "content": f"Action: move north {t}"})
        messages.append({"role": "user", "content": f"Observation: corridor {t} " * 4})
    return messages


async def load(model_dir: Path, **options: object) -> HFPolicy:
    return await asyncio.to_thread(HFPolicy, model_dir, device="cpu", **options)  # type: ignore[arg-type]


REQUESTS = [
    # (conversation, n, temperature, max_tokens, stop, seed)
    (0, 2, 0.0, 6, None, 1),
    (1, 2, 0.7, 9, None, 2),
    (2, 1, 1.3, 12, ["e"], 3),
    (3, 3, 0.9, 15, None, 4),
    (4, 1, 0.5, 4, None, 5),
]


async def test_seeded_requests_give_the_same_text_batched_or_alone(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir, max_batch=32, max_wait_s=0.2)
    try:

        def call(spec: tuple) -> object:
            conv, n, temperature, max_tokens, stop, seed = spec
            return policy.generate(
                conversation(conv, turns=conv),
                n=n,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
                seed=seed,
            )

        batched = await asyncio.gather(*(call(spec) for spec in REQUESTS))  # type: ignore[arg-type]
        assert policy.stats.batches == 1 and policy.stats.sizes == [9]
        alone = [await call(spec) for spec in REQUESTS]  # type: ignore[misc]
        assert policy.stats.batches == 1 + len(REQUESTS)
        assert batched == alone
        for gens, (_, n, _, max_tokens, _, _) in zip(batched, REQUESTS, strict=True):
            assert len(gens) == n
            assert all(0 < g.completion_tokens <= max_tokens for g in gens)
        # different seeds give different samples (the generator is really per row)
        assert batched[3][0].text != batched[3][1].text
    finally:
        await policy.aclose()


async def test_grouped_prefill_gives_the_same_text_as_one_padded_batch(
    tiny_model_dir: Path,
) -> None:
    outputs = []
    for budget in (1, 60, 10**9):  # every prompt alone, a few together, all in one batch
        policy = await load(tiny_model_dir, max_wait_s=0.2, prefill_tokens=budget)
        try:
            outputs.append(
                await asyncio.gather(
                    *(
                        policy.generate(
                            conversation(i, turns=i), n=2, temperature=0.9, max_tokens=3 + i, seed=i
                        )
                        for i in range(6)
                    )
                )
            )
            assert policy.stats.batches == 1
        finally:
            await policy.aclose()
    assert outputs[0] == outputs[1] == outputs[2]


async def test_sample_i_equals_a_single_sample_with_its_derived_seed(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir)
    try:
        messages = conversation(7)
        many = await policy.generate(messages, n=4, temperature=1.0, max_tokens=10, seed=42)
        for i in range(4):
            one = await policy.generate(
                messages, n=1, temperature=1.0, max_tokens=10, seed=sample_seed(42, i)
            )
            assert one == [many[i]]
    finally:
        await policy.aclose()


async def test_greedy_ignores_the_seed(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir)
    try:
        a = await policy.generate(conversation(1), n=2, temperature=0, max_tokens=8, seed=1)
        b = await policy.generate(conversation(1), n=1, temperature=0, max_tokens=8, seed=99)
        c = await policy.generate(conversation(1), n=1, temperature=0, max_tokens=8)
        assert a[0].text == a[1].text == b[0].text == c[0].text
    finally:
        await policy.aclose()


async def test_stop_strings_cut_the_text(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir)
    try:
        options = {"n": 1, "temperature": 1.0, "max_tokens": 30, "seed": 3}
        free = await policy.generate(conversation(2), **options)  # type: ignore[arg-type]
        text = free[0].text
        assert len(text) > 6, free
        stop = text[4:6]
        cut = await policy.generate(conversation(2), stop=[stop], **options)  # type: ignore[arg-type]
        assert cut[0].text == text[: text.index(stop)]
        assert cut[0].finish_reason == "stop"
        assert cut[0].completion_tokens < free[0].completion_tokens
    finally:
        await policy.aclose()


async def test_usage_counts_the_prompt_once_and_real_tokens(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir)
    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, tiny_model_dir)
    try:
        messages = conversation(3, turns=2)
        candidates = await policy.sample(messages, n=3, temperature=0.8, max_tokens=7, seed=0)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert [c.usage.prompt_tokens for c in candidates] == [expected, 0, 0]
        for candidate in candidates:
            assert 1 <= candidate.usage.completion_tokens <= 7
            assert candidate.action is None and candidate.parse_error  # random model: no format
    finally:
        await policy.aclose()


async def test_long_history_drops_old_turns_and_keeps_task_and_last(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir, max_context=140)
    try:
        long = conversation(5, turns=12)
        assert policy.count_prompt_tokens(long) > 140 - 8
        gens = await policy.generate(long, n=1, temperature=0, max_tokens=8)
        assert gens[0].prompt_tokens <= 140 - 8
        # the documented rule: drop the oldest (assistant, observation) pair until it fits
        expected = list(long)
        while policy.count_prompt_tokens(expected) > 140 - 8:
            expected = expected[:2] + expected[4:]
        assert expected[:2] == long[:2] and expected[-1] == long[-1]
        assert 3 <= len(expected) < len(long)
        assert gens[0].prompt_tokens == policy.count_prompt_tokens(expected)
        assert gens[0].dropped_messages == len(long) - len(expected)
        again = await policy.generate(expected, n=1, temperature=0, max_tokens=8)
        assert again == [dataclasses.replace(g, dropped_messages=0) for g in gens]
    finally:
        await policy.aclose()


async def test_prompt_that_cannot_fit_fails_alone_not_its_batch(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir, max_context=60, max_wait_s=0.2)
    try:
        huge: list[ChatMessage] = [{"role": "user", "content": "coin " * 200}]
        results = await asyncio.gather(
            policy.generate(huge, max_tokens=8),
            policy.generate(conversation(0), max_tokens=8, temperature=0),
            return_exceptions=True,
        )
        assert isinstance(results[0], PromptTooLongError)
        assert "does not fit" in str(results[0])
        assert isinstance(results[1], list) and isinstance(results[1][0], Generation)
        with pytest.raises(PromptTooLongError, match="leaves no room"):
            await policy.generate(conversation(0), max_tokens=60)
    finally:
        await policy.aclose()


def test_missing_model_dir_and_bad_device(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(MissingDataError, match="no model at"):
        HFPolicy(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="not a torch device"):
        HFPolicy(tiny_model_dir, device="gpu-please")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA was asked for"):
            HFPolicy(tiny_model_dir, device="cuda")


def test_model_name_defaults_to_the_directory(tiny_model_dir: Path) -> None:
    assert HFPolicy(tiny_model_dir, device="cpu").model_name == tiny_model_dir.name
    assert HFPolicy(tiny_model_dir, device="cpu", model_name="bc").model_name == "bc"


def test_hf_module_needs_only_torch_and_transformers() -> None:
    code = (
        "import sys, qlass.backends.hf\n"
        "bad = [m for m in ('litellm', 'fastapi', 'sqlalchemy', 'pydantic', 'uvicorn') "
        "if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
