"""A small study end to end on TextWorldExpress: two seeds through the real pipeline into
one store, then the summary checked against the stored episodes and recomputed intervals."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from qlass.cli import app
from qlass.config import RunConfig, load_config
from qlass.errors import ConfigError
from qlass.report.stats import grid_interval
from qlass.report.study import STUDY_MD, STUDY_PNG, summarise_study, write_study_report
from qlass.runtime.progress import NullProgress, ProgressBar
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.stages.evaluation import eval_stage_label
from qlass.runtime.study import StudyRunner, member_config, seed_list
from qlass.storage import TreeStore

OVERRIDES = [
    "name=tiny-study",
    "env.games=[coin]",
    "env.params=numLocations=2,includeDoors=0",
    "env.train_tasks=4",
    "env.eval_tasks=3",
    "env.max_steps=4",
    "env.pool_size=2",
    "policy.prompt=none",
    "policy.max_tokens=12",
    "policy.max_turns_in_prompt=2",
    "bc.epochs=4",
    "bc.lr=1e-2",
    "bc.layers=1",
    "bc.width=32",
    "bc.heads=2",
    "bc.vocab_size=512",
    "bc.max_length=256",
    "search.strategies=[greedy, sampled, best_of_n:2]",
    "search.value_model=random",
    "eval.concurrency=3",
]
STAGES = ("gold", "bc", "eval")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    return load_config(None, [*OVERRIDES, f"run_dir={tmp_path_factory.mktemp('study')}"])


def test_member_runs_share_the_store_and_differ_by_seed(base: RunConfig) -> None:
    member = member_config(base, 4)
    assert member.name == "tiny-study-seed4"
    assert member.seed == 4
    assert member.run_dir == base.directory / "seed4"
    assert member.store_url == base.store_url
    assert member.env == base.env and member.search == base.search
    assert seed_list(2, 3) == (2, 3, 4)


async def test_study_runs_each_seed_and_summarises_the_stored_episodes(base: RunConfig) -> None:
    result = await StudyRunner(base, (0, 1), stages=STAGES).run()
    assert result.seeds_done == (0, 1) and not result.stopped
    assert result.study.status == "done"

    async with await TreeStore.open(base.store_url) as store:
        members = await store.studies.members(result.study.id)
        assert [(m.seed, m.run_name) for m in members] == [
            (0, "tiny-study-seed0"),
            (1, "tiny-study-seed1"),
        ]
        grids: dict[str, list[list[float]]] = {}
        tasks: list[str] | None = None
        for member in members:
            run = await store.runs.get(member.run_id)
            assert run.seed == member.seed
            assert member.eval_stage == eval_stage_label(member_config(base, member.seed))
            for strategy in ("greedy", "sampled", "best_of_n:2"):
                episodes = await store.episodes.of_run(
                    run.id, stage=member.eval_stage, strategy=strategy
                )
                by_task = {e.task_key: e.final_score for e in episodes}
                assert len(by_task) == 3
                tasks = tasks or sorted(by_task)
                assert sorted(by_task) == tasks  # the same held-out tasks in every seed
                grids.setdefault(strategy, []).append([by_task[t] for t in tasks])

        summary = await summarise_study(store, base.name, resamples=500)
        assert summary.seeds == (0, 1) and summary.tasks == 3
        assert [s.strategy for s in summary.strategies] == ["greedy", "sampled", "best_of_n:2"]
        for stats in summary.strategies:
            grid = np.array(grids[stats.strategy])
            assert stats.reward.mean == pytest.approx(grid.mean())
            assert stats.per_seed_reward == pytest.approx(tuple(grid.mean(axis=1)))
            assert stats.reward == grid_interval(grid, resamples=500)
            assert stats.oracle_best_reward is None or stats.strategy == "best_of_n:2"
        pairs = {(p.a, p.b): p for p in summary.pairs}
        assert set(pairs) == {("sampled", "greedy"), ("best_of_n:2", "greedy")}
        diff = np.array(grids["best_of_n:2"]) - np.array(grids["greedy"])
        paired = pairs[("best_of_n:2", "greedy")]
        assert paired.reward == grid_interval(diff, resamples=500)
        assert paired.counts.wins + paired.counts.ties + paired.counts.losses == 6

        files = await asyncio.to_thread(write_study_report, summary, base.directory)
        assert (base.directory / STUDY_PNG) in files
        text = (base.directory / STUDY_MD).read_text()
        assert "best_of_n:2 - greedy" in text and "2 seeds (0, 1) x 3 dev tasks" in text


async def test_rerunning_a_study_redoes_nothing_and_more_seeds_add_runs(base: RunConfig) -> None:
    await StudyRunner(base, (0, 1), stages=STAGES).run()  # the module's first study
    async with await TreeStore.open(base.store_url) as store:
        before = {r.name: len(await store.episodes.of_run(r.id)) for r in await store.runs.all()}
    result = await StudyRunner(base, (0, 1, 2), stages=STAGES).run()
    assert result.seeds_done == (0, 1, 2)
    async with await TreeStore.open(base.store_url) as store:
        after = {r.name: len(await store.episodes.of_run(r.id)) for r in await store.runs.all()}
        assert {k: after[k] for k in before} == before  # nothing played again
        assert after["tiny-study-seed2"] == 9
        study = await store.studies.get(base.name)
        assert study.settings["seeds"] == [0, 1, 2]
        summary = await summarise_study(store, base.name, pairs=[("sampled", "greedy")])
        assert summary.seeds == (0, 1, 2)
        assert [(p.a, p.b) for p in summary.pairs] == [("sampled", "greedy")]


def test_a_study_refuses_changed_exploration_settings(base: RunConfig) -> None:
    changed = base.model_copy(update={"explore": base.explore.model_copy(update={"width": 3})})
    with pytest.raises(ConfigError, match="explore stage"):
        asyncio.run(StudyRunner(changed, (0,), stages=STAGES).run())


def test_study_show_prints_and_writes_the_tables(base: RunConfig, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "study",
            "show",
            base.name,
            "--db",
            base.store_url,
            "--out",
            str(out),
            "--resamples",
            "200",
            "--compare",
            "best_of_n:2-sampled",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best_of_n:2 - sampled" in result.output
    assert (out / STUDY_MD).exists() and (out / STUDY_PNG).exists()
    bad = CliRunner().invoke(
        app, ["study", "show", base.name, "--db", base.store_url, "--compare", "nonsense"]
    )
    assert bad.exit_code != 0


def test_study_run_command_resumes_the_study_and_prints_its_tables(base: RunConfig) -> None:
    """The seeds' stages are done (earlier tests), so the command only resumes and reports."""
    sets = [item for o in [*OVERRIDES, f"run_dir={base.directory}"] for item in ("--set", o)]
    result = CliRunner().invoke(
        app,
        ["study", "run", *sets, "--seed-list", "0,1", "--stages", ",".join(STAGES)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "paired differences" in result.output
    assert "best_of_n:2 - greedy" in result.output
    assert (base.directory / STUDY_MD).exists()
    bad = CliRunner().invoke(app, ["study", "run", *sets, "--stages", "gold,nope"])
    assert bad.exit_code != 0 and "unknown stage 'nope'" in bad.output


class _StopWhenTrainingStarts(NullProgress):
    """Requests a stop (through the loop, as a signal handler would) at the first progress
    report of the bar named ``description``."""

    def __init__(self, stop: StopSignal, description: str) -> None:
        self._stop = stop
        self._description = description
        self._loop = asyncio.get_running_loop()

    def bar(self, description: str, total: float | None) -> ProgressBar:
        if description != self._description:
            return super().bar(description, total)
        request = functools.partial(self._loop.call_soon_threadsafe, self._stop.request)

        class _Bar:
            def advance(self, amount: float = 1, **fields: Any) -> None:
                request()

            def update(self, **fields: Any) -> None:
                request()

        return _Bar()


async def test_a_study_stopped_during_training_is_marked_stopped_and_resumes(
    tmp_path: Path,
) -> None:
    base = load_config(None, [*OVERRIDES, "name=stopped-study", f"run_dir={tmp_path}"])
    stop = StopSignal()
    progress = _StopWhenTrainingStarts(stop, "behaviour cloning")
    stages = ("gold", "bc")
    result = await StudyRunner(base, (0, 1), stages=stages, progress=progress, stop=stop).run()
    assert result.stopped and result.seeds_done == ()
    assert result.study.status == "stopped"
    async with await TreeStore.open(base.store_url) as store:
        assert await store.studies.members(result.study.id) == []
        assert [s.name for s in await store.studies.all()] == ["stopped-study"]

    resumed = await StudyRunner(base, (0,), stages=stages).run()
    assert resumed.seeds_done == (0,) and resumed.study.status == "done"
    assert resumed.study.id == result.study.id
    async with await TreeStore.open(base.store_url) as store:
        members = await store.studies.members(result.study.id)
        assert [(m.seed, m.run_name) for m in members] == [(0, "stopped-study-seed0")]
