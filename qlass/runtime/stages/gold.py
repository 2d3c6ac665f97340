"""The gold stage: expert trajectories of the train split from its env family's expert paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlass.config import RunConfig
from qlass.envs.gold import export_gold
from qlass.errors import StageFailedError
from qlass.runtime.checks import env_options
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
        # A stage stopped earlier with these settings is still running: continue it.
        stage = await ctx.store.stages.get(ctx.run_record.id, "gold")
        resume = stage is not None and bool(stage.metrics.get("stopped"))
        bar = ctx.progress.bar("gold paths", len(tasks))
        report = await export_gold(
            config.env.name,
            tasks,
            expert_file(config),
            workers=min(config.env.pool_size, 4),
            tries=config.env.gold_tries,
            on_task=lambda _task, _ok: bar.advance(),
            stop=lambda: ctx.stop.requested,
            resume=resume,
            env_options=env_options(config.env)[0],
        )
        if tasks and not report.written and not report.unfinished:
            key, reason = report.skipped[0]
            raise StageFailedError(
                f"gold: no expert trajectory for any of the {len(tasks)} task(s), so there "
                f"is nothing to train on; the first, {key}: {reason}"
            )
        metrics: dict[str, Any] = {
            "trajectories": report.written,
            "skipped": len(report.skipped),
            "env_steps": report.env_steps,
            "file": str(report.path),
            "ungeneratable": list(report.ungeneratable),
            "unfinished_tasks": report.unfinished,
        }
        return metrics

    if config.bc.expert_file is not None:
        return [StageResult("gold", True, {"file": str(config.bc.expert_file)})]
    return [await ctx.run_recorded("gold", body, force=force)]
