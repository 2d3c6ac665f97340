"""BC training stops at a graceful-stop request and leaves no half-trained policy behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlass.config import BCConfig
from qlass.errors import TrainingStopped
from qlass.runtime.bc import train_policy
from qlass.types import ChatMessage


def _conversation(i: int) -> list[ChatMessage]:
    return [
        {"role": "user", "content": f"Find the coin. You are in room {i}."},
        {"role": "assistant", "content": "Action: move north"},
        {"role": "user", "content": "You see a coin."},
        {"role": "assistant", "content": "Action: take coin"},
    ]


def test_a_stop_request_ends_bc_early_and_saves_nothing(tmp_path: Path) -> None:
    config = BCConfig(layers=1, width=32, heads=2, vocab_size=300, epochs=20, batch_size=2)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(TrainingStopped, match="after 2 steps"):
        train_policy(
            [_conversation(i) for i in range(8)],
            config,
            output_dir=tmp_path / "policy",
            system_prompt=None,
            max_turns=None,
            should_stop=should_stop,
        )
    assert not (tmp_path / "policy" / "config.json").exists()
