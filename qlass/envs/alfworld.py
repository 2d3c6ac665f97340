"""ALFWorld (household tasks, TextWorld engine) on local data.

Needs the optional extra (``pip install 'qlass[alfworld]'``) and the game files, which
``alfworld-download`` fetches (into ``~/.cache/alfworld`` unless ``ALFWORLD_DATA`` says
otherwise). Point qlass at that directory with ``data_dir=`` (``env.data_dir`` in the
config) or the ``ALFWORLD_DATA`` environment variable.

Tasks are the game directories under ``json_2.1.1``: train = ``train``, dev = the paper's
"seen" set (``valid_seen``, 140 games), test = "unseen" (``valid_unseen``, 134 games).
``TaskSpec.name`` is the game's path below its split directory
(``pick_and_place_simple-Mug-None-Desk-308/trial_T2019...``), ``variation`` is 0, and
``games=`` selects task types (``pick_and_place_simple``, ...). Gold paths come from
ALFWorld's hand-coded expert.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qlass.envs.base import require_action
from qlass.envs.family import BaseEnvFamily
from qlass.errors import (
    ConfigError,
    EnvCrashedError,
    EnvTimeoutError,
    MissingDataError,
    MissingDependencyError,
    UnknownNameError,
)
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["FAMILY", "TASK_TYPES", "ALFWorldEnv", "ALFWorldFamily", "resolve_data_dir"]

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLIT_DIRS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen"}
_SPLIT_ALIASES = {"seen": "dev", "unseen": "test"}
_GAME_FILE = "game.tw-pddl"
_EXPERT_STEP_LIMIT = 150


def _configured_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    raw = data_dir or os.environ.get("ALFWORLD_DATA")
    if not raw:
        raise MissingDataError(
            "ALFWorld needs its game files, which qlass cannot bundle. Install the extra "
            "(pip install 'qlass[alfworld]'), run `alfworld-download` (it writes to "
            "~/.cache/alfworld), then set ALFWORLD_DATA to that directory or pass "
            "--data-dir / env.data_dir."
        )
    return Path(raw).expanduser(), "data_dir" if data_dir else "ALFWORLD_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ALFWorld data directory (holding ``json_2.1.1``), or a MissingDataError that
    says what to download and where. Checks the disk: blocking."""
    root, source = _configured_dir(data_dir)
    if not (root / "json_2.1.1").is_dir():
        raise MissingDataError(
            f"ALFWorld data not found: {root} (from {source}) has no json_2.1.1 directory. "
            "Run `alfworld-download` (from pip install 'qlass[alfworld]') and point "
            "ALFWORLD_DATA / --data-dir at the directory it filled (default ~/.cache/alfworld)."
        )
    return root


def _normalise_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLIT_DIRS:
        raise UnknownNameError(
            f"unknown split {split!r}; choose train, dev (seen) or test (unseen)"
        )
    return split


def _game_names(split_dir: Path) -> tuple[str, ...]:
    """Game paths below ``split_dir`` (sorted), skipping what ALFWorld does not support."""
    names = []
    for game in split_dir.glob(f"*/*/{_GAME_FILE}"):
        name = f"{game.parent.parent.name}/{game.parent.name}"
        if "movable" in name or "Sliced" in name:
            continue
        names.append(name)
    return tuple(sorted(names))


def _split_task(text: str) -> tuple[str, str]:
    """Split ALFWorld's first feedback into (instruction, room description)."""
    parts = [p.strip() for p in text.split("\n\n") if p.strip() and "Welcome to TextWorld" not in p]
    task = next((p for p in parts if p.startswith("Your task is to")), "")
    room = "\n".join(p for p in parts if p != task)
    return task, room


