"""ScienceWorld: 30 science-experiment tasks in a JVM simulator (about 6-90 ms a step).

A task is ``TaskSpec("scienceworld", task_name, variation, split, simplifications)``.
``task_name`` is ScienceWorld's current name (``boil``); the paper's older names
(``task-1-boil``) are accepted everywhere and mapped. ``params`` is the simplification
string, ``"easy"`` by default as in the paper (teleport, containers and doors open).

Splits: ``source="paper"`` (default) uses the task/variation lists QLASS and ETO used
(``data/sciworld``; "seen" = dev, "unseen" = test); ``source="simulator"`` uses every
variation of the simulator's own train/dev/test split.

Scores, as the paper's code (ETO's ScienceWorld env) computes them: ``StepResult.score`` is
the highest simulator score reached so far, in [0, 1] and not rounded (the paper's episode
reward). A negative simulator score (-100) means the task failed: the episode is done and
keeps the score reached before the failure (``info["task_failure"]`` marks it).
``success`` is separate: the simulator's completion flag at score 100, so a failed task is
never a success.

Enumerating the valid actions costs about 85 ms per step (the step itself about 6 ms), so
it is off by default (``valid_actions=True`` turns it on).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from qlass.envs._jvm import JvmEnv
from qlass.envs._jvm_launch import qlass_launch
from qlass.envs.family import BaseEnvFamily
from qlass.errors import ConfigError, MissingDependencyError, UnknownNameError
from qlass.types import Observation, Split, StepResult, TaskSpec

__all__ = [
    "FAMILY",
    "SIMPLIFICATIONS",
    "TASKS",
    "ScienceWorldEnv",
    "ScienceWorldFamily",
    "canonical_task_name",
    "check_simplifications",
    "paper_task_name",
]

TASKS = (
    "boil",
    "change-the-state-of-matter-of",
    "chemistry-mix",
    "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color",
    "find-animal",
    "find-living-thing",
    "find-non-living-thing",
    "find-plant",
    "freeze",
    "grow-fruit",
    "grow-plant",
    "identify-life-stages-1",
    "identify-life-stages-2",
    "inclined-plane-determine-angle",
    "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces",
    "lifespan-longest-lived",
    "lifespan-longest-lived-then-shortest-lived",
    "lifespan-shortest-lived",
    "measure-melting-point-known-substance",
    "measure-melting-point-unknown-substance",
    "melt",
    "mendelian-genetics-known-plant",
    "mendelian-genetics-unknown-plant",
    "power-component",
    "power-component-renewable-vs-nonrenewable-energy",
    "test-conductivity",
    "test-conductivity-of-unknown-substances",
    "use-thermometer",
)
# What ScienceWorld's load() accepts in its simplification string (its
# get_possible_simplifications() plus "easy", checked against the simulator by the tests).
SIMPLIFICATIONS = (
    "easy",
    "teleportAction",
    "selfWateringFlowerPots",
    "openContainers",
    "openDoors",
    "noElectricalAction",
)
_SPLIT_ALIASES = {"seen": "dev", "unseen": "test"}
_PAPER_FILES = {
    "train": "train_indices.json",
    "dev": "dev_indices.json",
    "test": "test_indices.json",
}
_NO_STEP_LIMIT = 10**9


def _read_json(name: str) -> Any:
    return json.loads((resources.files("qlass.envs") / "data" / "sciworld" / name).read_text())


def check_simplifications(params: str) -> None:
    """Raise :class:`ConfigError` naming the first simplification ScienceWorld does not know
    in the comma-separated ``params`` (no simulator needed)."""
    for item in params.split(","):
        if item.strip() and item.strip() not in SIMPLIFICATIONS:
            raise ConfigError(
                f"unknown ScienceWorld simplification {item.strip()!r} "
                f"(choose from: {', '.join(SIMPLIFICATIONS)}, comma-separated)"
            )


def canonical_task_name(name: str) -> str:
    """Map a paper-style name (``task-1-boil``, ``mendellian``) to the current one."""
    mapped = re.sub(r"task-(\d|a|b)+-|[()]", "", name.strip().replace("mendellian", "mendelian"))
    if mapped not in TASKS:
        raise UnknownNameError(
            f"unknown ScienceWorld task {name!r}; choose one of: {', '.join(TASKS)}"
        )
    return mapped


@functools.cache
def _paper_names() -> dict[str, str]:
    return {canonical_task_name(old): old for old in _read_json("taskname2id.json")}


def paper_task_name(name: str) -> str | None:
    """The paper's name of a task (``task-1-boil``), or None if the paper did not use it."""
    return _paper_names().get(canonical_task_name(name))


