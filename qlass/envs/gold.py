"""Expert trajectories, as JSONL for behaviour cloning.

The expert path of a task is its env family's (:func:`~qlass.envs.registry.expert_actions`):
the simulator's gold path, or for TextWorldExpress's coin and twc, whose gold agent walks
at random, qlass's deterministic search (:mod:`qlass.envs.expert`). Either way the same
task gives the same trajectory on every export.

Each line is one episode::

    {"task": {"env", "name", "variation", "split", "params", "key"},
     "messages": [system, user (task + first observation), assistant ("Action: ..."),
                  user ("Observation: ..."), ..., assistant (last action)],
     "final_score": 1.0, "success": true, "steps": 14}

``messages`` come from :func:`qlass.chat.policy_messages` with the env family's prompt
as system message and the turns formatted by :func:`qlass.parsing.format_turn`, so BC
trains on exactly what the policy sees at inference. The observation after the last
action is not included (nothing is learnt from it). Gold paths carry no thoughts, so the
agent turns are ``Action: ...`` only, which the parser accepts.

Only episodes whose replay reaches full score are written; the others are counted (and
named) in the returned :class:`GoldExportReport`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from qlass.chat import policy_messages
from qlass.envs.base import Env
from qlass.envs.registry import create_env, env_prompt, expert_actions, has_own_expert
from qlass.errors import EnvError, NoExpertPathError, TaskGenerationError
from qlass.parsing import format_turn
from qlass.types import ChatMessage, History, TaskSpec, Turn

__all__ = [
    "GoldExportReport",
    "GoldTrajectory",
    "export_gold",
    "partial_file",
    "replay_gold",
    "trajectory_record",
]

log = structlog.get_logger(__name__)
_FULL_SCORE = 1.0 - 1e-9


@dataclass(frozen=True, slots=True)
class GoldTrajectory:
    """A gold path replayed in the simulator, cut at the first ``done``."""

    task: TaskSpec
    instruction: str
    initial_observation: str
    actions: tuple[str, ...]
    observations: tuple[str, ...]
    final_score: float
    success: bool

    @property
    def history(self) -> History:
        turns = tuple(
            Turn(format_turn(a), a, o) for a, o in zip(self.actions, self.observations, strict=True)
        )
        return History(self.instruction, self.initial_observation, turns)


@dataclass(frozen=True, slots=True)
class GoldExportReport:
    """What :func:`export_gold` did.

    ``steps``: actions in the written trajectories; ``env_steps``: simulator calls made
    (the replays, plus the steps and restarts of any expert search).
    """

    path: Path
    written: int
    skipped: tuple[tuple[str, str], ...]  # (task key, reason)
    steps: int
    env_steps: int
    ungeneratable: tuple[str, ...] = ()  # keys of the skipped tasks no game exists for
    unfinished: int = 0  # tasks not started because a stop was asked for

    @property
    def total(self) -> int:
        return self.written + len(self.skipped)


async def replay_gold(
    env: Env, task: TaskSpec, *, max_steps: int | None = None, tries: int = 1
) -> GoldTrajectory:
    """Get ``task``'s expert path from ``env`` and replay it to the first ``done``.

    ``tries`` matters only for a family without its own expert whose simulator's gold
    agent is random (none of the built-in ones: TextWorldExpress's random gold agents are
    replaced by a search): the gold path is asked for that many times and the shortest
    one that reaches full score is kept.
    """
    asks = 1 if has_own_expert(task.env) else max(1, tries)
    candidates = {tuple(await expert_actions(env, task)) for _ in range(asks)}
    trajectory: GoldTrajectory | None = None
    for actions in sorted(candidates, key=lambda a: (len(a), a)):
        trajectory = await _replay(env, task, actions[:max_steps])
        if trajectory.final_score >= _FULL_SCORE:
            break
    assert trajectory is not None
    return trajectory


async def _replay(env: Env, task: TaskSpec, actions: Sequence[str]) -> GoldTrajectory:
    first = await env.reset(task)
    taken: list[str] = []
    observations: list[str] = []
    score, success = 0.0, False
    for action in actions:
        result = await env.step(action)
        taken.append(action)
        observations.append(result.observation)
        score, success = result.score, result.success
        if result.done:
            break
    return GoldTrajectory(
        task, first.instruction, first.text, tuple(taken), tuple(observations), score, success
    )


def trajectory_record(trajectory: GoldTrajectory, system_prompt: str | None) -> dict[str, Any]:
    """The JSONL record of a trajectory (see the module docstring)."""
    messages: list[ChatMessage] = policy_messages(trajectory.history, system_prompt)
    if trajectory.actions:
        messages = messages[:-1]  # drop the observation after the last action
    task = trajectory.task
    return {
        "task": {
            "env": task.env,
            "name": task.name,
            "variation": task.variation,
            "split": task.split,
            "params": task.params,
            "key": task.key,
        },
        "messages": messages,
        "final_score": trajectory.final_score,
        "success": trajectory.success,
        "steps": len(trajectory.actions),
    }


async def export_gold(
    env_name: str,
    tasks: Sequence[TaskSpec],
    out: Path,
    *,
    workers: int = 1,
    max_steps: int | None = None,
    tries: int = 1,
    with_example: bool = False,
    env_options: dict[str, Any] | None = None,
    on_task: Callable[[TaskSpec, bool], None] | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> GoldExportReport:
    """Replay the gold path of every task and write the full-score ones to ``out`` (JSONL).

    ``workers`` simulators run at once; lines keep the order of ``tasks``. ``tries``: see
    :func:`replay_gold`. ``on_task(task,
    written)`` is called after each task (for progress bars). ``with_example`` puts the
    in-context example in the system prompt (off: BC data usually goes without it).

    ``stop()`` is asked before each task: once it is true no task starts, the ones under
    way finish, and what is written goes to :func:`partial_file` instead of ``out`` (so
    nothing takes a partial export for a whole one); ``resume`` reuses the records of that
    file (their tasks are not replayed). A finished export removes it.
    """
    system = env_prompt(env_name).render(with_example=with_example)
    partial = partial_file(out)
    earlier = await asyncio.to_thread(_read_records, partial) if resume else {}
    queue: asyncio.Queue[tuple[int, TaskSpec]] = asyncio.Queue()
    results: dict[int, dict[str, Any] | str] = {}
    for index, task in enumerate(tasks):
        if task.key in earlier:
            results[index] = earlier[task.key]
        else:
            queue.put_nowait((index, task))
    ungeneratable: set[int] = set()
    env_steps = 0

    async def worker() -> None:
        nonlocal env_steps
        env = create_env(env_name, **(env_options or {}))
        try:
            while not queue.empty() and not (stop is not None and stop()):
                index, task = queue.get_nowait()
                searched = _search_calls(env)
                try:
                    trajectory = await replay_gold(env, task, max_steps=max_steps, tries=tries)
                except (NoExpertPathError, TaskGenerationError) as exc:  # the simulator is fine
                    log.warning("gold_failed", task=task.key, error=str(exc))
                    results[index] = str(exc)
                    env_steps += _search_calls(env) - searched
                    if isinstance(exc, TaskGenerationError):
                        ungeneratable.add(index)
                except EnvError as exc:
                    log.warning("gold_failed", task=task.key, error=str(exc))
                    results[index] = f"{type(exc).__name__}: {exc}"
                    await env.close()
                    env = create_env(env_name, **(env_options or {}))
                else:
                    env_steps += len(trajectory.actions) + _search_calls(env) - searched
                    if trajectory.final_score >= _FULL_SCORE:
                        results[index] = trajectory_record(trajectory, system)
                    else:
                        results[index] = f"gold path ends at score {trajectory.final_score:.2f}"
                if on_task is not None:
                    on_task(task, isinstance(results[index], dict))
        finally:
            await env.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, queue.qsize())))))
    records = [results[i] for i in range(len(tasks)) if i in results]
    lines = [json.dumps(r, ensure_ascii=False) for r in records if isinstance(r, dict)]
    unfinished = len(tasks) - len(records)
    await asyncio.to_thread(_write_lines, partial if unfinished else out, lines)
    if not unfinished:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    skipped = tuple(
        (task.key, reason)
        for i, task in enumerate(tasks)
        if isinstance(reason := results.get(i), str)
    )
    steps = sum(r["steps"] for r in records if isinstance(r, dict))
    cannot = tuple(tasks[i].key for i in sorted(ungeneratable))
    path = partial if unfinished else out
    return GoldExportReport(path, len(lines), skipped, steps, env_steps, cannot, unfinished)


def partial_file(out: Path) -> Path:
    """Where :func:`export_gold` keeps the records of an export that was stopped."""
    return out.with_name(out.name + ".partial")


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records of a JSONL file by task key (none if there is no file)."""
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return {r["task"]["key"]: r for r in records}


def _search_calls(env: Env) -> int:
    """Simulator calls the env's expert searches made so far (0 for envs without one)."""
    return int(getattr(env, "search_calls", 0))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
