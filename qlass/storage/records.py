"""Frozen records the store hands out (never ORM objects), and the input of a new node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from qlass.types import History, TaskSpec, Turn

__all__ = [
    "CheckpointRecord",
    "EpisodeRecord",
    "EpisodeSummary",
    "IntermediateReward",
    "LabelKind",
    "LabelSetRecord",
    "LabelSetSummary",
    "NewNode",
    "NodeRecord",
    "NodeStatus",
    "RunRecord",
    "RunSummary",
    "StageRecord",
    "StageStatus",
    "StudyMemberRecord",
    "StudyRecord",
    "TaskRecord",
    "TaskStatus",
    "Tree",
]

TaskStatus = Literal["pending", "running", "done", "failed"]
NodeStatus = Literal["ok", "invalid", "failed"]
StageStatus = Literal["running", "done", "failed"]
IntermediateReward = Literal["zero", "env"]
LabelKind = Literal["bellman", "mc_mean", "outcome"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    name: str
    config: Mapping[str, Any]
    config_fingerprint: str
    code_version: str
    seed: int
    status: str
    """How the last command on it ended (docs/reliability.md); ``interrupted``: it was
    ``running`` but its process stopped renewing the run's lease (killed outright)."""
    spent_tokens: int
    spent_usd: float
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    run_id: int
    key: str
    env: str
    name: str
    variation: int
    split: str
    params: str
    instruction: str
    status: str
    claimed_by: str | None
    lease_expires_at: datetime | None
    attempts: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def spec(self) -> TaskSpec:
        """The task as the envs know it."""
        return TaskSpec(self.env, self.name, self.variation, self.split, self.params)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class NewNode:
    """What the explorer knows about a node it is about to add (ids, depth come from the store).

    ``final_reward`` set means the node is a finished leaf (done, or truncated at the depth or
    step limit): it gets a Q label and its ancestors are relabelled. ``is_leaf`` without a
    final reward marks a node that will not be expanded but has no outcome (an invalid
    action, a failed step); such a node stays unlabelled.
    """

    observation: str
    action: str | None = None
    text: str = ""
    reward: float = 0.0
    score: float = 0.0
    done: bool = False
    success: bool = False
    is_leaf: bool = False
    final_reward: float | None = None
    sample_index: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    env_time_s: float = 0.0
    policy_time_s: float = 0.0
    status: NodeStatus = "ok"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A stored node; the same fields as the ``nodes`` table."""

    id: int
    task_id: int
    parent_id: int | None
    depth: int
    sample_index: int
    action: str | None
    text: str
    observation: str
    reward: float
    score: float
    done: bool
    success: bool
    is_leaf: bool
    final_reward: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    env_time_s: float
    policy_time_s: float
    status: str
    error: str | None
    created_at: datetime

    @property
    def turn(self) -> Turn:
        """This node as a history turn (the model's text, its action, what the env said)."""
        return Turn(self.text, self.action, self.observation)


@dataclass(frozen=True)
class Tree:
    """All nodes of one task's tree, ordered by id (parents before children)."""

    task: TaskRecord
    nodes: tuple[NodeRecord, ...]

    @cached_property
    def by_id(self) -> Mapping[int, NodeRecord]:
        return {node.id: node for node in self.nodes}

    @cached_property
    def _children(self) -> Mapping[int | None, tuple[int, ...]]:
        children: dict[int | None, list[int]] = {}
        for node in self.nodes:
            children.setdefault(node.parent_id, []).append(node.id)
        return {parent: tuple(ids) for parent, ids in children.items()}

    @property
    def root(self) -> NodeRecord | None:
        """The root (state after reset), or ``None`` for a tree not started yet."""
        roots = self._children.get(None, ())
        return self.by_id[roots[0]] if roots else None

    def children(self, node_id: int) -> tuple[NodeRecord, ...]:
        return tuple(self.by_id[i] for i in self._children.get(node_id, ()))

    def path(self, node_id: int) -> tuple[NodeRecord, ...]:
        """The nodes from the root down to ``node_id`` (both included)."""
        path: list[NodeRecord] = []
        current: int | None = node_id
        while current is not None:
            node = self.by_id[current]
            path.append(node)
            current = node.parent_id
        return tuple(reversed(path))

    def history(self, node_id: int) -> History:
        """The agent's history in the state of ``node_id`` (its action already taken)."""
        root, *rest = self.path(node_id)
        return History(self.task.instruction, root.observation, tuple(node.turn for node in rest))


@dataclass(frozen=True, slots=True)
class LabelSetRecord:
    id: int
    run_id: int
    gamma: float
    normalize: bool
    intermediate_reward: str
    created_at: datetime
    kind: str = "bellman"


@dataclass(frozen=True, slots=True)
class StageRecord:
    run_id: int
    name: str
    fingerprint: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    metrics: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    id: int
    run_id: int
    stage: str
    strategy: str
    task_key: str
    split: str
    final_score: float
    success: bool
    steps: int
    prompt_tokens: int
    completion_tokens: int
    env_steps: int
    wall_time_s: float
    stop_reason: str | None
    trajectory: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """A study: ``config`` is the base configuration, ``settings`` holds the seeds asked
    for and the stages run; ``summary`` the last computed summary (JSON)."""

    id: int
    name: str
    config: Mapping[str, Any]
    config_fingerprint: str
    code_version: str
    settings: Mapping[str, Any]
    status: str
    summary: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StudyMemberRecord:
    """The run of one seed of a study; ``eval_stage`` labels its evaluation episodes."""

    study_id: int
    seed: int
    run_id: int
    run_name: str
    eval_stage: str


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    id: int
    run_id: int
    label_set_id: int | None
    path: str
    metrics: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LabelSetSummary:
    label_set: LabelSetRecord
    labelled_nodes: int


@dataclass(frozen=True, slots=True)
class EpisodeSummary:
    stage: str
    strategy: str
    episodes: int
    mean_score: float
    success_rate: float
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What ``qlass runs show`` prints: counts over the run's tables."""

    run: RunRecord
    tasks_by_status: Mapping[str, int]
    nodes: int
    finished_leaves: int
    label_sets: tuple[LabelSetSummary, ...]
    stages: tuple[StageRecord, ...]
    checkpoints: tuple[CheckpointRecord, ...]
    episodes: tuple[EpisodeSummary, ...] = field(default=())