@functools.cache
def _paper_split(split: str) -> tuple[tuple[str, int], ...]:
    return tuple((canonical_task_name(t), int(v)) for t, v in _read_json(_PAPER_FILES[split]))


@functools.cache
def _simulator_variations() -> dict[str, dict[str, list[int]]]:
    data: dict[str, dict[str, list[int]]] = _read_json("simulator_variations.json")
    return data


@functools.cache
def _max_steps() -> dict[str, int]:
    return {canonical_task_name(t): int(n) for t, n in _read_json("max_steps.json").items()}


def _normalise_split(split: str) -> Split:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in _PAPER_FILES:
        raise UnknownNameError(
            f"unknown split {split!r}; choose train, dev (seen) or test (unseen)"
        )
    return split  # type: ignore[return-value]


@functools.cache
def _simulator_class() -> type[Any]:
    try:
        from scienceworld import ScienceWorldEnv as _Sim
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependencyError("scienceworld", "envs", "ScienceWorld") from exc

    return qlass_launch(_Sim)


class ScienceWorldEnv(JvmEnv):
    """One ScienceWorld simulator (one JVM) playing one task at a time."""

    family = "scienceworld"

    def __init__(
        self,
        *,
        step_timeout_s: float | None = 30.0,
        start_timeout_s: float | None = 180.0,
        valid_actions: bool = False,
    ) -> None:
        super().__init__(step_timeout_s=step_timeout_s, start_timeout_s=start_timeout_s)
        self.valid_actions = valid_actions
        self._best = 0.0

    def _launch(self) -> Any:
        return _simulator_class()("", envStepLimit=_NO_STEP_LIMIT)

    @staticmethod
    def _release(sim: Any) -> None:
        sim._obj_tree_tempdir.cleanup()

    def _valid(self) -> tuple[str, ...] | None:
        if not self.valid_actions:
            return None
        return tuple(sorted(self._sim.server.getValidActionObjectCombinations()))

    def _reset_blocking(self, task: TaskSpec, gold: bool) -> tuple[Observation, list[str]]:
        name = canonical_task_name(task.name)
        try:
            # load() alone builds a fresh episode; the wrapper's reset() would rebuild it
            # once more (about 0.2-0.8 s) and give the same observations.
            self._sim.load(name, task.variation, task.params, generateGoldPath=gold)
        except ValueError as exc:
            raise ConfigError(f"ScienceWorld rejected {task.key}: {exc}") from exc
        server = self._sim.server
        text = server.step("look around")
        self._task, self._moves, self._best = task, 0, 0.0
        gold_path = list(server.getGoldActionSequence()) if gold else []
        obs = Observation(
            text=text.strip(),
            instruction=server.getTaskDescription().strip(),
            valid_actions=self._valid(),
            info={"task": name, "variation": task.variation},
        )
        return obs, gold_path

    def _step_blocking(self, action: str) -> StepResult:
        server = self._sim.server
        text = server.step(action)
        value = float(server.getScore())
        raw = round(100 * value)
        completed = bool(server.getCompleted())
        self._moves += 1
        previous = self._best
        failed = raw < 0
        if not failed:  # a failure keeps the best score so far, as the paper's code does
            self._best = max(self._best, min(1.0, value))
        score = self._best
        return StepResult(
            observation=text.strip(),
            reward=score - previous,
            done=completed or failed,
            score=score,
            success=completed and raw >= 100,
            valid_actions=self._valid(),
            info={"moves": self._moves, "score_raw": raw, "task_failure": failed},
        )


_AMBIGUOUS = "Ambiguous request"
_MENU_NUMBER = re.compile(r"^\d+:\t")


def _comparable_lines(observation: str) -> list[str]:
    lines = observation.splitlines()
    if observation.startswith(_AMBIGUOUS):
        lines = [_MENU_NUMBER.sub("", line) for line in lines]
    return sorted(_unordered_lists(line) for line in lines)


