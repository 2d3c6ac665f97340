import json
import math
from pathlib import Path

import pytest

from qlass.errors import TrainingStopped, UserError
from qlass.qnet._wire import read_triples_jsonl, write_triples_jsonl
from qlass.qnet.base import ValueQuery
from qlass.qnet.scorer import QNetScorer
from qlass.qnet.train import (
    TrainSettings,
    regression_metrics,
    sibling_accuracy,
    sibling_spread,
    spearman,
    split_by_task,
    train_qnet,
)
from qlass.types import LabelledStep
from tests.qnet.qnet_helpers import BAD, GOOD, make_history, synthetic_steps


def test_split_is_by_task_without_leakage() -> None:
    steps = synthetic_steps(20)
    split = split_by_task(steps, dev_fraction=0.25, seed=3)
    train_tasks = {s.task_key for s in split.train}
    dev_tasks = {s.task_key for s in split.dev}
    assert not train_tasks & dev_tasks
    assert len(dev_tasks) == 5 and len(train_tasks) == 15
    assert len(split.train) + len(split.dev) == len(steps)
    # Seeded and independent of input order; another seed gives another split.
    assert split_by_task(list(reversed(steps)), 0.25, 3).dev_tasks == split.dev_tasks
    assert split_by_task(steps, 0.25, 4).dev_tasks != split.dev_tasks


def test_split_edge_cases() -> None:
    one_task = [s for s in synthetic_steps(3) if s.tree_id == 0]
    assert split_by_task(one_task, 0.5, 0).dev == ()  # a single task stays in training
    two = synthetic_steps(2)
    assert len(split_by_task(two, 0.01, 0).dev_tasks) == 1  # at least one dev task
    assert split_by_task(two, 0.0, 0).dev == ()


def test_spearman_and_mse() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: ranks x = [0, 1.5, 1.5, 3] against y = [0, 1, 2, 3].
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # NaN
    metrics = regression_metrics([0.0, 1.0], [1.0, 1.0])
    assert metrics["mse"] == pytest.approx(0.5)


def test_sibling_accuracy_compares_candidates_of_one_state_only() -> None:
    states = ["a", "a", "a", "b", "b"]
    labels = [1.0, 0.0, 0.5, 0.3, 0.3]  # state b: equal labels, no pair counted
    assert sibling_accuracy([0.9, 0.1, 0.5, 0.0, 1.0], labels, states) == 1.0
    # a: (1, 0) ordered right, (1, 0.5) wrong, (0, 0.5) right.
    assert sibling_accuracy([0.6, 0.1, 0.9, 0.0, 1.0], labels, states) == pytest.approx(2 / 3)
    # A tied prediction counts one half: (1, 0) right, (1, 0.5) right, (0, 0.5) tied.
    assert sibling_accuracy([0.9, 0.6, 0.6, 0.0, 1.0], labels, states) == pytest.approx(2.5 / 3)
    # A prediction that is right across states but flat within them orders no sibling.
    assert sibling_accuracy([0.5, 0.5], [1.0, 0.0], ["s", "s"]) == 0.5
    assert math.isnan(sibling_accuracy([1.0, 0.0], [1.0, 0.0], ["s", "t"]))  # no pairs


def test_sibling_spread_shows_a_qnet_blind_to_the_action() -> None:
    states = ["a", "a", "b", "b", "c", "c"]
    labels = [1.0, 0.6, 0.5, 0.1, 0.3, 0.3]  # label gaps 0.4, 0.4 (c: equal, no pair)
    assert sibling_spread([0.9, 0.5, 0.6, 0.2, 0.0, 1.0], labels, states) == pytest.approx(1.0)
    assert sibling_spread([0.9, 0.7, 0.6, 0.4, 0.0, 1.0], labels, states) == pytest.approx(0.5)
    # Right order, gaps of 1e-4: sibling accuracy 1.0, yet the search picks among near-ties.
    blind = [0.8001, 0.8, 0.3001, 0.3, 0.0, 0.0]
    assert sibling_accuracy(blind, labels, states) == 1.0
    assert sibling_spread(blind, labels, states) == pytest.approx(0.00025)
    assert math.isnan(sibling_spread([1.0, 0.0], [1.0, 0.0], ["s", "t"]))


def test_triples_jsonl_round_trip(tmp_path: Path) -> None:
    steps = synthetic_steps(2)
    path = tmp_path / "triples.jsonl"
    assert write_triples_jsonl(steps, path) == len(steps)
    assert read_triples_jsonl(path) == steps
    path.write_text(path.read_text() + '{"tree_id": 1, "task_key": "x"}\n')
    with pytest.raises(UserError, match=r"triples\.jsonl:13: not a valid triple"):
        read_triples_jsonl(path)


