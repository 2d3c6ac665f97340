"""Study summaries from hand-made episodes: the numbers a reader sees are the stored ones."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from qlass.report.stats import grid_interval
from qlass.report.study import (
    default_pairs,
    parse_pair,
    render_markdown,
    summarise_episodes,
)
from qlass.storage import EpisodeRecord


def _episode(strategy: str, task: int, score: float, tokens: int) -> EpisodeRecord:
    return EpisodeRecord(
        id=0,
        run_id=1,
        stage="eval:dev:x",
        strategy=strategy,
        task_key=f"t/{task}",
        split="dev",
        final_score=score,
        success=score == 1.0,
        steps=3,
        prompt_tokens=0,
        completion_tokens=tokens,
        env_steps=3,
        wall_time_s=0.1,
        stop_reason="done",
        trajectory={"info": {"oracle_best_score": 1.0}} if strategy.startswith("best") else {},
        created_at=datetime.now(UTC),
    )


SCORES = {
    "greedy": [0, 0, 1, 0, 1, 0],
    "best_of_n:2": [1, 0, 1, 0, 1, 1],
    "qlass:2": [1, 1, 1, 0, 1, 1],
}


def _episodes() -> list[EpisodeRecord]:
    return [
        _episode(s, t, float(v), 10 * (1 + i))
        for i, (s, values) in enumerate(SCORES.items())
        for t, v in enumerate(values)
    ]


def test_one_run_summary_is_the_task_bootstrap_of_its_episodes() -> None:
    summary = summarise_episodes("demo", 0, _episodes(), resamples=1000)
    assert summary.seeds == (0,) and summary.tasks == 6
    assert [s.strategy for s in summary.strategies] == ["greedy", "best_of_n:2", "qlass:2"]
    qlass = summary.strategy("qlass:2")
    assert qlass.reward.mean == pytest.approx(5 / 6)
    assert qlass.reward == grid_interval(np.array([SCORES["qlass:2"]], float), resamples=1000)
    assert qlass.completion_tokens.mean == 30
    assert summary.strategy("best_of_n:2").oracle_best_reward == 1.0
    pair = {(p.a, p.b): p for p in summary.pairs}[("qlass:2", "best_of_n:2")]
    assert pair.reward.mean == pytest.approx(1 / 6)
    assert pair.counts.as_dict() == {"wins": 1, "ties": 5, "losses": 0}
    assert pair.completion_tokens == 10
    text = render_markdown(summary)
    assert "qlass:2 - best_of_n:2" in text and "+16.7" in text
    assert "1 seed (0) x 6 dev tasks" in text


def test_tasks_missing_for_one_strategy_are_left_out_and_named() -> None:
    episodes = [e for e in _episodes() if not (e.strategy == "greedy" and e.task_key == "t/5")]
    summary = summarise_episodes("demo", 0, episodes, resamples=200)
    assert summary.tasks == 5
    assert any("lack an episode" in note for note in summary.notes)


def test_default_pairs_and_parsing() -> None:
    assert default_pairs(["qlass:2", "greedy", "best_of_n:4", "best_of_n:2", "beam:2"]) == [
        ("best_of_n:2", "greedy"),
        ("best_of_n:4", "greedy"),
        ("qlass:2", "greedy"),
        ("beam:2", "greedy"),
        ("qlass:2", "best_of_n:2"),
        ("qlass:2", "best_of_n:4"),
        ("beam:2", "best_of_n:2"),
        ("beam:2", "best_of_n:4"),
    ]
    assert default_pairs(["rollout_oracle:2", "qlass:2", "best_of_n:2", "rollout_oracle:4"]) == [
        ("qlass:2", "best_of_n:2"),
        ("rollout_oracle:2", "best_of_n:2"),
        ("rollout_oracle:4", "best_of_n:2"),
        ("rollout_oracle:2", "qlass:2"),
    ]
    assert parse_pair("qlass:2-best_of_n:2") == ("qlass:2", "best_of_n:2")
    assert parse_pair("qlass:2,greedy") == ("qlass:2", "greedy")
    with pytest.raises(ValueError, match="A-B"):
        parse_pair("qlass:2")


def test_a_seed_without_headroom_is_named_in_the_notes() -> None:
    summary = summarise_episodes("demo", 0, _episodes(), resamples=200)
    assert not any("headroom" in n or "never succeeds" in n for n in summary.notes)

    hopeless = [e for e in _episodes() if e.strategy != "greedy"]
    hopeless += [_episode("greedy", t, 0.2, 10) for t in range(6)]
    notes = summarise_episodes("demo", 0, hopeless, resamples=200).notes
    assert any("seed 0: greedy never succeeds (reward x100 20.0)" in n for n in notes)

    saturated = [e for e in _episodes() if e.strategy != "greedy"]
    saturated += [_episode("greedy", t, 1.0 if t else 0.9, 10) for t in range(6)]
    notes = summarise_episodes("demo", 0, saturated, resamples=200).notes
    assert any(
        "seed 0: no headroom: greedy reward x100 98.3" in n and "best_of_n:2 oracle (100.0)" in n
        for n in notes
    ), notes

    # An oracle below greedy is not "within 5 points" of it: the samples are the problem.
    worse = [e for e in _episodes() if e.strategy not in ("greedy", "best_of_n:2")]
    worse += [_episode("greedy", t, 1.0 if t % 2 else 0.0, 10) for t in range(6)]
    worse += [
        dataclasses.replace(
            _episode("best_of_n:2", t, 0.0, 20), trajectory={"info": {"oracle_best_score": 0.0}}
        )
        for t in range(6)
    ]
    notes = summarise_episodes("demo", 0, worse, resamples=200).notes
    assert not any("no headroom" in n for n in notes), notes
    assert any(
        "sampling does worse than greedy: the best_of_n:2 oracle (0.0" in n
        and "greedy's reward x100 50.0" in n
        for n in notes
    ), notes
