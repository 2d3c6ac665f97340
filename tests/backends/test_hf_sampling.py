"""The local backend's nucleus sampling, log probabilities and explicit trimming, and its
one-line errors for a model folder it cannot load (see test_hf.py for batching and
determinism)."""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path

import pytest
import torch

from qlass.backends._sampling import nucleus
from qlass.backends.hf import HFPolicy, PromptTooLongError
from qlass.errors import MissingDataError
from qlass.types import ChatMessage

PROMPT: list[ChatMessage] = [
    {"role": "system", "content": "You play a text game. Answer with 'Action: <command>'."},
    {"role": "user", "content": "Find the coin.\nObservation: You are in the kitchen."},
]


async def load(model_dir: Path, **options: object) -> HFPolicy:
    return await asyncio.to_thread(HFPolicy, model_dir, device="cpu", **options)  # type: ignore[arg-type]


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert nucleus(probs, 0.5).tolist() == [0.0, 0.5, 0.0]  # 0.5 alone reaches 0.5
    assert nucleus(probs, 0.6).tolist() == pytest.approx([0.0, 0.5, 0.3])
    assert nucleus(probs, 0.81).tolist() == pytest.approx([0.2, 0.5, 0.3])
    assert nucleus(probs, 0.0).tolist() == [0.0, 0.5, 0.0]  # the most likely is always kept
    tied = torch.tensor([0.25, 0.25, 0.25, 0.25])
    assert nucleus(tied, 0.3).tolist() == [0.25, 0.25, 0.0, 0.0]  # ties: in token order


async def test_a_tiny_top_p_samples_the_greedy_text(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir)
    try:
        greedy = await policy.generate(PROMPT, temperature=0, max_tokens=12)
        nucleus, free = [], []
        for seed in range(4):
            nucleus += await policy.generate(
                PROMPT, temperature=1.5, top_p=1e-6, max_tokens=12, seed=seed
            )
            free += await policy.generate(PROMPT, temperature=1.5, max_tokens=12, seed=seed)
        assert {g.text for g in nucleus} == {greedy[0].text}
        assert {g.text for g in free} != {greedy[0].text}  # top_p, not the seed, made it greedy
        with pytest.raises(ValueError, match="top_p"):
            await policy.generate(PROMPT, top_p=1.5)
    finally:
        await policy.aclose()


async def test_logprobs_are_the_models_own_and_spell_the_text(action_model_dir: Path) -> None:
    policy = await load(action_model_dir)  # trained: it answers with text, not special tokens
    try:
        (greedy,) = await policy.generate(PROMPT, temperature=0, max_tokens=8, logprobs=3)
        assert greedy.logprobs is not None and len(greedy.logprobs) >= 3
        assert "".join(entry.token for entry in greedy.logprobs) == greedy.text
        for entry in greedy.logprobs:
            assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)
            assert len(entry.top) == 3 and entry.logprob == pytest.approx(entry.top[0][1])
        # The first token's log probability equals a plain forward pass over the prompt.
        ids = policy._encode(PROMPT)
        with torch.inference_mode():
            logits = policy.model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = torch.log_softmax(logits.float(), dim=-1)
        first = greedy.logprobs[0]  # greedy: the most likely token
        assert first.logprob == pytest.approx(float(expected.max()), abs=1e-4)
        assert first.token == policy.tokenizer.decode([int(expected.argmax())]) != ""
        (sampled,) = await policy.generate(
            PROMPT, temperature=1.2, max_tokens=10, seed=3, logprobs=0
        )
        assert sampled.logprobs is not None
        assert "".join(entry.token for entry in sampled.logprobs) == sampled.text
        assert all(entry.top == () and entry.logprob <= 0 for entry in sampled.logprobs)
        assert all(math.isfinite(entry.logprob) for entry in sampled.logprobs)
        (plain,) = await policy.generate(PROMPT, temperature=1.2, max_tokens=10, seed=3)
        assert plain.logprobs is None and plain.text == sampled.text  # asking changes nothing
    finally:
        await policy.aclose()


def long_conversation(turns: int) -> list[ChatMessage]:
    messages = list(PROMPT)
    for t in range(turns):
        messages.append({"role": "assistant", "content": f"Action: move north {t}"})
        messages.append({"role": "user", "content": f"Observation: corridor {t} " * 4})
    return messages


async def test_trimming_is_optional_and_reported(tiny_model_dir: Path) -> None:
    policy = await load(tiny_model_dir, max_context=140)
    try:
        long = long_conversation(12)
        assert policy.count_prompt_tokens(long) > 140 - 8
        (trimmed,) = await policy.generate(long, temperature=0, max_tokens=8)
        assert trimmed.dropped_messages >= 2 and trimmed.dropped_messages % 2 == 0
        with pytest.raises(PromptTooLongError, match="no messages are dropped"):
            await policy.generate(long, temperature=0, max_tokens=8, trim=False)
        (short,) = await policy.generate(PROMPT, temperature=0, max_tokens=8, trim=False)
        assert short.dropped_messages == 0
    finally:
        await policy.aclose()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("config.json", "config.json"),  # not JSON
        ("model.safetensors", "cannot load the model"),  # truncated weights
    ],
)
def test_a_corrupt_model_folder_is_one_clear_error(
    tiny_model_dir: Path, tmp_path: Path, damage: str, reason: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    target = broken / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 3])
    with pytest.raises(MissingDataError, match="cannot load the model in") as info:
        HFPolicy(broken, device="cpu")
    assert reason in str(info.value) and "\n" not in str(info.value)