async def test_training_lowers_the_loss_and_learns_the_ranking(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import asyncio

    steps = synthetic_steps(12)
    settings = TrainSettings(
        output_dir=tmp_path / "qnet",
        head_dim=64,
        batch_size=8,
        micro_batch_size=8,
        max_steps=60,
        lr=1e-3,
        warmup_ratio=0.03,
        max_length=512,
        dev_fraction=0.25,
        logging_steps=1,
        use_cpu=True,
    )
    progress: list[tuple[int, int, float | None]] = []
    result = await asyncio.to_thread(
        train_qnet,
        steps,
        tiny_model_dir,
        settings,
        on_progress=lambda step, total, loss: progress.append((step, total, loss)),
    )
    assert result.steps == 60
    assert progress[-1][:2] == (60, 60)
    assert progress[-1][2] == pytest.approx(result.train_losses[-1])
    assert result.train_tasks == 9 and result.dev_tasks == 3
    assert result.dev_mse_before is not None and result.dev_mse is not None
    assert result.dev_mse < 0.5 * result.dev_mse_before
    first, last = result.train_losses[0], sum(result.train_losses[-4:]) / 4
    assert last < first
    assert result.dev_spearman is not None and result.dev_spearman > 0.5
    assert result.dev_sibling_accuracy is not None and result.dev_sibling_accuracy > 0.8
    assert result.dev_sibling_spread is not None and result.dev_sibling_spread > 0.1
    saved = json.loads((settings.output_dir / "train_metrics.json").read_text())
    assert saved["dev_mse"] == pytest.approx(result.dev_mse)
    # The saved checkpoint scores an unseen task: the good move above the bad one.
    async with await QNetScorer.aload(settings.output_dir, device="cpu") as scorer:
        history = make_history(99, 1)
        good, bad = await scorer.score(
            [
                ValueQuery(history, f"Thought: I will try this.\nAction: {GOOD}"),
                ValueQuery(history, f"Thought: I will try this.\nAction: {BAD}"),
            ]
        )
    assert good > bad


def test_no_training_examples_is_a_user_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    steps: list[LabelledStep] = []
    with pytest.raises(UserError, match="no training examples"):
        train_qnet(steps, tiny_model_dir, TrainSettings(output_dir=tmp_path))


def test_a_stop_request_ends_training_early_and_saves_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = TrainSettings(
        output_dir=tmp_path / "qnet",
        head_dim=16,
        batch_size=4,
        micro_batch_size=4,
        max_steps=50,
        max_length=256,
        dev_fraction=0.25,
        use_cpu=True,
    )
    asked: list[int] = []

    def should_stop() -> bool:  # asked after every optimizer step; says stop at the third
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(TrainingStopped, match="after 3 steps"):
        train_qnet(synthetic_steps(4), tiny_model_dir, settings, should_stop=should_stop)
    assert len(asked) == 3
    assert not (tmp_path / "qnet" / "qnet_config.json").exists()


def test_sibling_margin_loss_counts_ordered_pairs_of_one_state_only() -> None:
    import torch

    from qlass.qnet.ranking import sibling_margin_loss

    values = torch.tensor([0.2, 0.5, 0.9, 0.1])
    labels = torch.tensor([1.0, 0.0, 0.4, 0.3])
    groups = torch.tensor([0, 0, 1, 1])
    # Group 0: q0 > q1 by 1.0 but v0 - v1 = -0.3 -> shortfall 1.3. Group 1: q2 > q3 by
    # 0.1 and v2 - v3 = 0.8 -> no loss. Pairs across groups do not count.
    assert float(sibling_margin_loss(values, labels, groups)) == pytest.approx((1.3 + 0) / 2)
    alone = torch.tensor([0, 1, 2, 3])
    assert float(sibling_margin_loss(values, labels, alone)) == 0.0


def test_sibling_group_sampler_keeps_groups_together_and_reshuffles() -> None:
    from qlass.qnet.ranking import SiblingGroupSampler, sibling_groups

    steps = synthetic_steps(4)
    groups = sibling_groups(steps)
    assert len(set(groups)) == 8  # 4 tasks x 2 states, 3 candidates each
    sampler = SiblingGroupSampler(groups, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(len(steps)))
    for order in (first, second):
        runs = [groups[i] for i in order]
        assert all(len(set(runs[k : k + 3])) == 1 for k in range(0, len(runs), 3))
    assert first != second


async def test_training_with_the_ranking_loss_orders_siblings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import asyncio

    settings = TrainSettings(
        output_dir=tmp_path / "qnet",
        head_dim=64,
        batch_size=6,
        micro_batch_size=6,
        max_steps=40,
        lr=1e-3,
        max_length=512,
        dev_fraction=0.25,
        use_cpu=True,
        rank_weight=1.0,
    )
    result = await asyncio.to_thread(train_qnet, synthetic_steps(12), tiny_model_dir, settings)
    assert result.steps == 40
    assert result.settings["rank_weight"] == 1.0
    assert result.dev_sibling_accuracy is not None and result.dev_sibling_accuracy > 0.8
