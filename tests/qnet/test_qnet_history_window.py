"""The QNet's history window (qnet.max_turns) is saved with the checkpoint and applied the
same way when scoring, so a trained QNet reads exactly what it was trained on."""

from pathlib import Path

import pytest

from qlass.qnet.base import ValueQuery
from qlass.qnet.encoding import render
from qlass.qnet.model import QNet, load_tokenizer
from qlass.qnet.scorer import QNetScorer
from qlass.types import History, Turn
from tests.qnet.qnet_helpers import make_history


def test_render_keeps_the_task_and_the_last_turns(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    history = make_history(3, 5)
    text = render(tokenizer, history, "Action: move north", max_turns=2)
    assert history.instruction in text
    assert "room 4" in text
    assert "room 3" in text
    assert "room 2" not in text
    assert "room 0" in render(tokenizer, history, "Action: move north")


@pytest.fixture
def checkpoints(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two untrained QNets on one backbone: with a 1-turn window, and without a window."""
    tokenizer = load_tokenizer(tiny_model_dir)
    windowed = QNet.from_backbone(tiny_model_dir, head_dim=16, max_length=512, max_turns=1)
    full = QNet.from_backbone(tiny_model_dir, head_dim=16, max_length=512)
    return (
        windowed.save_pretrained(tmp_path / "windowed", tokenizer=tokenizer),
        full.save_pretrained(tmp_path / "full", tokenizer=tokenizer),
    )


def test_window_is_saved_with_the_checkpoint(checkpoints: tuple[Path, Path]) -> None:
    windowed, full = checkpoints
    assert QNet.from_pretrained(windowed).spec.max_turns == 1
    assert QNet.from_pretrained(full).spec.max_turns is None


async def test_scorer_applies_the_saved_window(checkpoints: tuple[Path, Path]) -> None:
    windowed, full = checkpoints

    recent = make_history(0, 1)
    # Same last turn and task, different older turns: outside the window, so same score.
    older = History(
        recent.instruction,
        recent.initial_observation,
        (Turn("Action: open fridge", "open fridge", "The fridge is open."), *recent.turns),
    )
    scorer = await QNetScorer.aload(windowed, device="cpu")
    async with scorer:
        a, b = await scorer.score(
            [ValueQuery(recent, "Action: move north"), ValueQuery(older, "Action: move north")]
        )
    assert a == b

    scorer = await QNetScorer.aload(full, device="cpu")
    async with scorer:
        c, d = await scorer.score(
            [ValueQuery(recent, "Action: move north"), ValueQuery(older, "Action: move north")]
        )
    assert c != d
