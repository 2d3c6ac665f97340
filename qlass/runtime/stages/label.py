"""The label stage: the run's Q-label set (its labels are then kept up to date
incrementally as leaves are stored)."""

from __future__ import annotations

from typing import Any

from qlass.runtime.stages.base import StageContext, StageResult
from qlass.storage import LabelSetRecord

__all__ = ["label_set", "run"]


async def label_set(ctx: StageContext) -> LabelSetRecord:
    """The run's label set for ``labels.*`` (made if it does not exist)."""
    labels = ctx.config.labels
    return await ctx.store.labels.create_set(
        ctx.run_record.id,
        gamma=labels.gamma,
        normalize=labels.normalize,
        intermediate_reward=labels.intermediate_reward,
        kind=labels.kind,
    )


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """Make sure the run's Q-label set exists."""

    async def body() -> dict[str, Any]:
        made = await label_set(ctx)
        return {"label_set": made.id, "gamma": made.gamma, "kind": made.kind}

    return [await ctx.run_recorded("label", body, force=force)]
