"""The HTML page of evaluation episodes: every stored step with its candidates and values,
Best-of-N's rollouts, escaping, stage and task selection, and (in a real headless
Chromium) the filters, the side-by-side panes and a screenshot artifact."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from qlass.backends.scripted import ScriptedPolicy
from qlass.config import RunConfig
from qlass.envs.pool import EnvPool
from qlass.errors import UnknownNameError
from qlass.report import build_episode_viewer
from qlass.report.episodes import default_pair
from qlass.report.tables import result_rows
from qlass.report.templating import number
from qlass.runtime.context import SearchContext
from qlass.runtime.evaluate import evaluate_strategy
from qlass.runtime.strategies import make_strategy
from qlass.storage import EpisodeRecord, TreeStore, trajectory_from_json
from qlass.types import TaskSpec
from tests.runtime.toys import Corridor, FunctionValueModel

from .conftest import Stored
from .demo_run import NEW_STAGE, OLD_STAGE, STRATEGIES
from .test_viewer import CHROMIUM, CHROMIUM_ARGS


def _template(page: str, episode_id: int) -> str:
    found = re.search(rf'<template id="episode-{episode_id}">(.*?)</template>', page, re.S)
    assert found is not None, f"episode {episode_id} is not in the page"
    return found[1]


def _steps(template: str) -> list[str]:
    return re.findall(r'<li class="step[^"]*" data-step="\d+">(.*?)</li>', template, re.S)


async def test_every_episode_of_the_stage_with_its_steps_and_values(
    stored: Stored, tmp_path: Path
) -> None:
    out = tmp_path / "episodes.html"
    result = await build_episode_viewer(stored.store, "demo", out_file=out)
    assert (result.path, result.stage, result.episodes, result.tasks) == (out, NEW_STAGE, 10, 2)
    assert result.strategies == STRATEGIES
    assert any(OLD_STAGE in note for note in result.notes)
    page = await asyncio.to_thread(out.read_text)
    assert "<title>qlass episodes: demo</title>" in page
    records = await stored.store.episodes.of_run(stored.demo.run_id, stage=NEW_STAGE)
    assert len(records) == 10
    for record in records:
        template = _template(page, record.id)
        trajectory = trajectory_from_json(record.trajectory)
        steps = _steps(template)
        assert len(steps) == len(trajectory.steps)
        assert f"final reward <b>{record.final_score:.3f}</b>" in template
        for shown, step in zip(steps, trajectory.steps, strict=True):
            assert f"score {step.result.score:.3f}" in shown
            rows = re.findall(r'<tr class="candidate([^"]*)">(.*?)</tr>', shown, re.S)
            assert len(rows) == len(step.considered)
            for (classes, row), scored in zip(rows, step.considered, strict=True):
                assert f'<td class="value">{number(scored.value)}</td>' in row
                assert ("invalid" in classes) == (scored.candidate.action is None)
            if step.considered:  # the executed one is marked, and only it
                assert [" chosen" in c for c, _ in rows].count(True) == 1
                assert " chosen" in rows[0][0]  # the fixture's chosen candidate comes first
        # The episode's observation with markup is text, never markup.
        assert "&lt;b&gt;locked&lt;/b&gt; door &amp; &lt;script&gt;" in template
    assert "<b>locked</b>" not in page and "<script>alert" not in page
    assert "I am lost &lt;here&gt;" in page and "same text as #1" in page
    # The per-strategy table holds what `qlass report` tables for the stage.
    for row in result_rows(NEW_STAGE, records):
        report = row.report
        assert (
            f"<tr><td>{report.strategy}</td><td>{report.episodes}</td>"
            f"<td>{100 * report.avg_reward:.1f}</td><td>{100 * report.success_rate:.0f}%</td>"
        ) in page


async def test_best_of_n_shows_every_rollouts_value_and_score(stored: Stored) -> None:
    result = await build_episode_viewer(stored.store, "demo")
    assert result.path == stored.run_dir / "episodes.html"
    page = await asyncio.to_thread(result.path.read_text)
    for record in await stored.store.episodes.of_run(
        stored.demo.run_id, stage=NEW_STAGE, strategy="best_of_n:4"
    ):
        template = _template(page, record.id)
        info = record.trajectory["info"]
        rows = re.findall(r'<tr class="rollout( chosen)?">(.*?)</tr>', template, re.S)
        assert len(rows) == 4
        for index, (chosen, row) in enumerate(rows):
            assert bool(chosen) == (index == info["chosen"])
            assert f'<td class="value">{number(info["values"][index])}</td>' in row
            assert f"<td>{info['scores'][index]:.3f}</td>" in row
        assert "–" in rows[0][1]  # the invalid rollout is not scored (stored as null)
        assert f"{info['oracle_best_score']:.3f} (an upper bound" in template


async def test_stage_task_and_cap_choose_what_is_shown(stored: Stored, tmp_path: Path) -> None:
    old = await build_episode_viewer(
        stored.store, "demo", stage=OLD_STAGE, out_file=tmp_path / "old.html"
    )
    assert (old.stage, old.episodes, old.strategies) == (OLD_STAGE, 4, ("greedy", "qlass:2"))
    one = await build_episode_viewer(
        stored.store,
        "demo",
        task_key="textworld_express/coin/dev/1",
        out_file=tmp_path / "one.html",
    )
    page = await asyncio.to_thread(one.path.read_text)
    assert (one.episodes, one.tasks) == (
        5,
        1,
    ) and 'data-task="textworld_express/coin/dev/0"' not in page
    capped = await build_episode_viewer(
        stored.store, "demo", max_tasks=1, out_file=tmp_path / "cap.html"
    )
    assert capped.tasks == 1 and any("1 more tasks not shown" in n for n in capped.notes)
    with pytest.raises(UnknownNameError, match="no episodes of stage 'eval:nope'"):
        await build_episode_viewer(stored.store, "demo", stage="eval:nope")


def test_default_pair_puts_qlass_beside_best_of_n_of_its_budget() -> None:
    assert default_pair(STRATEGIES) == ("qlass:2", "best_of_n:2")
    assert default_pair(["greedy", "best_of_n:4", "qlass:3"]) == ("qlass:3", "best_of_n:4")
    assert default_pair(["greedy", "sampled"]) == ("greedy", "sampled")
    assert default_pair(["greedy"]) == ("greedy", None) and default_pair([]) == (None, None)


async def test_episodes_played_by_the_real_strategies_show_what_they_considered(
    tmp_path: Path,
) -> None:
    tasks = [TaskSpec("corridor", "walk", i, "dev") for i in range(2)]
    policy = ScriptedPolicy(texts=["Thought: go\nAction: move right", "Action: move left"])
    value = FunctionValueModel(lambda text: 0.75 if "right" in text else 0.25)
    ctx = SearchContext(
        policy=policy, envs=EnvPool.around(Corridor(2)), value_model=value, max_steps=4
    )
    config = RunConfig(name="played", run_dir=tmp_path)
    async with await TreeStore.open(tmp_path / "qlass.db") as store:
        run = await store.runs.create("played", config=config.model_dump(mode="json"))
        for name in ("greedy", "best_of_n:3", "qlass:2", "beam:2"):
            strategy = make_strategy(name)
            _, trajectories = await evaluate_strategy(strategy, tasks, ctx, concurrency=1, seed=7)
            for trajectory in trajectories:
                await store.episodes.add(run.id, "eval:dev:played", strategy.name, trajectory)
        result = await build_episode_viewer(store, "played")
        records = await store.episodes.of_run(run.id)
    page = await asyncio.to_thread(result.path.read_text)
    assert result.episodes == 8
    guided = 0
    for record in records:
        trajectory = trajectory_from_json(record.trajectory)
        template = _template(page, record.id)
        steps = _steps(template)
        assert len(steps) == len(trajectory.steps)
        for shown, step in zip(steps, trajectory.steps, strict=True):
            assert f'<span class="action">{step.candidate.action}</span>' in shown
            values = re.findall(r'<td class="value">([^<]*)</td>', shown)
            assert values == [number(c.value) for c in step.considered]
            guided += len(values)
        if record.strategy == "best_of_n:3":
            info = record.trajectory["info"]
            shown_values = re.findall(
                r'<tr class="rollout[^"]*">.*?<td class="value">([^<]*)</td>', template, re.S
            )
            assert shown_values == [number(v) for v in info["values"]]
        if record.strategy == "beam:2":  # its values are beams, not Best-of-N rollouts
            assert 'class="rollout' not in template
            values = record.trajectory["info"]["values"]
            assert f"<i>values</i> {json.dumps(values)}" in template
    assert guided >= 4  # QLASS scored two candidates at each of its steps
    assert "0.7500" in page and "0.2500" in page


@pytest.mark.browser
def test_episode_viewer_in_headless_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from .demo_run import populate

    async def build() -> tuple[Path, list[EpisodeRecord]]:
        async with await TreeStore.open(tmp_path / "qlass.db") as store:
            demo = await populate(store, tmp_path / "run")
            result = await build_episode_viewer(store, "demo")
            return result.path, await store.episodes.of_run(demo.run_id, stage=NEW_STAGE)

    path, records = asyncio.run(build())
    ids = {(r.task_key, r.strategy): r.id for r in records}
    steps = {r.id: r.steps for r in records}
    task0, task1 = "textworld_express/coin/dev/0", "textworld_express/coin/dev/1"
    artifacts = Path(os.environ.get("QLASS_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report-episodes.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.resolve().as_uri())
            assert page.title() == "qlass episodes: demo"
            rows = page.locator("#episode-list tbody tr")
            assert rows.count() == 10

            def visible_rows() -> list[tuple[str, str, str]]:
                return page.eval_on_selector_all(
                    "#episode-list tbody tr:not([hidden])",
                    "rows => rows.map(r => [r.dataset.task, r.dataset.strategy, r.dataset.outcome])",
                )

            # Filters: by strategy, by outcome, both, and the count says so.
            page.select_option("#filter-strategy", "qlass:4")
            assert {s for _, s, _ in visible_rows()} == {"qlass:4"} and len(visible_rows()) == 2
            page.select_option("#filter-strategy", "")
            page.select_option("#filter-outcome", "success")
            shown = visible_rows()
            assert shown and all(o == "success" for _, _, o in shown)
            assert len(shown) == sum(r.success for r in records)
            page.select_option("#filter-outcome", "failure")
            page.select_option("#filter-strategy", "greedy")
            assert all(s == "greedy" and o == "failure" for _, s, o in visible_rows())
            count = page.locator("#shown-count").inner_text()
            assert count == f"{len(visible_rows())} of 10 episodes shown"
            page.select_option("#filter-strategy", "")
            page.select_option("#filter-outcome", "")
            page.fill("#filter-task", "dev/1")
            assert {t for t, _, _ in visible_rows()} == {task1}
            page.fill("#filter-task", "")

            # The panes open QLASS and Best-of-N of the same budget on the first task.
            left, right = page.locator("#pane-left"), page.locator("#pane-right")
            assert left.locator("article").get_attribute("data-episode") == str(
                ids[(task0, "qlass:2")]
            )
            assert right.locator("article").get_attribute("data-episode") == str(
                ids[(task0, "best_of_n:2")]
            )
            # A click on a row opens that episode in the left pane, the right one follows
            # the task with its own strategy; both show their steps.
            page.locator(f'#episode-list tr[data-episode="{ids[(task1, "qlass:4")]}"]').click()
            assert left.locator("article").get_attribute("data-episode") == str(
                ids[(task1, "qlass:4")]
            )
            assert right.locator("article").get_attribute("data-episode") == str(
                ids[(task1, "best_of_n:2")]
            )
            page.locator("#pane-right select.pane-strategy").select_option("greedy")
            assert right.locator("article").get_attribute("data-episode") == str(
                ids[(task1, "greedy")]
            )
            assert left.locator("li.step").count() == steps[ids[(task1, "qlass:4")]]
            assert right.locator("li.step").count() == steps[ids[(task1, "greedy")]]
            # QLASS's candidates and their values are on screen; greedy has none.
            values = left.locator("li.step").first.locator("td.value").all_inner_texts()
            assert len(values) == 4 and values[1] == "–"  # the invalid candidate is unscored
            assert float(values[0]) == pytest.approx(0.89)
            assert right.locator("table.candidates").count() == 0
            # Markup in an observation is shown as text.
            first = left.locator("li.step").first.locator(".observation pre")
            assert "<b>locked</b> door & <script>alert('ep')</script>" in first.inner_text()
            assert first.locator("b, script").count() == 0
            # The URL names the comparison; opening it shows the same panes.
            assert "left=qlass%3A4" in page.url and "right=greedy" in page.url
            again = browser.new_page(viewport={"width": 1400, "height": 1000})
            again.goto(page.url)
            assert again.locator("#pane-right article").get_attribute("data-episode") == str(
                ids[(task1, "greedy")]
            )
            again.close()
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 1400, "the page overflows horizontally"
            page.locator("#pane-right select.pane-strategy").select_option("best_of_n:4")
            page.screenshot(path=str(screenshot), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
