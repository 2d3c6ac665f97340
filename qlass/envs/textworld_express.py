"""TextWorldExpress: fast text games (about 1 ms a step) for the demo and the tests.

A task is ``TaskSpec("textworld_express", game, seed, fold, params)``: ``game`` is one of
:data:`GAMES`, ``seed`` one of the simulator's seeds for ``fold`` (train 0-999, dev
10000-10999, test 20000-20999, the simulator's own folds) and ``params`` the simulator's
game parameters (``"numLocations=5,includeDoors=0"``; empty for its defaults).

Expert paths (:meth:`TextWorldExpressFamily.expert_actions`): the simulator's gold path
(``generateGoldPath``) where its gold agent is deterministic; for coin and twc, whose gold
agent walks at random inside the JVM (two calls give different winning paths for the same
task, and no seed reaches it), qlass's own search (:mod:`qlass.envs.expert`), which gives
the same path on every call. The observations for a given action sequence are
deterministic, which the search relies on.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from qlass.envs._jvm import JvmEnv, is_java_exception, java_error_line
from qlass.envs._jvm_launch import qlass_launch
from qlass.envs.base import Env
from qlass.envs.expert import DEFAULT_MAX_CALLS, SearchState, search_expert_path
from qlass.envs.family import BaseEnvFamily
from qlass.errors import (
    ConfigError,
    MissingDependencyError,
    TaskGenerationError,
    UnknownNameError,
)
from qlass.types import Observation, Split, StepResult, TaskSpec

__all__ = [
    "FAMILY",
    "GAMES",
    "RANDOM_GOLD_GAMES",
    "TextWorldExpressEnv",
    "TextWorldExpressFamily",
    "check_params",
]

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
# Games whose gold agent picks random moves (a random walk over the rooms; measured: 26 of
# 30 coin tasks and 9 of 10 twc tasks got another path from a fresh simulator, the other
# six games none). Their expert paths come from qlass's search instead.
RANDOM_GOLD_GAMES = frozenset({"coin", "twc"})
# The parameters each game accepts (the simulator's "Known properties" for the game) and
# whether each is a flag (0 or 1). The simulator reads every value as a whole number and
# accepts other text without a word, then fails to generate any game (numLocations=abc), and
# reads a flag other than 1 as 0; hence the check here. Ranges (numLocations <= 11...) are
# the simulator's to check: it names them when the game is loaded.
_FLAG, _NUMBER = "flag", "number"
_PARAMS: dict[str, dict[str, str]] = {
    "cookingworld": {
        "numLocations": _NUMBER,
        "numDistractorItems": _NUMBER,
        "numIngredients": _NUMBER,
        "includeDoors": _FLAG,
        "limitInventorySize": _FLAG,
    },
    "coin": {
        "numLocations": _NUMBER,
        "numDistractorItems": _NUMBER,
        "includeDoors": _FLAG,
        "limitInventorySize": _FLAG,
    },
    "twc": {
        "numLocations": _NUMBER,
        "numItemsToPutAway": _NUMBER,
        "includeDoors": _FLAG,
        "limitInventorySize": _FLAG,
    },
    "mapreader": {
        "numLocations": _NUMBER,
        "maxDistractorItemsPerLocation": _NUMBER,
        "includeDoors": _FLAG,
        "limitInventorySize": _FLAG,
        "maxDistanceApart": _NUMBER,
    },
    "arithmetic": {},
    "sorting": {},
    "simonsays": {
        "gameLength": _NUMBER,
        "numDistractors": _NUMBER,
        "memorization": _FLAG,
        "verbose": _FLAG,
    },
    "peckingorder": {},
}
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


def check_params(game: str, params: str) -> None:
    """Raise :class:`ConfigError` naming the first parameter of ``params`` that ``game`` does
    not accept: an unknown name, a value that is not a whole number, or a flag not 0 or 1."""
    known = _PARAMS[_check_game(game)]
    for item in params.split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ConfigError(
                f"TextWorldExpress parameter {item.strip()!r} must look like name=value "
                "(e.g. numLocations=5)"
            )
        if name not in known:
            takes = ", ".join(known) if known else "no parameters"
            raise ConfigError(
                f"TextWorldExpress {game} has no parameter {name!r} (it takes: {takes})"
            )
        if known[name] == _FLAG and value not in {"0", "1"}:
            raise ConfigError(f"TextWorldExpress parameter {name} must be 0 or 1, got {value!r}")
        if known[name] == _NUMBER and not re.fullmatch(r"[+-]?[0-9]+", value):
            raise ConfigError(
                f"TextWorldExpress parameter {name} must be a whole number, got {value!r}"
            )


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
        self.search_calls = 0  # simulator calls made by expert searches (accounting)

    def _launch(self) -> Any:
        return _simulator_class()(envStepLimit=_NO_STEP_LIMIT)

    @staticmethod
    def _release(sim: Any) -> None:
        sim._obj_tree_tempfile.close()

    def _reset_blocking(self, task: TaskSpec, gold: bool) -> tuple[Observation, list[str]]:
        game = _check_game(task.name)
        if self._loaded != (game, task.params):
            check_params(game, task.params)
            try:
                self._sim.load(game, task.params)
            except ValueError as exc:
                raise ConfigError(
                    f"TextWorldExpress rejected params {task.params!r}: {exc}"
                ) from exc
            self._loaded = (game, task.params)
        try:
            text, info = self._sim.reset(
                seed=task.variation, gameFold=task.split, generateGoldPath=gold
            )
        except Exception as exc:
            # Some settings admit no game for some seeds (mapreader with numLocations=5,
            # maxDistanceApart=3: "ERROR: No locations could be found that distance
            # apart"): that task cannot be played, the simulator is fine.
            if is_java_exception(exc) and "ERROR:" in java_error_line(exc):
                raise TaskGenerationError(
                    f"TextWorldExpress cannot generate {task.key}: "
                    f"{java_error_line(exc).split('ERROR:', 1)[1].strip()}"
                ) from exc
            raise
        if text.startswith("ERROR:"):  # the simulator answers some bad settings in the text
            raise ConfigError(f"TextWorldExpress cannot generate {task.key}: {text.strip()}")
        self._task, self._moves, self._score = task, 0, 0.0
        gold_path = list(self._sim.getGoldActionSequence()) if gold else []
        obs = Observation(
            text=text.strip(),
            instruction=info["taskDescription"].strip(),
            valid_actions=tuple(sorted(info["validActions"])),
            info={"seed": task.variation, "fold": task.split},
        )
        return obs, gold_path

    async def expert_actions(
        self, task: TaskSpec, *, max_calls: int = DEFAULT_MAX_CALLS
    ) -> list[str]:
        """qlass's deterministic expert path for ``task`` (see :mod:`qlass.envs.expert`);
        the env stands at the task's reset afterwards.

        The search is bounded by ``max_calls`` simulator calls; the time limit
        (``start_timeout_s`` plus 2 ms a call, about 5 times what a call takes on a busy
        2-core box) only catches a hung JVM.

        Raises:
            NoExpertPathError: no winning path within the bound.
        """
        limit = None if self.start_timeout_s is None else self.start_timeout_s + 2e-3 * max_calls
        return await self._call(
            self._search_blocking,
            task,
            max_calls,
            limit_s=limit,
            what=f"searching an expert path for {task.key}",
        )

    def _search_blocking(self, task: TaskSpec, max_calls: int) -> list[str]:
        self._reset_blocking(task, False)  # loads the game and its parameters
        simulator = _Replayable(self._sim.server, task.variation, task.split)
        try:
            return search_expert_path(simulator, max_calls=max_calls)
        finally:
            self.search_calls += simulator.calls
            self._reset_blocking(task, False)

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


class _Replayable:
    """The loaded game as the expert search drives it: one JVM call per restart or step."""

    def __init__(self, server: Any, seed: int, fold: str) -> None:
        self.server, self.seed, self.fold = server, seed, fold
        self.calls = 0

    def restart(self) -> SearchState:
        self.calls += 1
        return _search_state(
            json.loads(self.server.generateNewGameJSON(self.seed, self.fold, False))
        )

    def act(self, action: str) -> SearchState:
        self.calls += 1
        return _search_state(json.loads(self.server.stepJSON(action)))


def _search_state(info: dict[str, Any]) -> SearchState:
    """A state as the expert search knows it: the room as "look around" shows it (objects,
    exits, doors), the inventory, the valid actions and the score. The contents of a closed
    container are not shown; a shortest path never hides something in one, so the states
    that this makes look alike do not change its result."""
    actions = tuple(sorted(info["validActions"]))
    key = (info["look"], info["inventory"], actions, info["scoreRaw"])
    success, failure = bool(info["tasksuccess"]), bool(info["taskfailure"])
    score = float(info["score"])
    return SearchState(key, actions, score, success or score >= 1.0, failure)


class TextWorldExpressFamily(BaseEnvFamily):
    """Registry entry: tasks, splits and prompt of TextWorldExpress."""

    name = "textworld_express"
    description = "TextWorldExpress text games (JVM, ~1 ms/step)"
    extra = "envs"
    own_expert = True

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
        self.check_params(params, chosen)
        tasks: list[TaskSpec] = []
        for seed in split_seeds:
            for game in chosen:
                tasks.append(TaskSpec(self.name, game, seed, split, per_game[game]))  # type: ignore[arg-type]
                if limit is not None and len(tasks) >= limit:
                    return tasks
        return tasks

    def check_params(
        self, params: str | Mapping[str, str] | None, games: Sequence[str] | None = None
    ) -> None:
        """Check ``params`` (one string for all games, or game -> string) for ``games``
        (default: all), without starting a simulator; see :func:`check_params`."""
        for game in games or GAMES:
            given = params.get(game, "") if isinstance(params, Mapping) else params or ""
            check_params(game, given)

    async def expert_actions(self, env: Env, task: TaskSpec) -> list[str]:
        """The expert path of ``task``, the same on every call: qlass's search for the games
        of :data:`RANDOM_GOLD_GAMES`, the simulator's gold path for the others."""
        if not isinstance(env, TextWorldExpressEnv):
            raise TypeError(f"expected a TextWorldExpressEnv, got {type(env).__name__}")
        if _check_game(task.name) in RANDOM_GOLD_GAMES:
            return await env.expert_actions(task)
        return await env.gold_actions(task)


FAMILY = TextWorldExpressFamily()
