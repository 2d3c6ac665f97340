"""``qlass export``: expert trajectories (real TextWorldExpress gold paths), Q-labelled
triples and episodes written as parquet and read back with ``datasets.load_dataset``
equal to what the store and the expert file hold."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qlass.chat import value_messages
from qlass.cli import app
from qlass.envs.gold import export_gold
from qlass.envs.registry import env_prompt, list_tasks
from qlass.errors import MissingDependencyError
from qlass.report.datasets import export_datasets
from qlass.storage import TreeStore, trajectory_from_json

from .conftest import Stored
from .demo_run import populate


def _load(files: dict[str, Path], cache: Path) -> dict[str, list[dict[str, Any]]]:
    from datasets import load_dataset

    return {
        name: list(load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache))
        for name, path in files.items()
    }


async def _gold(run_dir: Path) -> list[dict[str, Any]]:
    tasks = await asyncio.to_thread(
        list_tasks, "textworld_express", "train", games=["coin"], params="", limit=2
    )
    report = await export_gold("textworld_express", tasks, run_dir / "expert.jsonl")
    assert report.written == 2
    text = await asyncio.to_thread((run_dir / "expert.jsonl").read_text)
    return [json.loads(line) for line in text.splitlines()]


async def test_export_round_trips_through_load_dataset(stored: Stored, tmp_path: Path) -> None:
    expert = await _gold(stored.run_dir)
    result = await export_datasets(stored.store, "demo")
    assert result.directory == stored.run_dir / "datasets"
    assert set(result.files) == {"expert", "triples", "episodes"} and result.notes == ()
    loaded = await asyncio.to_thread(_load, dict(result.files), tmp_path / "hf")
    assert {name: len(rows) for name, rows in loaded.items()} == dict(result.rows)

    # Expert trajectories: the BC conversations, with the run's system prompt in place of
    # the file's ("full": instructions and the in-context example), as BC trains on them.
    system = env_prompt("textworld_express").render(with_example=True)
    assert expert[0]["messages"][0]["content"] != system
    assert [row["messages"] for row in loaded["expert"]] == [
        [{"role": "system", "content": system}, *r["messages"][1:]] for r in expert
    ]
    assert [row["task_key"] for row in loaded["expert"]] == [r["task"]["key"] for r in expert]
    assert all(row["success"] and row["final_score"] == 1.0 for row in loaded["expert"])

    # Triples: what QNet training exports from the run's label set, with the same cap.
    config = stored.demo.config
    triples = await stored.store.export_triples(
        stored.demo.label_set_id, max_per_tree=config.labels.max_triples_per_tree, seed=config.seed
    )
    assert result.label_set_id == stored.demo.label_set_id and len(triples) == 15
    for row, triple in zip(loaded["triples"], triples, strict=True):
        assert (row["task_key"], row["tree_id"]) == (triple.task_key, triple.tree_id)
        assert (row["candidate_text"], row["q"]) == (triple.candidate_text, triple.q)
        assert row["instruction"] == triple.history.instruction
        assert [(t["text"], t["action"], t["observation"]) for t in row["turns"]] == [
            (t.text, t.action, t.observation) for t in triple.history.turns
        ]
        assert row["messages"] == value_messages(triple.history, triple.candidate_text)

    # Episodes: every stored one, every step with the considered candidates' values.
    records = await stored.store.episodes.of_run(stored.demo.run_id)
    assert [row["episode_id"] for row in loaded["episodes"]] == [r.id for r in records]
    for row, record in zip(loaded["episodes"], records, strict=True):
        trajectory = trajectory_from_json(record.trajectory)
        assert (row["stage"], row["strategy"], row["task_key"]) == (
            record.stage,
            record.strategy,
            record.task_key,
        )
        assert (row["final_score"], row["success"]) == (record.final_score, record.success)
        assert row["completion_tokens"] == record.completion_tokens
        assert len(row["steps"]) == len(trajectory.steps)
        for shown, step in zip(row["steps"], trajectory.steps, strict=True):
            assert shown["observation"] == step.result.observation
            assert shown["value"] == step.value
            assert [(c["text"], c["value"]) for c in shown["candidates"]] == [
                (c.candidate.text, c.value) for c in step.considered
            ]
        info = json.loads(row["info"])
        assert info == dict(record.trajectory["info"])
        if record.strategy.startswith("best_of_n"):
            assert info["values"][0] is None and info["chosen"] == len(info["values"]) - 1
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "system" and roles.count("assistant") == len(trajectory.steps)


async def test_the_dataset_card_lets_load_dataset_read_the_folder(
    stored: Stored, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = await export_datasets(stored.store, "demo", out_dir=out, max_triples_per_tree=2)
    assert "expert" not in result.files  # this run has no expert.jsonl, and says so
    assert any("no expert trajectories" in note for note in result.notes)
    assert result.rows["triples"] == 6  # two per tree, as asked

    def load() -> tuple[list[dict[str, Any]], str]:
        from datasets import load_dataset

        triples = load_dataset(str(out), "triples", split="train", cache_dir=tmp_path / "hf")
        return list(triples), (out / "README.md").read_text()

    rows, card = await asyncio.to_thread(load)
    assert len(rows) == 6 and card.startswith("---\nconfigs:")
    assert "## triples (6 rows)" in card and "gamma 0.9" in card


async def test_missing_datasets_package_is_a_clear_error(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'qlass\[datasets\]'"):
        await export_datasets(stored.store, "demo")
    assert not (stored.run_dir / "datasets").exists()


def test_cli_export_prints_what_it_wrote(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, run_dir = tmp_path / "store.db", tmp_path / "runs" / "demo"

    async def build() -> None:
        async with await TreeStore.open(db) as store:
            await populate(store, run_dir)

    asyncio.run(build())
    result = cli.invoke(app, ["export", "demo", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(run_dir / "datasets")
    assert "triples: 15 rows" in result.output and "episodes: 14 rows" in result.output
    monkeypatch.setitem(sys.modules, "datasets", None)
    result = cli.invoke(app, ["export", "demo", "--db", str(db)])
    assert isinstance(result.exception, MissingDependencyError)
