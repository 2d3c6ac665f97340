"""The tree store: runs, tasks, exploration trees, Q labels, the policy-call cache, QNet
checkpoints, stages, episodes and studies, in SQLite (default) or PostgreSQL via SQLAlchemy 2 async.

    store = await TreeStore.open("runs/qlass.db")
    run = await store.runs.create("demo", config=cfg.model_dump(mode="json"), ...)
    task = await store.tasks.add(run.id, spec)
    root = await store.trees.add_root(task.id, obs.text, instruction=obs.instruction)
    labels = await store.labels.create_set(run.id, gamma=0.9)
    ...
    triples = await store.export_triples(labels.id, max_per_tree=300)

Layering: this package knows the schema only; it imports no envs, backends or runtime.
"""

from qlass.storage.bellman import LabelNode, minmax_normalize, node_value, tree_values
from qlass.storage.calls import PolicyCallCache
from qlass.storage.engine import make_engine, normalize_url
from qlass.storage.episodes import trajectory_from_json, trajectory_to_json
from qlass.storage.records import (
    CheckpointRecord,
    EpisodeRecord,
    EpisodeSummary,
    LabelSetRecord,
    LabelSetSummary,
    NewNode,
    NodeRecord,
    RunRecord,
    RunSummary,
    StageRecord,
    StudyMemberRecord,
    StudyRecord,
    TaskRecord,
    Tree,
)
from qlass.storage.schema import SchemaState, head_revision
from qlass.storage.store import TreeStore

__all__ = [
    "CheckpointRecord",
    "EpisodeRecord",
    "EpisodeSummary",
    "LabelNode",
    "LabelSetRecord",
    "LabelSetSummary",
    "NewNode",
    "NodeRecord",
    "PolicyCallCache",
    "RunRecord",
    "RunSummary",
    "SchemaState",
    "StageRecord",
    "StudyMemberRecord",
    "StudyRecord",
    "TaskRecord",
    "Tree",
    "TreeStore",
    "head_revision",
    "make_engine",
    "minmax_normalize",
    "node_value",
    "normalize_url",
    "trajectory_from_json",
    "trajectory_to_json",
    "tree_values",
]
