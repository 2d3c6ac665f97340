"""Evaluation and search episodes with their cost, and the JSON form of a trajectory."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sqlalchemy import select

from qlass.storage._db import Database, record
from qlass.storage.models import Episode, table, utcnow
from qlass.storage.records import EpisodeRecord
from qlass.types import (
    Candidate,
    ScoredCandidate,
    Step,
    StepResult,
    TaskSpec,
    Trajectory,
    Usage,
)

__all__ = ["EpisodeRepository", "trajectory_from_json", "trajectory_to_json"]

_EPISODES = table(Episode)


def trajectory_to_json(trajectory: Trajectory) -> dict[str, Any]:
    """The trajectory as JSON data (``info`` values that JSON cannot hold become strings)."""
    data: dict[str, Any] = json.loads(json.dumps(asdict(trajectory), default=str))
    return data


def _candidate(data: Mapping[str, Any]) -> Candidate:
    return Candidate(**{**data, "usage": Usage(**data["usage"])})


def _step(data: Mapping[str, Any]) -> Step:
    result = dict(data["result"])
    if result.get("valid_actions") is not None:
        result["valid_actions"] = tuple(result["valid_actions"])
    return Step(
        candidate=_candidate(data["candidate"]),
        result=StepResult(**result),
        considered=tuple(
            ScoredCandidate(_candidate(item["candidate"]), item["value"])
            for item in data["considered"]
        ),
        value=data["value"],
    )


def trajectory_from_json(data: Mapping[str, Any]) -> Trajectory:
    """Rebuild a :class:`~qlass.types.Trajectory` from :func:`trajectory_to_json` output."""
    return Trajectory(
        task=TaskSpec(**data["task"]),
        instruction=data["instruction"],
        initial_observation=data["initial_observation"],
        steps=tuple(_step(step) for step in data["steps"]),
        final_score=data["final_score"],
        success=data["success"],
        usage=Usage(**data["usage"]),
        env_steps=data["env_steps"],
        wall_time_s=data["wall_time_s"],
        info=data.get("info") or {},
        stop_reason=data.get("stop_reason", ""),
    )


class EpisodeRepository:
    """Add and list the episodes of evaluation and search stages."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, run_id: int, stage: str, strategy: str, trajectory: Trajectory
    ) -> EpisodeRecord:
        """Record one finished episode (committed on return)."""
        row = {
            "run_id": run_id,
            "stage": stage,
            "strategy": strategy,
            "task_key": trajectory.task.key,
            "split": trajectory.task.split,
            "final_score": trajectory.final_score,
            "success": trajectory.success,
            "steps": len(trajectory.steps),
            "prompt_tokens": trajectory.usage.prompt_tokens,
            "completion_tokens": trajectory.usage.completion_tokens,
            "env_steps": trajectory.env_steps,
            "wall_time_s": trajectory.wall_time_s,
            "stop_reason": trajectory.stop_reason or None,
            "trajectory": trajectory_to_json(trajectory),
            "created_at": utcnow(),
        }
        async with self._db.write() as session:
            episode_id = (
                await session.execute(_EPISODES.insert().values(**row).returning(_EPISODES.c.id))
            ).scalar_one()
        return record(EpisodeRecord, {**row, "id": episode_id})

    async def of_run(
        self, run_id: int, *, stage: str | None = None, strategy: str | None = None
    ) -> list[EpisodeRecord]:
        """The run's episodes in insertion order, optionally of one stage and/or strategy."""
        query = select(_EPISODES).where(_EPISODES.c.run_id == run_id).order_by(_EPISODES.c.id)
        if stage is not None:
            query = query.where(_EPISODES.c.stage == stage)
        if strategy is not None:
            query = query.where(_EPISODES.c.strategy == strategy)
        async with self._db.read() as session:
            return [record(EpisodeRecord, row) for row in await session.execute(query)]

    async def done_keys(self, run_id: int, stage: str, strategy: str) -> set[str]:
        """Task keys that already have an episode in this stage and strategy (for resume)."""
        async with self._db.read() as session:
            keys = await session.scalars(
                select(_EPISODES.c.task_key).where(
                    _EPISODES.c.run_id == run_id,
                    _EPISODES.c.stage == stage,
                    _EPISODES.c.strategy == strategy,
                )
            )
            return set(keys)
