"""The train_qnet stage: train the QNet on the labelled trees (split by task) and record
the checkpoint. ``qlass train-qnet`` trains through the same :func:`train_and_record`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlass.config import RunConfig
from qlass.errors import MissingDataError, TrainingStopped
from qlass.runtime.stages.base import StageContext, StageResult, bar_progress, import_in_thread
from qlass.runtime.stages.label import label_set
from qlass.storage import CheckpointRecord, LabelSetRecord, TreeStore
from qlass.types import LabelledStep

if TYPE_CHECKING:  # torch and transformers load only when training starts
    from qlass.qnet.train import TrainResult, TrainSettings

__all__ = ["run", "train_and_record", "training_triples"]


async def training_triples(
    store: TreeStore, labels: LabelSetRecord, config: RunConfig
) -> list[LabelledStep]:
    """The train split's labelled steps of ``labels`` (``labels.max_triples_per_tree``)."""
    return await store.export_triples(
        labels.id, max_per_tree=config.labels.max_triples_per_tree, seed=config.seed, split="train"
    )


async def train_and_record(
    triples: Sequence[LabelledStep],
    init: str | Path,
    settings: TrainSettings,
    *,
    record_in: tuple[TreeStore, LabelSetRecord] | None = None,
    on_progress: Callable[[int, int, float | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra_metrics: Mapping[str, Any] | None = None,
) -> tuple[TrainResult, CheckpointRecord | None]:
    """Train a QNet from ``init`` on ``triples`` (in a worker thread) and, with
    ``record_in``, record the checkpoint in that store for that label set.

    Raises:
        TrainingStopped: ``should_stop`` said so; nothing was saved.
    """
    await import_in_thread("qlass.qnet.train")
    from qlass.qnet.train import train_qnet

    result = await asyncio.to_thread(
        train_qnet, triples, init, settings, on_progress=on_progress, should_stop=should_stop
    )
    if record_in is None:
        return result, None
    store, labels = record_in
    recorded = await store.checkpoints.add(
        labels.run_id,
        await asyncio.to_thread(settings.output_dir.resolve),
        label_set_id=labels.id,
        metrics=result.metrics() | dict(extra_metrics or {}),
    )
    return result, recorded


async def _why_no_triples(ctx: StageContext) -> str:
    """Why the run's train trees give no training triple, in one line."""
    statuses = await ctx.store.trees.step_statuses(ctx.run_record.id, split="train")
    steps = sum(statuses.values())
    if not steps:
        return "no labelled triples: the run has no explored steps; run the explore stage first"
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    if not statuses.get("ok"):
        return (
            f"no labelled triples: none of the trees' {steps} steps is a valid action "
            f"({counts}; 'invalid': the policy's text held no action), so there is nothing "
            "to train a QNet on; the policy needs behaviour cloning (bc.examples) or a "
            "prompt it follows (policy.prompt)"
        )
    return (
        f"no labelled triples among the trees' {steps} steps ({counts}): none of the valid "
        "ones has a Q label (are the trees unfinished?); rerun explore, then label"
    )


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """Train the QNet on the run's labelled trees, from ``qnet.base_model`` or the BC
    policy."""
    config = ctx.config

    async def body() -> dict[str, Any]:
        await import_in_thread("qlass.qnet.train")
        from qlass.qnet.train import qnet_train_settings

        labels = await label_set(ctx)
        triples = await training_triples(ctx.store, labels, config)
        if not triples:
            raise MissingDataError(await _why_no_triples(ctx))
        extra = {"max_triples_per_tree": config.labels.max_triples_per_tree}
        bar = ctx.progress.bar("training the QNet", None)
        try:
            result, _ = await train_and_record(
                triples,
                config.qnet.base_model or str(config.policy_dir),
                qnet_train_settings(config),
                record_in=(ctx.store, labels),
                on_progress=bar_progress(bar),
                should_stop=lambda: ctx.stop.requested,
                extra_metrics=extra,
            )
        except TrainingStopped as stopped:
            return {"note": str(stopped)}
        return {"triples": len(triples), **result.metrics(), **extra}

    return [await ctx.run_recorded("train_qnet", body, force=force)]
