"""The gold stage: expert trajectories of the train split from its env family's expert paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlass.config import RunConfig
from qlass.envs.gold import export_gold
from qlass.runtime.stages.base import StageContext, StageResult

__all__ = ["expert_file", "run"]


def expert_file(config: RunConfig) -> Path:
    """Where the run's expert trajectories are (``bc.expert_file``, else RUN_DIR)."""
    return config.bc.expert_file or config.directory / "expert.jsonl"


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """Export the expert trajectories (skipped when ``bc.expert_file`` gives them)."""
    config = ctx.config

    async def body() -> dict[str, Any]:
        tasks = await ctx.tasks("train", config.env.train_tasks)
        bar = ctx.progress.bar("gold paths", len(tasks))
        report = await export_gold(
            config.env.name,
            tasks,
            expert_file(config),
            workers=min(config.env.pool_size, 4),
            tries=config.env.gold_tries,
            on_task=lambda _task, _ok: bar.advance(),
        )
        return {
            "trajectories": report.written,
            "skipped": len(report.skipped),
            "env_steps": report.env_steps,
            "file": str(report.path),
        }

    if config.bc.expert_file is not None:
        return [StageResult("gold", True, {"file": str(config.bc.expert_file)})]
    return [await ctx.run_recorded("gold", body, force=force)]