class ALFWorldEnv:
    """One ALFWorld game at a time, run by TextWorld in a worker thread.

    A step past ``step_timeout_s`` raises EnvTimeoutError and leaves the instance dead (a
    Python thread cannot be killed; the pool replaces the instance).
    """

    family = "alfworld"

    def __init__(
        self, *, data_dir: str | os.PathLike[str] | None = None, step_timeout_s: float | None = 30.0
    ) -> None:
        # Fails now without a configured directory; its content is checked on reset, in the
        # worker thread (disk access does not belong on the event loop).
        self.data_dir, _ = _configured_dir(data_dir)
        self.step_timeout_s = step_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qlass-alfworld")
        self._game: Any = None
        self._task: TaskSpec | None = None
        self._dead: str | None = None
        self._moves = 0

    def game_file(self, task: TaskSpec) -> Path:
        """The game file of ``task`` (blocking: checks the disk)."""
        path = (
            resolve_data_dir(self.data_dir)
            / "json_2.1.1"
            / SPLIT_DIRS[_normalise_split(task.split)]
            / task.name
            / _GAME_FILE
        )
        if not path.is_file():
            raise MissingDataError(f"ALFWorld game file missing: {path}")
        return path

    async def _call(self, fn: Any, *args: Any, what: str) -> Any:
        if self._dead is not None:
            raise EnvCrashedError(f"alfworld env is dead ({self._dead}); cannot do {what}")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(self.step_timeout_s) as scope:
                return await future
        except TimeoutError:
            if not scope.expired():
                raise
            self._dead = "timed out"
            raise EnvTimeoutError(
                f"alfworld did not finish {what} within {self.step_timeout_s} s"
            ) from None

    def _start_blocking(self, task: TaskSpec, expert: bool) -> tuple[str, dict[str, Any]]:
        game_file = self.game_file(task)
        try:
            textworld = importlib.import_module("textworld")
            tw_gym = importlib.import_module("textworld.gym")
            alfred = importlib.import_module("alfworld.agents.environment.alfred_tw_env")
        except ImportError as exc:
            raise MissingDependencyError("alfworld", "alfworld", "ALFWorld") from exc
        if self._game is not None:
            self._game.close()
        wrappers: list[Any] = [alfred.AlfredDemangler()]
        extras = ["gamefile"]
        if expert:
            wrappers.append(alfred.AlfredExpert(expert_type=alfred.AlfredExpertType.HANDCODED))
            extras.append("expert_plan")
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=extras)
        env_id = tw_gym.register_game(
            str(game_file), infos, max_episode_steps=10**6, wrappers=wrappers
        )
        self._game = tw_gym.make(env_id)
        obs, info = self._game.reset()
        return obs, info

    def _reset_blocking(self, task: TaskSpec) -> Observation:
        text, info = self._start_blocking(task, expert=False)
        instruction, room = _split_task(text)
        self._task, self._moves = task, 0
        return Observation(room, instruction, tuple(info.get("admissible_commands") or ()) or None)

    def _gold_blocking(self, task: TaskSpec) -> list[str]:
        _, info = self._start_blocking(task, expert=True)
        actions: list[str] = []
        done = False
        while not done and len(actions) < _EXPERT_STEP_LIMIT:
            action = info["extra.expert_plan"][0]
            _, _, done, info = self._game.step(action)
            actions.append(action)
        self._reset_blocking(task)
        return actions

    def _step_blocking(self, action: str) -> StepResult:
        text, _score, done, info = self._game.step(action)
        self._moves += 1
        won = bool(info.get("won"))
        return StepResult(
            observation=str(text).strip(),
            reward=1.0 if won else 0.0,
            done=bool(done) or won,
            score=1.0 if won else 0.0,
            success=won,
            valid_actions=tuple(info.get("admissible_commands") or ()) or None,
            info={"moves": self._moves},
        )

    async def reset(self, task: TaskSpec) -> Observation:
        obs: Observation = await self._call(
            self._reset_blocking, task, what=f"resetting {task.key}"
        )
        return obs

    async def gold_actions(self, task: TaskSpec) -> list[str]:
        gold: list[str] = await self._call(self._gold_blocking, task, what=f"expert on {task.key}")
        return gold

    async def step(self, action: str) -> StepResult:
        action = require_action(action)
        if self._task is None:
            raise RuntimeError("alfworld: step() before reset()")
        result: StepResult = await self._call(self._step_blocking, action, what=f"step {action!r}")
        return result

    async def close(self) -> None:
        game, self._game = self._game, None
        if game is not None and self._dead is None:
            await asyncio.to_thread(game.close)
        self._executor.shutdown(wait=False, cancel_futures=True)


class ALFWorldFamily(BaseEnvFamily):
    """Registry entry for ALFWorld (local data needed for tasks and envs)."""

    name = "alfworld"
    description = "ALFWorld household tasks (needs qlass[alfworld] and local data)"
    extra = "alfworld"

    def games(self) -> tuple[str, ...]:
        return TASK_TYPES

    def config_options(
        self, *, data_dir: Path | None, server_url: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``env.data_dir``: where the game files are (else ``ALFWORLD_DATA``)."""
        if server_url is not None:
            raise ConfigError("env.server_url: the alfworld env does not use it")
        options = {} if data_dir is None else {"data_dir": str(data_dir)}
        return options, dict(options)

    def create(self, **options: Any) -> ALFWorldEnv:
        return ALFWorldEnv(**options)

    def split_sizes(self, *, data_dir: str | None = None, **_options: Any) -> dict[str, int]:
        root = resolve_data_dir(data_dir) / "json_2.1.1"
        return {s: len(_game_names(root / d)) for s, d in SPLIT_DIRS.items()}

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: Any = None,
        limit: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> list[TaskSpec]:
        """Games of ``split`` (``seen``/``unseen`` accepted), sorted by path."""
        if options:
            raise ConfigError(f"alfworld takes no options {sorted(options)}")
        fold = _normalise_split(split)
        for game in games or ():
            if game not in TASK_TYPES:
                raise UnknownNameError(
                    f"unknown ALFWorld task type {game!r}; choose one of: {', '.join(TASK_TYPES)}"
                )
        names = _game_names(resolve_data_dir(data_dir) / "json_2.1.1" / SPLIT_DIRS[fold])
        if games:
            names = tuple(n for n in names if n.split("-", 1)[0] in games)
        tasks = [TaskSpec(self.name, n, 0, fold, params or "") for n in names]  # type: ignore[arg-type]
        return tasks if limit is None else tasks[:limit]


FAMILY = ALFWorldFamily()
