"""Self-training (paper stage 5, optional): collect Q-guided episodes on the train tasks,
keep the good ones, fine-tune the policy on them, and repeat; each round is evaluated.

Round ``k`` starts from the policy of round ``k-1`` (round 0 is the BC policy), collects
episodes with ``self_train.strategy`` (Q-guided by default) and fine-tunes on the episodes
scoring at least ``self_train.min_score`` (plus the expert trajectories), then evaluates the
new policy with ``search.strategies`` on the eval split. Each round is a stage
``self_train:<k>`` whose metrics hold ``{"round": k, "kept": ..., "reports": [...]}``, so a
rerun skips finished rounds.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from qlass.chat import policy_messages
from qlass.runtime.bc import load_conversations, train_policy
from qlass.runtime.pipeline import Pipeline, StageResult
from qlass.runtime.strategies import make_strategy
from qlass.types import ChatMessage, Trajectory

__all__ = ["self_train", "trajectory_messages"]


def trajectory_messages(trajectory: Trajectory) -> list[ChatMessage] | None:
    """The conversation of an episode for fine-tuning, or None if it holds an invalid turn."""
    if not trajectory.steps or any(not s.candidate.is_valid for s in trajectory.steps):
        return None
    messages = policy_messages(trajectory.history)
    return messages[:-1]  # the last observation follows the last action: nothing to learn


async def self_train(pipeline: Pipeline) -> list[StageResult]:
    """Run the configured number of self-training rounds; returns one result per round."""
    config = pipeline.config
    settings = config.self_train
    results: list[StageResult] = []
    model_dir = config.policy_dir
    for round_ in range(1, settings.rounds + 1):
        if pipeline.stop.requested:
            break
        out_dir = config.directory / f"policy-round{round_}"
        result = await pipeline.run_stage(
            f"self_train:{round_}",
            functools.partial(_round, pipeline, round_, model_dir, out_dir),
            fingerprint_of="self_train",
        )
        results.append(result)
        model_dir = out_dir
    return results


async def _round(pipeline: Pipeline, round_: int, base: Path, out: Path) -> dict[str, Any]:
    config = pipeline.config
    settings = config.self_train
    policy = await pipeline.policy(base)
    strategy = make_strategy(settings.strategy, temperature=config.search.temperature)
    tasks = await pipeline.tasks("train", settings.tasks)
    collect_stage = f"self_train:{round_}:collect"
    await pipeline.evaluate(
        [strategy.name], split="train", tasks=tasks, policy=policy, stage=collect_stage
    )
    collected = await pipeline.stored_trajectories(collect_stage, strategy.name)
    kept = [t for t in collected if t.final_score >= settings.min_score]
    conversations = [m for m in map(trajectory_messages, kept) if m is not None]
    if settings.include_expert:
        expert = await asyncio.to_thread(load_conversations, pipeline.expert_file())
        conversations += expert
    bc = config.bc.model_copy(
        update={"base_model": str(base), "epochs": settings.epochs, "lr": settings.lr}
    )
    bar = pipeline.progress.bar(f"self-training round {round_}", None)
    trained = await asyncio.to_thread(
        train_policy,
        conversations,
        bc,
        output_dir=out,
        system_prompt=pipeline.system_prompt(),
        max_turns=config.policy.max_turns_in_prompt,
        seed=config.seed + round_,
        progress=lambda step, total, loss: bar.update(total=total, completed=step),
    )
    reports = await pipeline.evaluate(
        stage=f"self_train:{round_}:eval:{config.eval.split}",
        policy=await pipeline.policy(out),
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
