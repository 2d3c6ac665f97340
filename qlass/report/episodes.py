"""A static HTML page of a run's evaluation episodes: every step of every strategy's
episode, with the candidates the search considered and their values, filterable by
strategy and outcome, and two strategies' episodes of one task side by side.

The page is one self-contained file (the Jinja2 template ``templates/episodes.html``,
autoescaped, inline CSS and a little vanilla JavaScript), opened from disk with no server.
Each episode is rendered once inside a ``<template>`` element; the script only filters the
list and clones the chosen episodes into the two panes, so a page of a thousand episodes
costs the browser almost nothing until one is opened. The URL's fragment
(``#task=...&left=...&right=...``) names what the panes show, so a comparison can be linked.

What a step shows comes from the stored trajectory (``Step(candidate, result, considered,
value)``): the candidates proposed and the value model's value of each (QLASS and beam
search score several; greedy and sampled episodes have one unscored candidate), which one
was executed, the observation, reward and score. Best-of-N stores only the rollout it chose;
the values and true final scores of all ``N`` rollouts are in the trajectory's ``info`` and
shown above the steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qlass.report.data import episode_trajectory, split_strategy, strategy_sort_key
from qlass.report.templating import render_page
from qlass.runtime.evaluate import StrategyReport
from qlass.storage import EpisodeRecord
from qlass.types import Step, TaskSpec, Trajectory

__all__ = [
    "CandidateView",
    "EpisodeView",
    "RolloutView",
    "StepView",
    "default_pair",
    "episode_view",
    "render_episodes",
    "select_episodes",
]

_ROLLOUT_KEYS = ("values", "scores", "chosen", "oracle_best_score")
"""Best-of-N's ``info`` keys, shown as its rollout table rather than as facts."""


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate the search considered at a step (``number`` counts from 1)."""

    number: int
    text: str
    action: str | None
    parse_error: str | None
    value: float | None
    chosen: bool
    same_as: int | None
    """The number of an earlier candidate with the same text (sampled twice), if any."""


@dataclass(frozen=True, slots=True)
class StepView:
    """One executed step: the chosen candidate, the alternatives and what the env said."""

    number: int
    text: str
    action: str | None
    parse_error: str | None
    value: float | None
    candidates: tuple[CandidateView, ...]
    observation: str
    reward: float
    score: float
    done: bool
    success: bool
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class RolloutView:
    """One of Best-of-N's rollouts: the value model's value of it and its true score."""

    number: int
    value: float | None
    score: float | None
    chosen: bool


@dataclass(frozen=True, slots=True)
class EpisodeView:
    """One stored episode as the page shows it."""

    id: int
    strategy: str
    task: TaskSpec
    final_score: float
    success: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    env_steps: int
    wall_time_s: float
    stop_reason: str
    """Why the episode ended (a :class:`~qlass.types.StopReason`; ``unknown`` if not
    recorded)."""
    instruction: str
    initial_observation: str
    steps: tuple[StepView, ...]
    rollouts: tuple[RolloutView, ...]
    oracle_best_score: float | None
    info: tuple[tuple[str, str], ...]
    """Other ``info`` entries, as (key, JSON text)."""

    @property
    def outcome(self) -> str:
        return "success" if self.success else "failure"


def _candidates(step: Step) -> tuple[CandidateView, ...]:
    first_by_text: dict[str, int] = {}
    chosen_at: int | None = None
    views = []
    for number, scored in enumerate(step.considered, 1):
        candidate = scored.candidate
        same_as = first_by_text.setdefault(candidate.text, number)
        if chosen_at is None and candidate.text == step.candidate.text:
            chosen_at = number
        views.append(
            CandidateView(
                number=number,
                text=candidate.text,
                action=candidate.action,
                parse_error=candidate.parse_error,
                value=scored.value,
                chosen=chosen_at == number,
                same_as=None if same_as == number else same_as,
            )
        )
    return tuple(views)


def _step(number: int, step: Step) -> StepView:
    candidate, result = step.candidate, step.result
    return StepView(
        number=number,
        text=candidate.text,
        action=candidate.action,
        parse_error=candidate.parse_error,
        value=step.value,
        candidates=_candidates(step),
        observation=result.observation,
        reward=result.reward,
        score=result.score,
        done=result.done,
        success=result.success,
        prompt_tokens=candidate.usage.prompt_tokens,
        completion_tokens=candidate.usage.completion_tokens,
    )


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rollouts(info: Mapping[str, Any]) -> tuple[RolloutView, ...]:
    """Best-of-N's rollouts (its ``info`` has a value and a true score per rollout; beam
    search's ``values`` alone are beams, shown as a fact)."""
    values, scores = info.get("values"), info.get("scores")
    if not isinstance(values, list) or not isinstance(scores, list):
        return ()
    chosen = info.get("chosen")
    return tuple(
        RolloutView(
            number=index + 1,
            value=_float_or_none(values[index]) if index < len(values) else None,
            score=_float_or_none(scores[index]) if index < len(scores) else None,
            chosen=chosen == index,
        )
        for index in range(max(len(values), len(scores)))
    )


