"""The env registry: names, aliases, lazy imports, errors that list the choices."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qlass.envs.base import Env, InvalidActionError, require_action
from qlass.envs.pool import EnvPool
from qlass.envs.registry import create_env, env_names, get_family, list_tasks, task_max_steps
from qlass.errors import ConfigError, UnknownNameError, UserError
from qlass.types import TaskSpec


def test_names_aliases_and_unknown_names() -> None:
    assert env_names() == ("textworld_express", "scienceworld", "webshop", "alfworld")
    assert get_family("TWX").name == "textworld_express"
    assert get_family("sciworld").name == "scienceworld"
    with pytest.raises(
        UnknownNameError,
        match="unknown env 'nethack'; choose one of: alfworld, scienceworld, textworld_express",
    ):
        get_family("nethack")
    with pytest.raises(UnknownNameError, match="coin"):
        list_tasks("twx", "train", games=["chess"])
    with pytest.raises(UnknownNameError, match="train, dev or test"):
        list_tasks("twx", "validation")
    with pytest.raises(ConfigError, match="takes no options"):
        list_tasks("twx", "train", source="paper")
    with pytest.raises(UserError, match="limit"):
        list_tasks("twx", "train", limit=-1)


def test_created_envs_follow_the_protocol_without_starting_a_simulator() -> None:
    env = create_env("textworld_express", step_timeout_s=5)
    assert isinstance(env, Env)
    assert env.pid is None  # type: ignore[attr-defined] - the JVM starts on first reset


def test_listing_needs_no_simulator_import() -> None:
    code = (
        "import sys; from qlass.envs.registry import list_tasks\n"
        "list_tasks('scienceworld', 'dev'); list_tasks('twx', 'test', limit=3)\n"
        "assert 'scienceworld' not in sys.modules and 'textworld_express' not in sys.modules\n"
        "assert 'py4j' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_max_steps_are_the_papers_where_it_set_them() -> None:
    assert task_max_steps(TaskSpec("scienceworld", "task-1-boil", 0, "train", "easy")) == 100
    assert (
        task_max_steps(TaskSpec("scienceworld", "inclined-plane-determine-angle", 0, "train"))
        is None
    )
    assert task_max_steps(TaskSpec("textworld_express", "coin", 0, "train")) is None


@pytest.mark.parametrize("bad", ["", " ", "\t\n"])
def test_require_action_rejects_empty_text(bad: str) -> None:
    with pytest.raises(InvalidActionError):
        require_action(bad)
    assert issubclass(InvalidActionError, ValueError)
    assert require_action("  open door ") == "open door"


def test_observation_comparison_is_the_familys_own() -> None:
    a = "In it, you see:\n\ta red cup\n\ta blue cup\nA door."
    reordered = "In it, you see:\n\ta blue cup\n\ta red cup\nA door."
    sciworld = get_family("scienceworld")
    assert sciworld.same_observation(a, a) and sciworld.same_observation(reordered, a)
    assert not sciworld.same_observation("In it, you see:\n\ta red cup\nA door.", a)
    assert not sciworld.same_observation("In it, you see:\n\ta red cup\n\ta green cup\nA door.", a)
    assert not sciworld.same_observation(a + "\n\ta red cup", a)
    for name in ("textworld_express", "webshop", "alfworld"):  # deterministic text
        assert get_family(name).same_observation(a, a)
        assert not get_family(name).same_observation(reordered, a)
    assert EnvPool.for_env("sciworld").same_observation == sciworld.same_observation


def test_scienceworld_ambiguity_menus_compare_by_their_options() -> None:
    """ScienceWorld numbers an ambiguous request's options in hash order (seen on a replay of
    find-living-thing): the same options renumbered are the same state, other options not."""
    head = "Ambiguous request: Please enter the number for the action you intended"
    recorded = f"{head}:\n0:\tfocus on greenhouse (in universe)\n1:\tfocus on hallway (in universe)"
    renumbered = (
        f"{head}:\n0:\tfocus on hallway (in universe)\n1:\tfocus on greenhouse (in universe)"
    )
    other = f"{head}:\n0:\tfocus on hallway (in universe)\n1:\tfocus on workshop (in universe)"
    sciworld = get_family("scienceworld")
    assert sciworld.same_observation(renumbered, recorded)
    assert not sciworld.same_observation(other, recorded)
    # numbers are ignored only in that menu: elsewhere a numbered line is content
    assert not sciworld.same_observation(
        "Steps:\n0:\tboil\n1:\tfreeze", "Steps:\n0:\tfreeze\n1:\tboil"
    )


def test_require_action_rejects_text_that_is_not_utf8() -> None:
    undecodable = b"take \xff coin".decode("utf-8", errors="surrogateescape")
    with pytest.raises(InvalidActionError, match="not UTF-8"):
        require_action(undecodable)
    assert require_action(" prendre la pi\u00e8ce ") == "prendre la pi\u00e8ce"


def test_scienceworld_container_contents_compare_in_any_order() -> None:
    """Seen replaying chemistry-mix-paint-tertiary-color: a container's contents come in
    hash order too. Other differences the replays showed stay differences: a plant in
    another stage (grow-fruit) and another thermometer reading (use-thermometer)."""
    recorded = (
        "This room is called the art studio. In it, you see: \n\tthe agent\n\ta large "
        "cupboard. The large cupboard door is open. In the large cupboard is: a drawer, a "
        "wood cup (containing yellow paint), a wood cup (containing nothing), a wood cup "
        "(containing blue paint)."
    )
    replayed = recorded.replace(
        "a drawer, a wood cup (containing yellow paint), a wood cup (containing nothing), a "
        "wood cup (containing blue paint).",
        "a wood cup (containing blue paint), a drawer, a wood cup (containing yellow paint), "
        "a wood cup (containing nothing).",
    )
    sciworld = get_family("scienceworld")
    assert replayed != recorded and sciworld.same_observation(replayed, recorded)
    emptied = recorded.replace("(containing blue paint)", "(containing nothing)")
    assert not sciworld.same_observation(emptied, recorded)
    pot = "\ta flower pot 1 (containing a banana tree. On the banana tree you see: {}. , soil)"
    assert not sciworld.same_observation(
        pot.format("a banana, a adult bee"), pot.format("a wilting flower")
    )
    reading = "the thermometer measures a temperature of {} degrees celsius"
    assert not sciworld.same_observation(reading.format(23), reading.format(22))
