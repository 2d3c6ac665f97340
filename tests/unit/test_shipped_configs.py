"""Every config we ship loads, validates, and names tasks its environment has."""

from pathlib import Path

import pytest

from qlass.cli.demo_cmd import PRESETS, preset_config
from qlass.config import load_config
from qlass.envs.registry import list_tasks
from qlass.runtime.pipeline import drop_held_out

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.name
    tasks = list_tasks(
        config.env.name,
        "train",
        games=list(config.env.games) if config.env.games else None,
        params=config.env.params,
        limit=3,
    )
    assert tasks


@pytest.mark.parametrize("env", sorted(PRESETS))
@pytest.mark.parametrize("quick", [False, True])
def test_demo_presets_load_and_list_tasks(env: str, quick: bool) -> None:
    config = preset_config(env, quick=quick)
    games = list(config.env.games) if config.env.games else None
    listed = {
        split: list_tasks(config.env.name, split, games=games, params=config.env.params)
        for split in ("train", "dev", "test")
    }
    train = drop_held_out(listed["train"], listed["dev"] + listed["test"])
    assert len(train) >= (config.env.train_tasks or 1)
    assert len(listed["dev"]) >= (config.env.eval_tasks or 1)
    # Held-out games: no (game, variation) of dev or test is a training game.
    evaluated = {(t.name, t.variation) for t in listed["dev"] + listed["test"]}
    assert {(t.name, t.variation) for t in train}.isdisjoint(evaluated)


def test_paper_sciworld_split_overlap_is_dropped_from_training() -> None:
    """The paper's files list 54 "seen" (dev) variations in train as well."""
    train, dev, test = (list_tasks("scienceworld", s) for s in ("train", "dev", "test"))
    overlap = {(t.name, t.variation) for t in train} & {(t.name, t.variation) for t in dev}
    assert len(overlap) == 54
    kept = drop_held_out(train, dev + test)
    assert len(kept) == len(train) - 54
