"""The bc stage: behaviour cloning of the policy on the expert trajectories."""

from __future__ import annotations

import asyncio
from typing import Any

from qlass.errors import TrainingStopped
from qlass.runtime.stages import gold
from qlass.runtime.stages.base import StageContext, StageResult, bar_progress, import_in_thread

__all__ = ["run"]


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """Train the BC policy (skipped when ``policy.model`` names the policy); exports the
    expert trajectories first if they are missing."""
    config = ctx.config
    if config.policy.backend != "hf" or config.policy.model is not None:
        ctx.progress.log("[dim]bc: the policy is given by policy.model; skipped")
        return [StageResult("bc", True, {})]

    async def body() -> dict[str, Any]:
        await import_in_thread("qlass.runtime.bc")
        from qlass.runtime.bc import load_conversations, train_policy

        expert = gold.expert_file(config)
        if not await asyncio.to_thread(expert.exists):
            await gold.run(ctx)
        # bc.examples=0 trains nothing; the texts still give a from-scratch tokenizer its
        # vocabulary (see train_policy).
        cap = config.bc.examples or None
        conversations = await asyncio.to_thread(load_conversations, expert, cap)
        bar = ctx.progress.bar("behaviour cloning", None)
        try:
            result = await asyncio.to_thread(
                train_policy,
                conversations,
                config.bc,
                output_dir=config.policy_dir,
                system_prompt=ctx.resources.system_prompt(),
                max_turns=config.policy.max_turns_in_prompt,
                seed=config.seed,
                progress=bar_progress(bar),
                should_stop=lambda: ctx.stop.requested,
            )
        except TrainingStopped as stopped:
            return {"note": str(stopped)}
        finally:
            ctx.resources.forget_policy()  # the BC folder is (being) rewritten
        return {
            "conversations": result.conversations,
            "examples": result.examples,
            "train_tokens": result.train_tokens,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "model_dir": str(result.model_dir),
        }

    return [await ctx.run_recorded("bc", body, force=force)]