def episode_view(record: EpisodeRecord) -> EpisodeView:
    """What the page shows of one stored episode."""
    trajectory: Trajectory = episode_trajectory(record)
    info = trajectory.info
    rollouts = _rollouts(info)
    return EpisodeView(
        id=record.id,
        strategy=record.strategy,
        task=trajectory.task,
        final_score=trajectory.final_score,
        success=trajectory.success,
        prompt_tokens=trajectory.usage.prompt_tokens,
        completion_tokens=trajectory.usage.completion_tokens,
        cost_usd=trajectory.usage.cost_usd,
        env_steps=trajectory.env_steps,
        wall_time_s=trajectory.wall_time_s,
        stop_reason=trajectory.stop_reason or record.stop_reason or "unknown",
        instruction=trajectory.instruction,
        initial_observation=trajectory.initial_observation,
        steps=tuple(_step(number, step) for number, step in enumerate(trajectory.steps, 1)),
        rollouts=rollouts,
        oracle_best_score=_float_or_none(info.get("oracle_best_score")),
        info=tuple(
            (key, json.dumps(value, default=str))
            for key, value in info.items()
            if key != "strategy" and not (rollouts and key in _ROLLOUT_KEYS)
        ),
    )


def _order(
    record: EpisodeRecord,
) -> tuple[tuple[str, str, str, str, int], tuple[int, str, int], int]:
    # By task (variations in numeric order), then strategy, then age.
    task = TaskSpec(**record.trajectory["task"])
    task_order = (task.env, task.name, task.params, task.split, task.variation)
    return task_order, strategy_sort_key(record.strategy), record.id


def select_episodes(
    records: Sequence[EpisodeRecord], *, task_key: str | None = None, max_tasks: int = 200
) -> tuple[list[EpisodeView], list[str]]:
    """The episodes to show (all strategies of at most ``max_tasks`` tasks, or of
    ``task_key`` only), ordered by task then strategy, plus notes on what was left out."""
    chosen = sorted((r for r in records if task_key is None or r.task_key == task_key), key=_order)
    task_keys = list(dict.fromkeys(r.task_key for r in chosen))
    notes: list[str] = []
    if len(task_keys) > max_tasks:
        notes.append(
            f"episodes of {max_tasks} tasks shown (task cap {max_tasks}); "
            f"{len(task_keys) - max_tasks} more tasks not shown"
        )
        kept = set(task_keys[:max_tasks])
        chosen = [r for r in chosen if r.task_key in kept]
    pairs = [(r.task_key, r.strategy) for r in chosen]
    repeated = len(pairs) - len(set(pairs))
    if repeated:
        notes.append(
            f"{repeated} episodes repeat a (task, strategy) pair already shown; the panes "
            "open the first of them"
        )
    return [episode_view(record) for record in chosen], notes


def default_pair(strategies: Sequence[str]) -> tuple[str | None, str | None]:
    """The two strategies the panes open with: QLASS on the left (else the first), and
    Best-of-N of the same budget on the right (else any Best-of-N, else the next one)."""
    if not strategies:
        return None, None
    left = next((s for s in strategies if split_strategy(s)[0] == "qlass"), strategies[0])
    others = [s for s in strategies if s != left]
    if not others:
        return left, None
    budget = split_strategy(left)[1]
    best_of_n = [s for s in others if split_strategy(s)[0] == "best_of_n"]
    same_budget = [s for s in best_of_n if split_strategy(s)[1] == budget]
    return left, (same_budget or best_of_n or others)[0]


def render_episodes(
    run_name: str,
    stage: str | None,
    episodes: Sequence[EpisodeView],
    *,
    summaries: Sequence[StrategyReport] = (),
    notes: Sequence[str] = (),
    generated_at: datetime | None = None,
) -> str:
    """The whole page; ``summaries`` are the per-strategy figures of the whole stage (as
    ``qlass report`` tables them)."""
    strategies = sorted({e.strategy for e in episodes}, key=strategy_sort_key)
    left, right = default_pair(strategies)
    first = next((e for e in episodes if e.strategy == left), episodes[0] if episodes else None)
    return render_page(
        "episodes.html",
        run_name=run_name,
        stage=stage,
        episodes=episodes,
        strategies=strategies,
        tasks=len({e.task.key for e in episodes}),
        summaries=summaries,
        notes=list(notes),
        default_task=first.task.key if first is not None else "",
        default_left=left or "",
        default_right=right or "",
        generated=(generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
    )
