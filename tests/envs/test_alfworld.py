"""ALFWorld without its data or package: clear errors, task listing from the data layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlass.envs.alfworld import ALFWorldEnv, resolve_data_dir
from qlass.envs.registry import create_env, list_tasks
from qlass.errors import MissingDataError, MissingDependencyError
from qlass.types import TaskSpec

GAMES = {
    "train": [
        "pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_1",
        "pick_clean_then_place_in_recep-Spatula-None-Drawer-1/trial_T20190909_2",
        "pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_0",
        "look_at_obj_in_light-Book-None-DeskLamp-301/trial_T20190907_3",
        "pick_and_place_simple-Apple-None-Fridge-2-movable/trial_T1",  # skipped like ALFWorld
    ],
    "valid_seen": ["pick_heat_then_place_in_recep-Egg-None-Fridge-5/trial_T1"],
    "valid_unseen": ["pick_two_obj_and_place-CD-None-Safe-302/trial_T2"],
}


@pytest.fixture
def alfworld_data(tmp_path: Path) -> Path:
    for split, games in GAMES.items():
        for game in games:
            folder = tmp_path / "json_2.1.1" / split / game
            folder.mkdir(parents=True)
            (folder / "game.tw-pddl").write_text("{}")
    (tmp_path / "json_2.1.1" / "train" / "no-game" / "trial_X").mkdir(parents=True)
    return tmp_path


def test_no_data_says_what_to_download_and_where(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(MissingDataError, match=r"alfworld-download.*ALFWORLD_DATA"):
        create_env("alfworld")
    with pytest.raises(MissingDataError, match="alfworld-download"):
        list_tasks("alfworld", "train")


def test_a_directory_without_the_games_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(
        MissingDataError, match=rf"{tmp_path} \(from ALFWORLD_DATA\) has no json_2.1.1"
    ):
        resolve_data_dir()


def test_tasks_are_listed_from_the_data_layout(
    alfworld_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(alfworld_data))
    train = list_tasks("alfworld", "train")
    assert [t.name for t in train] == [
        "look_at_obj_in_light-Book-None-DeskLamp-301/trial_T20190907_3",
        "pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_0",
        "pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_1",
        "pick_clean_then_place_in_recep-Spatula-None-Drawer-1/trial_T20190909_2",
    ]
    assert {(t.env, t.variation, t.split) for t in train} == {("alfworld", 0, "train")}
    picks = list_tasks("alfworld", "train", games=["pick_and_place_simple"], limit=1)
    assert [t.name for t in picks] == ["pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_0"]
    seen = list_tasks("alfworld", "seen", data_dir=str(alfworld_data))
    assert [(t.name, t.split) for t in seen] == [(GAMES["valid_seen"][0], "dev")]
    assert [t.split for t in list_tasks("alfworld", "unseen")] == ["test"]


async def test_without_the_package_the_env_names_the_extra(alfworld_data: Path) -> None:
    try:
        import alfworld  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only where the extra is installed
        pytest.skip("alfworld is installed")
    env = ALFWorldEnv(data_dir=alfworld_data)
    task = TaskSpec("alfworld", GAMES["valid_seen"][0], 0, "dev")
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'qlass\[alfworld\]'"):
            await env.reset(task)
        with pytest.raises(MissingDataError, match="game file missing"):
            await env.reset(TaskSpec("alfworld", "pick-X/trial_none", 0, "dev"))
    finally:
        await env.close()
