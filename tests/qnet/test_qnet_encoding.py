from pathlib import Path

import pytest
import torch

from qlass.chat import value_messages
from qlass.qnet.encoding import (
    FALLBACK_CHAT_TEMPLATE,
    bucket_by_length,
    encode_texts,
    ensure_chat_template,
    pad_right,
    render,
    text_key,
)
from qlass.qnet.model import last_token_index, load_tokenizer
from tests.qnet.qnet_helpers import make_history


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


def test_render_is_the_chat_template_of_value_messages(tokenizer) -> None:
    history = make_history(3, 2)
    text = render(tokenizer, history, "Action: move north")
    expected = tokenizer.apply_chat_template(
        value_messages(history, "Action: move north"), tokenize=False
    )
    assert text == expected
    assert text.startswith("<|user|>Your task is to find the coin in house 3.")
    assert text.endswith("<|assistant|>Action: move north<|end|>")
    assert "<|system|>" not in text


def test_left_truncation_keeps_the_candidate(tokenizer) -> None:
    history = make_history(1, 30)
    candidate = "Thought: the coin must be upstairs.\nAction: climb the stairs"
    text = render(tokenizer, history, candidate)
    (full,) = encode_texts(tokenizer, [text], max_length=100_000)
    (cut,) = encode_texts(tokenizer, [text], max_length=64)
    assert len(full) > 200
    assert len(cut) == 64
    assert cut == full[-64:]
    decoded = tokenizer.decode(cut)
    assert decoded.endswith(candidate + "<|end|>")
    assert "find the coin in house 1" not in decoded  # the start is what was dropped


def test_pad_right_and_last_token(tokenizer) -> None:
    ids, mask = pad_right([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert last_token_index(mask).tolist() == [2, 0, 1]
    left = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 1, 1]])
    assert last_token_index(left).tolist() == [2, 2, 2]


def test_bucketing_groups_similar_lengths_within_budget() -> None:
    lengths = [500, 20, 480, 30, 25, 510, 1000]
    groups = bucket_by_length(lengths, max_items=3, token_budget=1500, max_padding=1.0)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 1500
    assert groups[0] == [1, 4, 3]  # the three short ones together
    assert [6] in groups  # the longest alone


def test_bucketing_bounds_padding_waste() -> None:
    lengths = [100, 110, 120, 400, 410, 800]
    groups = bucket_by_length(lengths, max_items=64, token_budget=10**6, max_padding=0.25)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    one = bucket_by_length(lengths, max_items=64, token_budget=10**6, max_padding=100.0)
    assert one == [[0, 1, 2, 3, 4, 5]]


def test_text_key_is_stable_and_distinguishes() -> None:
    assert text_key("abc") == text_key("abc")
    assert text_key("abc") != text_key("abd")
    assert len(text_key("x")) == 32


def test_fallback_template_for_tokenizers_without_one(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    text = render(tok, make_history(0, 0), "Action: go")
    assert text.endswith("assistant: Action: go\n")
