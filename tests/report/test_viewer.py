"""The HTML tree viewer: chosen path, caps, escaping, stored Q labels and QNet scores in the
page, and (with a real headless Chromium) expand/collapse and a screenshot artifact."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from qlass.errors import UnknownNameError
from qlass.qnet.base import ValueQuery
from qlass.qnet.scorer import QNetScorer
from qlass.report import build_viewer, chosen_path
from qlass.report.viewer import select_nodes
from qlass.storage import TreeStore

from .conftest import Stored
from .demo_run import DemoRun, populate, task_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Tree 0 follows A to A1, tree 1 follows B to B2, tree 2 ties A/B and takes the first (A).
CHOSEN = (("root", "A", "A1"), ("root", "B", "B2"), ("root", "A", "A1"))


def _chosen_ids(demo: DemoRun) -> set[int]:
    return {demo.node_ids[t][name] for t, names in enumerate(CHOSEN) for name in names}


async def _stored_q(store: TreeStore, demo: DemoRun) -> tuple[dict[int, float], dict[int, float]]:
    raw: dict[int, float] = {}
    normalized: dict[int, float] = {}
    for task_id in demo.task_ids:
        raw |= await store.labels.values(demo.label_set_id, task_id, normalized=False)
        normalized |= await store.labels.values(demo.label_set_id, task_id, normalized=True)
    return raw, normalized


async def test_chosen_path_follows_the_highest_q_child(stored: Stored) -> None:
    demo = stored.demo
    for index, task_id in enumerate(demo.task_ids):
        tree = await stored.store.trees.load(task_id)
        q = await stored.store.labels.values(demo.label_set_id, task_id, normalized=False)
        expected = tuple(demo.node_ids[index][name] for name in CHOSEN[index])
        assert chosen_path(tree, q) == expected
        assert tree.root is not None and chosen_path(tree, {}) == (tree.root.id,)
        shown = select_nodes(tree, expected, 4)  # cap: the chosen path, then the shallowest
        assert set(expected) <= shown and len(shown) == 4
        assert select_nodes(tree, expected, 100) == {n.id for n in tree.nodes}


async def test_page_holds_escaped_text_and_the_stored_labels(
    stored: Stored, tmp_path: Path
) -> None:
    out = tmp_path / "view.html"
    result = await build_viewer(stored.store, "demo", out_file=out, scores=False)
    assert (result.path, result.trees, result.nodes_shown, result.scored_nodes) == (out, 3, 21, 0)
    page = await asyncio.to_thread(out.read_text)
    assert "<title>qlass trees: demo</title>" in page
    assert "<b>stove</b>" not in page and "&lt;b&gt;stove&lt;/b&gt;" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "Thought: I should try &lt;take coin&gt;." in page
    assert "invalid output" in page and "I am not sure &lt;what&gt; to do" in page
    assert "full observation (" in page  # the long observation is cut, the rest folded
    raw, normalized = await _stored_q(stored.store, stored.demo)
    shown_q = {
        int(node): float(q)
        for node, q in re.findall(r'data-node-id="(\d+)"[^>]*data-q="([^"]+)"', page)
    }
    assert shown_q == raw  # every labelled node, with its stored value
    for node_id, q in raw.items():
        summary = re.search(rf'id="node-{node_id}".*?</summary>', page, re.S)
        assert summary is not None
        assert f'<span class="q-raw">{q:.4f}</span>' in summary[0]
        assert f'<span class="q-norm">{normalized[node_id]:.4f}</span>' in summary[0]
    on_path = {int(n) for n in re.findall(r'class="node on-path[^"]*" id="node-(\d+)"', page)}
    assert on_path == _chosen_ids(stored.demo)
    opened = {int(n) for n in re.findall(r'id="node-(\d+)"[^>]*\bopen>', page)}
    assert opened == on_path
    assert "QNet scores not computed (--no-scores)" in page


async def test_caps_and_task_filter_are_stated(stored: Stored, tmp_path: Path) -> None:
    key = task_key(1)
    one = await build_viewer(stored.store, "demo", task_key=key, scores=False, max_nodes=4)
    assert one.path == stored.run_dir / f"tree-{stored.demo.task_ids[1]}.html"
    assert one.trees == 1 and one.nodes_shown == 4
    page = await asyncio.to_thread(one.path.read_text)
    assert key in page and task_key(0) not in page
    assert "4 of 7 nodes shown" in page and "not shown (node cap)" in page
    capped = await build_viewer(
        stored.store, "demo", out_file=tmp_path / "x.html", scores=False, max_trees=2
    )
    assert capped.trees == 2 and "2 trees shown (tree cap 2); 1 more" in capped.notes[0]
    with pytest.raises(UnknownNameError, match="no task"):
        await build_viewer(stored.store, "demo", task_key="nope", scores=False)
    with pytest.raises(UnknownNameError, match="no label set 99"):
        await build_viewer(stored.store, "demo", label_set_id=99, scores=False)


async def test_qnet_scores_of_nodes_equal_the_scorer(tmp_path: Path, qnet_checkpoint: Path) -> None:
    async with await TreeStore.open(tmp_path / "qlass.db") as store:
        demo = await populate(store, tmp_path, checkpoint=qnet_checkpoint)
        result = await build_viewer(store, "demo", device="cpu")
        tree = await store.trees.load(demo.task_ids[0])
    assert result.scored_nodes == 18  # every non-root node of the three trees
    page = await asyncio.to_thread(result.path.read_text)
    assert f"QNet scores from {qnet_checkpoint}" in page
    scorer = await asyncio.to_thread(QNetScorer.from_pretrained, qnet_checkpoint, device="cpu")
    nodes = [n for n in tree.nodes if n.parent_id is not None]
    direct = await asyncio.to_thread(
        scorer.score_batch, [ValueQuery(tree.history(n.parent_id), n.text) for n in nodes]
    )
    await scorer.aclose()
    for node, score in zip(nodes, direct, strict=True):
        summary = re.search(rf'id="node-{node.id}".*?</summary>', page, re.S)
        assert summary is not None and f"QNet {score:.4f}" in summary[0]


@pytest.mark.browser
def test_viewer_in_headless_chromium(tmp_path: Path, qnet_checkpoint: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    async def build() -> tuple[DemoRun, Path, dict[int, float]]:
        async with await TreeStore.open(tmp_path / "qlass.db") as store:
            demo = await populate(store, tmp_path, checkpoint=qnet_checkpoint)
            result = await build_viewer(store, "demo", device="cpu")
            raw, _ = await _stored_q(store, demo)
        return demo, result.path, raw

    demo, path, raw = asyncio.run(build())
    artifacts = Path(os.environ.get("QLASS_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report-viewer.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(path.resolve().as_uri())
            assert page.title() == "qlass trees: demo"
            assert page.locator("h1").inner_text() == "Exploration trees of run demo"
            assert page.locator("section.tree h2").all_inner_texts() == [
                task_key(i) for i in range(3)
            ]
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 1200, "the page overflows horizontally"
            on_path = page.eval_on_selector_all(
                "details.node.on-path", "els => els.map(e => [Number(e.dataset.nodeId), e.open])"
            )
            assert {node for node, _ in on_path} == _chosen_ids(demo)
            assert all(is_open for _, is_open in on_path)
            # Q labels shown equal the stored ones (the text and the exact value).
            for node_id, q in raw.items():
                node = page.locator(f"#node-{node_id}")
                assert float(node.get_attribute("data-q") or "nan") == q
                raw_text = node.locator(":scope > summary .q-raw").text_content()
                assert raw_text == f"{q:.4f}"
            # Tree 0's node B is off the chosen path: collapsed until its summary is clicked.
            b = page.locator(f"#node-{demo.node_ids[0]['B']}")
            body = b.locator(":scope > .body")
            door = page.locator(f"#node-{demo.node_ids[0]['B2']} > summary")
            assert b.get_attribute("open") is None
            assert not body.is_visible() and not door.is_visible()
            b.locator(":scope > summary").click()
            assert body.is_visible() and door.is_visible()
            assert "open door" in door.inner_text()
            assert "QNet" in door.inner_text()
            # "chosen path only" collapses B again; the chosen path stays open.
            page.locator(f"#tree-{demo.task_ids[0]} button[data-expand=path]").click()
            assert not body.is_visible()
            assert page.locator(f"#node-{demo.node_ids[0]['A1']} > summary").is_visible()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
