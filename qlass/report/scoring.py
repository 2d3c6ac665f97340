"""QNet scores the reports need: predictions on the QNet's dev set, and a score per tree node.

Loading a QNet and running it costs time (a model load, one forward pass per batch), so
both are optional in the commands. Scoring goes through :class:`~qlass.qnet.scorer.QNetScorer`
(batched, off the event loop); the QNet modules are imported only when scoring is asked for.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import structlog

from qlass.config import RunConfig
from qlass.errors import MissingDataError
from qlass.qnet.base import ValueModel, ValueQuery
from qlass.runtime.progress import NullProgress, Progress
from qlass.storage import CheckpointRecord, Tree, TreeStore
from qlass.types import LabelledStep

if TYPE_CHECKING:
    from qlass.qnet.scorer import QNetScorer

__all__ = [
    "DevScatter",
    "dev_steps",
    "load_scorer",
    "node_queries",
    "qnet_dev_scatter",
    "score_queries",
]

log = structlog.get_logger(__name__)

SCORE_CHUNK = 64


async def _import_off_loop(name: str) -> ModuleType:
    """Import a heavy module (torch, transformers) in a worker thread: an import reads many
    files, which must not block the event loop."""
    return await asyncio.to_thread(importlib.import_module, name)


@dataclass(frozen=True)
class DevScatter:
    """The QNet's predictions against the true Q labels on its dev tasks.

    ``true_q`` are the labels training used (normalised per tree if the label set is);
    ``notes`` says where the reconstruction may differ from training's dev set.
    """

    checkpoint: str
    label_set_id: int
    true_q: tuple[float, ...]
    predicted: tuple[float, ...]
    task_keys: tuple[str, ...]
    spearman: float
    mse: float
    notes: tuple[str, ...] = field(default=())

    @property
    def tasks(self) -> int:
        return len(set(self.task_keys))


async def dev_steps(
    store: TreeStore, config: RunConfig, checkpoint: CheckpointRecord, label_set_id: int
) -> tuple[list[LabelledStep], list[str]]:
    """The dev triples exactly as training split them, plus notes on any doubt.

    Export and split repeat the pipeline's ``train_qnet`` stage: the label set's triples
    with the checkpoint's recorded per-tree cap and the run seed, split by task with the
    checkpoint's recorded ``dev_fraction`` and seed (the config's when not recorded).
    """
    train = await _import_off_loop("qlass.qnet.train")
    settings = checkpoint.metrics.get("settings") or {}
    dev_fraction = float(settings.get("dev_fraction", config.qnet.dev_fraction))
    seed = int(settings.get("seed", config.seed))
    cap = checkpoint.metrics.get("max_triples_per_tree", config.labels.max_triples_per_tree)
    triples = await store.export_triples(label_set_id, max_per_tree=int(cap), seed=config.seed)
    split = train.split_by_task(triples, dev_fraction, seed)
    notes = []
    recorded = checkpoint.metrics.get("dev_examples")
    if isinstance(recorded, int) and recorded != len(split.dev):
        notes.append(
            f"training recorded {recorded} dev examples, the store now gives {len(split.dev)} "
            "(trees grew after training?)"
        )
    return list(split.dev), notes


async def load_scorer(path: str | Path, *, device: str = "auto") -> QNetScorer:
    """Load a QNet checkpoint as a scorer (in a worker thread).

    Raises:
        MissingDataError: the checkpoint directory does not exist.
    """
    scorer = await _import_off_loop("qlass.qnet.scorer")
    directory = Path(path)
    if not await asyncio.to_thread(directory.is_dir):
        raise MissingDataError(f"QNet checkpoint {directory} does not exist")
    loaded: QNetScorer = await scorer.QNetScorer.aload(directory, device=device)
    return loaded


async def score_queries(
    model: ValueModel,
    queries: Sequence[ValueQuery],
    *,
    progress: Progress | None = None,
    description: str = "QNet scoring",
) -> list[float]:
    """Scores of ``queries`` in order, asked in chunks so a progress bar can follow."""
    bar = (progress or NullProgress()).bar(description, len(queries))
    scores: list[float] = []
    for start in range(0, len(queries), SCORE_CHUNK):
        chunk = queries[start : start + SCORE_CHUNK]
        scores.extend(await model.score(chunk))
        bar.advance(len(chunk))
    return scores


def _mse(a: Sequence[float], b: Sequence[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a) if a else math.nan


async def qnet_dev_scatter(
    store: TreeStore,
    config: RunConfig,
    checkpoint: CheckpointRecord,
    model: ValueModel,
    *,
    label_set_id: int,
    max_points: int = 2000,
    progress: Progress | None = None,
) -> DevScatter | None:
    """Score the checkpoint's dev triples with ``model``; ``None`` if there is no dev set.

    At most ``max_points`` triples are scored (a seeded sample; noted on the result).
    """
    train = await _import_off_loop("qlass.qnet.train")
    steps, notes = await dev_steps(store, config, checkpoint, label_set_id)
    if not steps:
        return None
    if len(steps) > max_points:
        keep = sorted(random.Random(config.seed).sample(range(len(steps)), max_points))
        notes.append(f"{max_points} of {len(steps)} dev steps scored (a seeded sample)")
        steps = [steps[i] for i in keep]
    queries = [ValueQuery(s.history, s.candidate_text) for s in steps]
    predicted = await score_queries(model, queries, progress=progress, description="QNet on dev")
    true_q = [s.q for s in steps]
    return DevScatter(
        checkpoint=checkpoint.path,
        label_set_id=label_set_id,
        true_q=tuple(true_q),
        predicted=tuple(predicted),
        task_keys=tuple(s.task_key for s in steps),
        spearman=train.spearman(predicted, true_q),
        mse=_mse(predicted, true_q),
        notes=tuple(notes),
    )


def node_queries(tree: Tree, node_ids: Sequence[int]) -> dict[int, ValueQuery]:
    """The value query of each non-root node: its parent's history and the node's text
    (what the QNet was asked when the node was a candidate, as in training triples)."""
    queries = {}
    for node_id in node_ids:
        node = tree.by_id[node_id]
        if node.parent_id is not None:
            queries[node_id] = ValueQuery(tree.history(node.parent_id), node.text)
    return queries
