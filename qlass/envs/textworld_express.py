"""TextWorldExpress: fast text games (about 1 ms a step) for the demo and the tests.

A task is ``TaskSpec("textworld_express", game, seed, fold, params)``: ``game`` is one of
:data:`GAMES`, ``seed`` one of the simulator's seeds for ``fold`` (train 0-999, dev
10000-10999, test 20000-20999, the simulator's own folds) and ``params`` the simulator's
game parameters (``"numLocations=5,includeDoors=0"``; empty for its defaults).

Gold paths come from the simulator (``generateGoldPath``). For games with exploration
(coin, mapreader) the gold agent explores at random, so two calls may return different
(both winning) paths for the same task; the observations for a given action sequence are
deterministic.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from qlass.envs._jvm import JvmEnv, qlass_launch
from qlass.envs.family import BaseEnvFamily
from qlass.errors import ConfigError, MissingDependencyError, UnknownNameError
from qlass.types import Observation, Split, StepResult, TaskSpec

__all__ = ["FAMILY", "GAMES", "TextWorldExpressEnv", "TextWorldExpressFamily"]

GAMES = (
    "cookingworld",
    "coin",
    "twc",
    "mapreader",
    "arithmetic",
    "sorting",
    "simonsays",
    "peckingorder",
)
# The simulator's folds; identical for every game and parameter setting (checked by
# tests/envs/test_textworld_express.py against the live simulator).
_SEED_BASE: dict[str, int] = {"train": 0, "dev": 10_000, "test": 20_000}
_SEEDS_PER_FOLD = 1000
_NO_STEP_LIMIT = 10**9  # the runtime enforces step limits; the env reports the task's end


def _check_game(game: str) -> str:
    if game not in GAMES:
        raise UnknownNameError(
            f"unknown TextWorldExpress game {game!r}; choose one of: {', '.join(GAMES)}"
        )
    return game


def seeds(split: Split) -> range:
    """The simulator's seeds of ``split`` (the same for every game)."""
    if split not in _SEED_BASE:
        raise UnknownNameError(f"unknown split {split!r}; choose train, dev or test")
    base = _SEED_BASE[split]
    return range(base, base + _SEEDS_PER_FOLD)


@functools.cache
def _simulator_class() -> type[Any]:
    try:
        from textworld_express import TextWorldExpressEnv as _Sim
    except ImportError as exc:
        raise MissingDependencyError("textworld-express", "envs", "TextWorldExpress") from exc

    return qlass_launch(_Sim)


class TextWorldExpressEnv(JvmEnv):
    """One TextWorldExpress simulator (one JVM) playing one task at a time."""

    family = "textworld_express"

    def __init__(
        self, *, step_timeout_s: float | None = 30.0, start_timeout_s: float | None = 120.0
    ) -> None:
        super().__init__(step_timeout_s=step_timeout_s, start_timeout_s=start_timeout_s)
        self._loaded: tuple[str, str] | None = None
        self._score = 0.0

    def _launch(self) -> Any:
        return _simulator_class()(envStepLimit=_NO_STEP_LIMIT)

    @staticmethod
    def _release(sim: Any) -> None:
        sim._obj_tree_tempfile.close()

    def _reset_blocking(self, task: TaskSpec, gold: bool) -> tuple[Observation, list[str]]:
        game = _check_game(task.name)
        if self._loaded != (game, task.params):
            try:
                self._sim.load(game, task.params)
            except ValueError as exc:
                raise ConfigError(
                    f"TextWorldExpress rejected params {task.params!r}: {exc}"
                ) from exc
            self._loaded = (game, task.params)
        text, info = self._sim.reset(
            seed=task.variation, gameFold=task.split, generateGoldPath=gold
        )
        self._task, self._moves, self._score = task, 0, 0.0
        gold_path = list(self._sim.getGoldActionSequence()) if gold else []
        obs = Observation(
            text=text.strip(),
            instruction=info["taskDescription"].strip(),
            valid_actions=tuple(sorted(info["validActions"])),
            info={"seed": task.variation, "fold": task.split},
        )
        return obs, gold_path

    def _step_blocking(self, action: str) -> StepResult:
        # The wrapper's step() also fetches the task description on every step (a second
        # JVM round trip) and keeps a run history; one stepJSON call is all a step needs.
        info = json.loads(self._sim.server.stepJSON(action))
        self._moves += 1
        score = min(1.0, max(0.0, float(info["score"])))
        success, failure = bool(info["tasksuccess"]), bool(info["taskfailure"])
        previous, self._score = self._score, score
        return StepResult(
            observation=info["observation"].strip(),
            reward=score - previous,
            # As the wrapper decides it, less its step limit (the runtime enforces limits).
            done=success or failure or float(info["score"]) >= 1.0,
            score=score,
            success=success,
            valid_actions=tuple(sorted(info["validActions"])),
            info={"moves": self._moves, "score_raw": info["scoreRaw"], "task_failure": failure},
        )


class TextWorldExpressFamily(BaseEnvFamily):
    """Registry entry: tasks, splits and prompt of TextWorldExpress."""

    name = "textworld_express"
    description = "TextWorldExpress text games (JVM, ~1 ms/step)"
    extra = "envs"

    def games(self) -> tuple[str, ...]:
        return GAMES

    def create(self, **options: Any) -> TextWorldExpressEnv:
        return TextWorldExpressEnv(**options)

    def split_sizes(self, **_options: Any) -> dict[str, int]:
        """Tasks per split for one game and one parameter setting."""
        return {split: _SEEDS_PER_FOLD for split in _SEED_BASE}

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: str | Mapping[str, str] | None = None,
        limit: int | None = None,
        **options: Any,
    ) -> list[TaskSpec]:
        """Tasks of ``split``: games interleaved (seed i of every game, then seed i+1).

        ``params`` is one parameter string for all games, or a mapping game -> string.
        """
        if options:
            raise ConfigError(f"textworld_express takes no options {sorted(options)}")
        chosen = tuple(_check_game(g) for g in (games or GAMES))
        split_seeds = seeds(split)  # type: ignore[arg-type]
        per_game = {
            g: (params.get(g, "") if isinstance(params, Mapping) else params or "") for g in chosen
        }
        tasks: list[TaskSpec] = []
        for seed in split_seeds:
            for game in chosen:
                tasks.append(TaskSpec(self.name, game, seed, split, per_game[game]))  # type: ignore[arg-type]
                if limit is not None and len(tasks) >= limit:
                    return tasks
        return tasks


FAMILY = TextWorldExpressFamily()
