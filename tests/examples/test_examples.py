"""Every example script runs in its fast mode, as a user would run it, and prints what it
promises. The scripts are started together (one process each, see conftest.py) and
awaited per test.

The models are small real ones made for the tests (tests/api/models.py): a BC policy for
TextWorldExpress coin and an untrained QNet; ``guide_api_model.py`` is checked with its
servers in ``test_guide_api_model.py``.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from qlass.storage import TreeStore
from tests.examples.conftest import EXAMPLES, Examples


def test_every_example_has_a_header_and_a_fast_mode() -> None:
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert {p.name for p in scripts} >= {
        "embed_in_your_app.py",
        "guide_api_model.py",
        "langgraph_node.py",
        "resume_exploration.py",
        "your_own_environment.py",
    }
    for script in scripts:
        lines = script.read_text().splitlines()
        header = [line for line in lines[:15] if line.startswith("#")]
        assert len(header) >= 5, f"{script.name}: no comment header"
        assert any("python examples/" in line for line in header), script.name
        assert "--fast" in script.read_text(), script.name
        assert len(lines) <= 130, f"{script.name} is {len(lines)} lines long"


def test_embed_in_your_app(examples: Examples) -> None:
    out = examples.wait("embed_in_your_app.py").stdout
    assert out.startswith("task: Your task is to")
    turns = re.findall(r"^turn (\d+): '([^']+)' -> score ([\d.]+) \((\d+) completion", out, re.M)
    assert 1 <= len(turns) <= 4
    assert all(int(tokens) > 0 for *_, tokens in turns)
    # before each executed turn: the two scored candidates, the chosen one marked
    blocks = re.split(r"^turn \d+: .*$", out, flags=re.M)[:-1]
    for block, (_, action, _, _) in zip(blocks, turns, strict=False):
        candidates = re.findall(r"^  (->|  ) Q=(-?[\d.]+) +(.+)$", block, re.M)
        assert len(candidates) >= 2
        chosen = [c for c in candidates if c[0] == "->"]
        assert len(chosen) == 1 and chosen[0][2] == action
        assert float(chosen[0][1]) == max(float(c[1]) for c in candidates)
    assert re.search(r"^done: success=(True|False) after \d turns$", out, re.M)


def test_your_own_environment(examples: Examples) -> None:
    out = examples.wait("your_own_environment.py").stdout
    rows = dict(re.findall(r"^(greedy|qlass:2) +(avg score .*)$", out, re.M))
    assert set(rows) == {"greedy", "qlass:2"}, out
    for row in rows.values():
        match = re.match(r"avg score ([\d.]+)  success (\d)/2  tokens (\d+)  actions \[(.*)\]", row)
        assert match is not None, row
        assert 0.0 <= float(match[1]) <= 1.0 and int(match[3]) > 0 and match[4]
    assert re.search(r"^callback  score [\d.]+  steps [1-3]$", out, re.M)


def test_langgraph_node(examples: Examples) -> None:
    out = examples.wait("langgraph_node.py").stdout
    steps = re.findall(r"^step (\d+): (\S.*) from \[(.*)\]$", out, re.M)
    final = re.search(r"^final: score ([\d.]+) success (True|False) steps (\d+)$", out, re.M)
    assert final is not None, out
    assert 1 <= int(final[3]) <= 4
    assert [int(s[0]) for s in steps] == list(range(1, int(final[3]) + 1))
    for _, _, scored in steps:
        assert re.fullmatch(r"(.+=-?[\d.]+)(, .+=-?[\d.]+)*", scored)


def test_resume_exploration(examples: Examples) -> None:
    out = examples.wait("resume_exploration.py").stdout
    first = re.search(r"^interrupted: (\d+) nodes committed, stopped=True$", out, re.M)
    resumed = re.search(
        r"^resumed: (\d+) new nodes, total (\d+); first run's nodes kept unchanged: True;",
        out,
        re.M,
    )
    again = re.search(r"^again: stage skipped=True, nodes (\d+) \(nothing redone\)$", out, re.M)
    assert first and resumed and again, out
    assert int(first[1]) >= 4 and int(resumed[1]) > 0
    assert int(resumed[2]) == int(first[1]) + int(resumed[1]) == int(again[1])
    # the store agrees: that many nodes, and no tree position was made twice
    store_path = Path(re.search(r"^store: sqlite\+aiosqlite:///(.+)$", out, re.M)[1])  # type: ignore[index]

    async def positions() -> list[tuple[int, int | None, int]]:
        async with await TreeStore.open(store_path) as store:
            run = await store.runs.get("resume-example")
            found = []
            for task in await store.tasks.of_run(run.id):
                assert task.status == "done"
                tree = await store.trees.load(task.id)
                found += [(n.task_id, n.parent_id, n.sample_index) for n in tree.nodes]
            return found

    found = asyncio.run(positions())
    assert len(found) == int(resumed[2])
    assert len(set(found)) == len(found)


def test_example_configs_load() -> None:
    from qlass.config import load_config

    configs = sorted((EXAMPLES / "configs").glob("*.toml"))
    assert "api-gpt4o.toml" in {c.name for c in configs}
    for path in configs:
        config = load_config(path)
        assert config.search.strategies, path.name
    api = load_config(EXAMPLES / "configs" / "api-gpt4o.toml")
    assert api.policy.backend == "litellm" and api.policy.api_key_env == "OPENAI_API_KEY"
    assert api.search.strategies == ("greedy", "best_of_n:2", "qlass:2")
