"""Self-training (paper stage 5, optional): collect Q-guided episodes on the train tasks,
keep the good ones, fine-tune the policy on them, and repeat; each round is evaluated.

Round ``k`` starts from the policy of round ``k-1`` (round 0 is the BC policy), collects
episodes with ``self_train.strategy`` (Q-guided by default) and fine-tunes on the episodes
scoring at least ``self_train.min_score`` (plus the expert trajectories), then evaluates the
new policy with ``search.strategies`` on the eval split. Each round is a stage
``self_train:<k>`` whose metrics hold ``{"round": k, "kept": ..., "reports": [...]}``, so a
rerun skips finished rounds. A round's evaluated policy is the next round's collecting
policy (built once: the run's resources keep one policy per model folder).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from qlass.chat import policy_messages
from qlass.errors import TrainingStopped
from qlass.runtime.stages.base import StageContext, StageResult, import_in_thread
from qlass.runtime.stages.evaluation import evaluate, stored_trajectories
from qlass.runtime.stages.gold import expert_file
from qlass.runtime.strategies import StrategyOptions, make_strategy
from qlass.types import ChatMessage, Trajectory

__all__ = ["run", "trajectory_messages"]


def trajectory_messages(trajectory: Trajectory) -> list[ChatMessage] | None:
    """The conversation of an episode for fine-tuning, or None if it holds an invalid turn."""
    if not trajectory.steps or any(not s.candidate.is_valid for s in trajectory.steps):
        return None
    messages = policy_messages(trajectory.history)
    return messages[:-1]  # the last observation follows the last action: nothing to learn


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """Run the configured number of self-training rounds; returns one result per round."""
    config = ctx.config
    results: list[StageResult] = []
    model_dir = config.policy_dir
    for round_ in range(1, config.self_train.rounds + 1):
        if ctx.stop.requested:
            break
        out_dir = config.directory / f"policy-round{round_}"
        result = await ctx.run_recorded(
            f"self_train:{round_}",
            functools.partial(_round, ctx, round_, model_dir, out_dir),
            force=force,
            fingerprint_of="self_train",
        )
        results.append(result)
        model_dir = out_dir
    return results


async def _round(ctx: StageContext, round_: int, base: Path, out: Path) -> dict[str, Any]:
    await import_in_thread("qlass.runtime.bc")
    from qlass.runtime.bc import load_conversations, train_policy

    config = ctx.config
    settings = config.self_train
    strategy = make_strategy(settings.strategy, options=StrategyOptions.from_config(config.search))
    tasks = await ctx.tasks("train", settings.tasks)
    collect_stage = f"self_train:{round_}:collect"
    await evaluate(
        ctx,
        [strategy.name],
        split="train",
        tasks=tasks,
        policy=await ctx.resources.policy(base),
        stage=collect_stage,
    )
    if ctx.stop.requested:  # a partial collection must not be trained on
        return {"round": round_, "note": "stopped while collecting"}
    collected = await stored_trajectories(ctx, collect_stage, strategy.name)
    kept = [t for t in collected if t.final_score >= settings.min_score]
    conversations = [m for m in map(trajectory_messages, kept) if m is not None]
    if settings.include_expert:
        conversations += await asyncio.to_thread(load_conversations, expert_file(config))
    bc = config.bc.model_copy(
        update={"base_model": str(base), "epochs": settings.epochs, "lr": settings.lr}
    )
    bar = ctx.progress.bar(f"self-training round {round_}", None)
    ctx.resources.forget_policy(out)  # rewritten below (a forced rerun of the round)
    try:
        trained = await asyncio.to_thread(
            train_policy,
            conversations,
            bc,
            output_dir=out,
            system_prompt=ctx.resources.system_prompt(),
            max_turns=config.policy.max_turns_in_prompt,
            seed=config.seed + round_,
            progress=lambda step, total, loss: bar.update(total=total, completed=step),
            should_stop=lambda: ctx.stop.requested,
        )
    except TrainingStopped as stopped:  # nothing saved: the round trains again on resume
        return {"round": round_, "note": str(stopped)}
    reports = await evaluate(
        ctx,
        stage=f"self_train:{round_}:eval:{config.eval.split}",
        policy=await ctx.resources.policy(out),
    )
    return {
        "round": round_,
        "collected": len(collected),
        "kept": len(kept),
        "examples": trained.examples,
        "final_loss": trained.final_loss,
        "model_dir": str(out),
        "reports": [r.as_dict() for r in reports],
    }