def _unordered_lists(text: str) -> str:
    """``text`` with the items of every comma-separated list sorted, at every depth of
    parentheses: ScienceWorld lists a container's contents ("In the cupboard is: a drawer,
    a wood cup (containing yellow paint), ...") in hash order too."""

    def level(i: int, depth: int) -> tuple[str, int]:
        items: list[str] = []
        current: list[str] = []
        while i < len(text):
            if text[i] == "(":
                inner, i = level(i + 1, depth + 1)
                current.append(f"({inner})")
            elif text[i] == ")" and depth:
                i += 1
                break
            elif text.startswith(", ", i):
                items.append("".join(current))
                current, i = [], i + 2
            else:
                current.append(text[i])
                i += 1
        items.append("".join(current))
        # The list's lead-in ("... is: ") and its full stop are no items.
        lead, colon, first = items[0].rpartition(": ")
        items[0] = first if colon else items[0]
        end = "." if items[-1].endswith(".") else ""
        items[-1] = items[-1].removesuffix(end)
        return f"{lead}{colon}{', '.join(sorted(items))}{end}", i

    return level(0, 0)[0]


class ScienceWorldFamily(BaseEnvFamily):
    """Registry entry: tasks, splits and prompt of ScienceWorld."""

    name = "scienceworld"
    description = "ScienceWorld science experiments (JVM, ~6 ms/step, ~90 ms with valid actions)"
    extra = "envs"

    def games(self) -> tuple[str, ...]:
        return TASKS

    def create(self, **options: Any) -> ScienceWorldEnv:
        return ScienceWorldEnv(**options)

    def check_params(self, params: str | None, games: Sequence[str] | None = None) -> None:
        """Check a simplification string (None: the default, ``easy``) without a simulator."""
        check_simplifications("easy" if params is None else params)

    def max_steps(self, task: TaskSpec) -> int | None:
        """The paper's step limit for this task (None where the paper set none)."""
        return _max_steps().get(canonical_task_name(task.name))

    def same_observation(self, replayed: str, recorded: str) -> bool:
        """The same lines, in any order, and the same items in each comma-separated list, in
        any order: ScienceWorld lists a room's objects and a container's contents in hash
        order, which changes between resets while the state is the same. Its "Ambiguous request"
        menu numbers the same options in that order too, so there the numbers are ignored
        (a numeric answer that then picks another object shows in the next observation).
        Any other difference (a line added, removed or changed) is a real divergence."""
        return replayed == recorded or _comparable_lines(replayed) == _comparable_lines(recorded)

    def split_sizes(self, *, source: str = "paper", **_options: Any) -> dict[str, int]:
        if source == "paper":
            return {s: len(_paper_split(s)) for s in _PAPER_FILES}
        variations = _simulator_variations()
        return {s: sum(len(v[s]) for v in variations.values()) for s in _PAPER_FILES}

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: str | None = None,
        limit: int | None = None,
        source: str = "paper",
        **options: Any,
    ) -> list[TaskSpec]:
        """Tasks of ``split`` (``seen``/``unseen`` accepted) from the paper's or the
        simulator's split. The paper's order is kept; simulator splits interleave tasks.
        """
        if options:
            raise ConfigError(f"scienceworld takes no options {sorted(options)}")
        fold = _normalise_split(split)
        wanted = tuple(canonical_task_name(g) for g in games) if games else TASKS
        simplification = "easy" if params is None else params
        check_simplifications(simplification)
        if source == "paper":
            pairs = [(t, v) for t, v in _paper_split(fold) if t in wanted]
        elif source == "simulator":
            variations = _simulator_variations()
            lists = [[(t, v) for v in variations[t][fold]] for t in wanted]
            pairs = [p for row in _interleave(lists) for p in row]
        else:
            raise ConfigError(f"unknown split source {source!r}; choose 'paper' or 'simulator'")
        tasks = [TaskSpec(self.name, t, v, fold, simplification) for t, v in pairs]
        return tasks if limit is None else tasks[:limit]


def _interleave(lists: list[list[tuple[str, int]]]) -> list[list[tuple[str, int]]]:
    """Rows of the i-th element of every list (round robin), so a limit samples all tasks."""
    depth = max((len(x) for x in lists), default=0)
    return [[x[i] for x in lists if i < len(x)] for i in range(depth)]


FAMILY = ScienceWorldFamily()
