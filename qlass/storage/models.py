"""The tree store's schema as typed SQLAlchemy 2 ORM classes.

Portable SQL only (SQLite and PostgreSQL are both targets): JSON through
:class:`sqlalchemy.JSON`, floats as double precision, timestamps timezone-aware UTC, names
of constraints fixed by a naming convention so migrations can refer to them. Every schema
change needs a new Alembic revision in ``migrations/versions`` (a test compares the two).

A tree is the set of nodes of one task of one run. Its root (depth 0) is the state after
``reset`` (no action; observation = first observation); every other node is the state after
executing ``action`` from its parent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "Episode",
    "LabelSet",
    "Node",
    "PolicyCall",
    "QLabel",
    "QNetCheckpoint",
    "Run",
    "RunHolder",
    "Stage",
    "Study",
    "StudyRun",
    "Task",
    "UTCDateTime",
    "table",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def table(model: type[Base]) -> Table:
    """The Core table of a mapped class, typed as a :class:`Table` (for Core statements)."""
    return cast(Table, model.__table__)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no time zones: values are stored as naive UTC there and tagged UTC on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the naming convention and the type map of the schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        dict[str, Any]: JSON,
        datetime: UTCDateTime,
        float: Double,
        str: Text,
    }


class Run(Base):
    """One run: a configuration applied to a set of tasks (BC, explore, label, train, eval)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]]
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(100))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="created")
    # What the run's fresh policy calls cost over all its stages (its budget's spend).
    spent_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # While a process works on the run it renews this lease; 'running' past it: interrupted.
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RunHolder(Base):
    """A process working on a run (a ``qlass run``, an explore worker, a Ray actor), with
    the lease it renews: the run reads as running while any holder's lease is live, and the
    last holder to leave writes the run's final status."""

    __tablename__ = "run_holders"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime]


class Task(Base):
    """One task of a run (the tree of that task hangs below it); lease columns for workers."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        Index(None, "run_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(500))
    env: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    variation: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(10))
    params: Mapped[str] = mapped_column(String(500), default="")
    instruction: Mapped[str] = mapped_column(default="")
    status: Mapped[str] = mapped_column(String(10), default="pending")
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Node(Base):
    """One tree node: the state reached by ``action`` from the parent (root: after reset)."""

    __tablename__ = "nodes"
    __table_args__ = (Index(None, "task_id", "parent_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    depth: Mapped[int] = mapped_column(Integer)
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    action: Mapped[str | None]
    text: Mapped[str] = mapped_column(default="")
    observation: Mapped[str] = mapped_column(default="")
    reward: Mapped[float] = mapped_column(default=0.0)
    score: Mapped[float] = mapped_column(default=0.0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    is_leaf: Mapped[bool] = mapped_column(Boolean, default=False)
    final_reward: Mapped[float | None]
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    env_time_s: Mapped[float] = mapped_column(default=0.0)
    policy_time_s: Mapped[float] = mapped_column(default=0.0)
    status: Mapped[str] = mapped_column(String(10), default="ok")
    error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelSet(Base):
    """A versioned set of Q labels of one run: one per (gamma, normalize, reward mode,
    kind of value signal)."""

    __tablename__ = "label_sets"
    __table_args__ = (
        UniqueConstraint("run_id", "gamma", "normalize", "intermediate_reward", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    gamma: Mapped[float]
    normalize: Mapped[bool] = mapped_column(Boolean)
    intermediate_reward: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(20), default="bellman", server_default="bellman")


class QLabel(Base):
    """The raw Bellman value of one node in one label set (no row: not labelled yet)."""

    __tablename__ = "q_labels"

    label_set_id: Mapped[int] = mapped_column(
        ForeignKey("label_sets.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    q: Mapped[float]


class PolicyCall(Base):
    """A cached policy response, keyed by the sha256 of the canonical request."""

    __tablename__ = "policy_calls"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(default="")
    request: Mapped[dict[str, Any] | None]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QNetCheckpoint(Base):
    """A trained QNet checkpoint directory, with the label set it was trained on."""

    __tablename__ = "qnet_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    label_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_sets.id", ondelete="SET NULL")
    )
    path: Mapped[str]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Stage(Base):
    """A pipeline stage of a run ('bc', 'explore', 'eval:greedy', ...), skipped when done."""

    __tablename__ = "stages"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(10))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Episode(Base):
    """One evaluation or search episode with its cost and trajectory."""

    __tablename__ = "episodes"
    __table_args__ = (Index(None, "run_id", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(100))
    strategy: Mapped[str] = mapped_column(String(100))
    task_key: Mapped[str] = mapped_column(String(500))
    split: Mapped[str] = mapped_column(String(10))
    final_score: Mapped[float]
    success: Mapped[bool] = mapped_column(Boolean)
    steps: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    env_steps: Mapped[int] = mapped_column(Integer, default=0)
    wall_time_s: Mapped[float] = mapped_column(default=0.0)
    # A qlass.types.StopReason; NULL for episodes stored before it was recorded.
    stop_reason: Mapped[str | None] = mapped_column(String(20))
    trajectory: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """A study: one configuration repeated over several seeds (one run per seed), whose
    evaluation episodes are summarised with confidence intervals."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]]
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(100))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="created")
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StudyRun(Base):
    """The run of one seed of a study, and the stage label of its evaluation episodes."""

    __tablename__ = "study_runs"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    eval_stage: Mapped[str] = mapped_column(String(100), default="")
