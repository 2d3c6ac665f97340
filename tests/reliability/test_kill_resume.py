"""SIGKILL ``qlass explore`` at seeded random points and resume it: nothing committed is
lost, changed or done twice, and the trees and Q labels equal an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.campaign import finish_reference, kill_campaign, start_reference

SMALL = ["env.train_tasks=4", "env.max_steps=6", "explore.max_depth=4"]
LARGE = ["env.train_tasks=10", "env.max_steps=8", "explore.max_depth=5"]


def _assert_clean(report) -> None:  # type: ignore[no-untyped-def]
    assert report.problems == []
    assert report.lost_nodes == report.changed_nodes == 0
    assert report.repeated_steps == report.repeated_samples == 0
    assert report.duplicate_nodes == 0
    assert report.tree_mismatches == report.label_mismatches == 0
    assert report.nodes == report.reference_nodes


def test_five_kills_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    proc, db = start_reference(tmp_path, "crash", SMALL)  # runs while the campaign does
    report = kill_campaign(
        tmp_path,
        kills=5,
        seed=1,
        extra=SMALL,
        per_run=20,
        reference=lambda: finish_reference(proc, db, "crash"),
    )
    assert report.kills == 5
    _assert_clean(report)


@pytest.mark.slow
def test_twenty_kills_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    proc, db = start_reference(tmp_path, "crash", LARGE)
    report = kill_campaign(
        tmp_path,
        kills=24,
        seed=7,
        extra=LARGE,
        per_run=15,
        reference=lambda: finish_reference(proc, db, "crash"),
    )
    assert report.kills >= 20
    _assert_clean(report)


@pytest.mark.slow
def test_twenty_kills_with_a_local_model_lose_nothing_and_repeat_nothing(
    tmp_path: Path, bc_policy_dir: Path
) -> None:
    """The same with a real (tiny, BC-trained) transformers policy: its seeded samples come
    from the cache after a kill, or are drawn again identically (batched == alone)."""
    extra = [
        *SMALL,
        "policy.backend=hf",
        f"policy.model={bc_policy_dir}",
        "policy.device=cpu",
        "policy.max_tokens=12",
        "policy.max_turns_in_prompt=2",
    ]
    proc, db = start_reference(tmp_path, "crash", extra)
    report = kill_campaign(
        tmp_path,
        kills=20,
        seed=3,
        extra=extra,
        per_run=6,
        reference=lambda: finish_reference(proc, db, "crash"),
    )
    assert report.kills >= 20
    _assert_clean(report)
