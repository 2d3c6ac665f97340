"""A small stored run built by hand through the TreeStore API: three explored trees with Q
labels, pipeline stages with metrics, two evaluation stages of episodes, and (optionally) a
QNet checkpoint. ``variant`` changes every stored number, so a test can show that what the
reports draw follows the store."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from qlass.config import QNetConfig, RunConfig
from qlass.runtime.evaluate import StrategyReport
from qlass.storage import NewNode, TreeStore
from qlass.types import (
    Candidate,
    ScoredCandidate,
    Step,
    StepResult,
    TaskSpec,
    Trajectory,
    Usage,
)

RUN = "demo"
STRATEGIES = ("greedy", "best_of_n:2", "best_of_n:4", "qlass:2", "qlass:4")
OLD_STAGE = "eval:dev:0ld0ld0ld0ld0ld0"
NEW_STAGE = "eval:dev:fedcba9876543210"
DEV_FRACTION = 0.34  # 3 trees -> 1 dev task
# Leaf rewards (A1, A2, B2) per tree: tree 0 follows A, tree 1 follows B, tree 2 ties at A/B.
LEAVES = ((0.8, 0.2, 0.4), (0.3, 0.1, 0.9), (0.6, 0.0, 0.6))
PARAMS = "numLocations=5,includeDoors=0"  # real keys are long: [..] and no spaces
LONG_OBSERVATION = "You are in a long corridor. " * 30 + "<script>alert('x')</script> & done"


def task_key(index: int) -> str:
    """The key of the demo's train task ``index`` (0..2)."""
    return f"textworld_express/coin[{PARAMS}]/train/{index}"


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    stage: str
    strategy: str
    variation: int
    score: float
    success: bool
    steps: int
    prompt_tokens: int
    completion_tokens: int
    env_steps: int
    wall_time_s: float
    oracle: float | None


@dataclass(frozen=True)
class DemoRun:
    """What was stored (the truth the tests compare the reports with)."""

    run_id: int
    config: RunConfig
    label_set_id: int
    task_ids: tuple[int, ...]
    node_ids: tuple[dict[str, int], ...]  # per tree: name (root, A, A1, ...) -> node id
    episodes: tuple[EpisodeSpec, ...]
    checkpoint: Path | None


def episode_specs(variant: int) -> list[EpisodeSpec]:
    """Deterministic, variant-dependent episodes: an old stage, then the newest one."""
    rng = random.Random(variant)
    specs = []
    for stage, strategies in ((OLD_STAGE, ("greedy", "qlass:2")), (NEW_STAGE, STRATEGIES)):
        for strategy in strategies:
            budget = int(strategy.partition(":")[2] or 1)
            for variation in (0, 1):
                score = round(rng.uniform(0, 1), 3)
                steps = rng.randint(2, 6)
                specs.append(
                    EpisodeSpec(
                        stage=stage,
                        strategy=strategy,
                        variation=variation,
                        score=score,
                        success=score > 0.5,
                        steps=steps,
                        prompt_tokens=rng.randint(200, 400) * budget,
                        completion_tokens=rng.randint(20, 60) * budget * steps,
                        env_steps=steps * budget,
                        wall_time_s=round(rng.uniform(0.5, 2.0), 3),
                        oracle=round(max(score, rng.uniform(0, 1)), 3)
                        if strategy.startswith("best_of_n")
                        else None,
                    )
                )
    return specs


EPISODE_HTML = " <b>locked</b> door & <script>alert('ep')</script>"
"""Markup in the first observation of every episode (the episode viewer must escape it)."""


def _considered(spec: EpisodeSpec, i: int, chosen: Candidate) -> tuple[ScoredCandidate, ...]:
    """QLASS:M steps: M candidates, the chosen one valued highest; step 0 has an invalid
    candidate (unscored) and, with M >= 4, a repeat of the chosen text."""
    budget = int(spec.strategy.partition(":")[2])
    value = round(0.9 - 0.1 * i - 0.01 * spec.variation, 4)
    others: list[ScoredCandidate] = []
    for k in range(1, budget):
        if i == 0 and k == 1:
            others.append(
                ScoredCandidate(Candidate("I am lost <here>", None, parse_error="no action"))
            )
        elif i == 0 and k == 2:
            others.append(ScoredCandidate(chosen, value))
        else:
            other = Candidate(f"Thought: maybe {k}.\nAction: move south", "move south")
            others.append(ScoredCandidate(other, round(value - 0.05 * k, 4)))
    return (ScoredCandidate(chosen, value), *others)


def trajectory(spec: EpisodeSpec) -> Trajectory:
    task = TaskSpec("textworld_express", "coin", spec.variation, "dev")
    per_step = spec.completion_tokens // spec.steps
    guided = spec.strategy.startswith("qlass")
    steps = []
    for i in range(spec.steps):
        last = i == spec.steps - 1
        completion = spec.completion_tokens - per_step * (spec.steps - 1) if last else per_step
        candidate = Candidate(
            f"Thought: step {i}.\nAction: move north", "move north", usage=Usage(0, completion)
        )
        considered = _considered(spec, i, candidate) if guided else ()
        steps.append(
            Step(
                candidate=candidate,
                result=StepResult(
                    f"room {i}" + (EPISODE_HTML if i == 0 else ""),
                    0.0,
                    last,
                    spec.score if last else 0.0,
                ),
                considered=considered,
                value=considered[0].value if considered else None,
            )
        )
    info: dict[str, object] = {}
    if spec.oracle is not None:
        n = int(spec.strategy.partition(":")[2])
        values = [round(0.2 + 0.1 * k, 3) for k in range(n)]
        values[0] = -math.inf  # an invalid rollout
        chosen = n - 1
        scores = [spec.score if k == chosen else spec.oracle for k in range(n)]
        info = {
            "strategy": spec.strategy,
            "values": values,
            "scores": scores,
            "chosen": chosen,
            "oracle_best_score": spec.oracle,
        }
    return Trajectory(
        task=task,
        instruction="Find the coin.",
        initial_observation="kitchen",
        steps=tuple(steps),
        final_score=spec.score,
        success=spec.success,
        usage=Usage(spec.prompt_tokens, spec.completion_tokens),
        env_steps=spec.env_steps,
        wall_time_s=spec.wall_time_s,
        info=info,
    )


def _text(action: str) -> str:
    return f"Thought: I should try <{action}>.\nAction: {action}"


async def _tree(store: TreeStore, task_id: int, index: int) -> dict[str, int]:
    a1, a2, b2 = LEAVES[index]
    root = await store.trees.add_root(
        task_id,
        f'Kitchen {index}: a <b>stove</b> & a "fridge".',
        instruction=f"Your task is to find the coin (tree {index}).",
    )
    a, b = await store.trees.add_children(
        root.id,
        [
            NewNode("You are in the hallway.", action="move north", text=_text("move north")),
            NewNode(LONG_OBSERVATION, action="move south", text=_text("move south"), reward=0.1),
        ],
    )
    a_kids = await store.trees.add_children(
        a.id,
        [
            NewNode(
                "You take the coin.",
                action="take coin",
                text=_text("take coin"),
                done=True,
                success=a1 >= 0.8,
                final_reward=a1,
                score=a1,
            ),
            NewNode("A wall.", action="move west", text=_text("move west"), final_reward=a2),
        ],
    )
    b_kids = await store.trees.add_children(
        b.id,
        [
            NewNode(
                "",
                action=None,
                text="I am not sure <what> to do",
                is_leaf=True,
                status="invalid",
                error="no 'Action:' line",
            ),
            NewNode(
                "The door opens.", action="open door", text=_text("open door"), final_reward=b2
            ),
        ],
    )
    return {
        "root": root.id,
        "A": a.id,
        "B": b.id,
        "A1": a_kids[0].id,
        "A2": a_kids[1].id,
        "B1": b_kids[0].id,
        "B2": b_kids[1].id,
    }


async def populate(
    store: TreeStore, run_dir: Path, *, variant: int = 0, checkpoint: Path | None = None
) -> DemoRun:
    """Store the demo run; ``checkpoint`` (a QNet dir) is recorded if given."""
    config = RunConfig(name=RUN, run_dir=run_dir, qnet=QNetConfig(dev_fraction=DEV_FRACTION))
    run = await store.runs.create(RUN, config=config.model_dump(mode="json"), seed=config.seed)
    label_set = await store.labels.create_set(run.id, gamma=0.9)
    specs = [TaskSpec("textworld_express", "coin", i, "train", PARAMS) for i in range(3)]
    tasks = await store.tasks.add_many(run.id, specs)
    nodes = []
    for index, task in enumerate(tasks):  # as the explorer does: running, the tree, done
        await store.tasks.set_status(task.id, "running")
        nodes.append(await _tree(store, task.id, index))
        await store.tasks.set_status(task.id, "done")
    rng = random.Random(1000 + variant)

    async def stage(name: str, metrics: dict[str, object]) -> None:
        await store.stages.start(run.id, name, "fp")
        await store.stages.finish(run.id, name, metrics=metrics)

    await stage(
        "explore",
        {
            "trees": 3,
            "nodes": 21,
            "prompt_tokens": rng.randint(1000, 5000),
            "completion_tokens": rng.randint(100, 900),
            "env_steps": rng.randint(20, 40),
            "wall_time_s": round(rng.uniform(5, 20), 2),
        },
    )
    await stage("train_qnet", {"dev_mse": 0.05, "dev_spearman": 0.7, "wall_time_s": 3.5})
    episodes = episode_specs(variant)
    for spec in episodes:
        await store.episodes.add(run.id, spec.stage, spec.strategy, trajectory(spec))
    reports = [
        StrategyReport("greedy", "dev", 2, 0.4, 0.5, 3.0, 600, 90, 45.0, 6, 1.0).as_dict(),
        StrategyReport("qlass:2", "dev", 2, 0.6, 0.5, 3.0, 1200, 180, 90.0, 12, 2.0).as_dict(),
    ]
    await stage("eval", {"reports": reports, "wall_time_s": 9.0})
    for round_ in (1, 2):
        await stage(
            f"self_train:{round_}",
            {
                "round": round_,
                "reports": [
                    {"strategy": "greedy", "avg_reward": rng.uniform(0, 1)},
                    {"strategy": "qlass:2", "avg_reward": rng.uniform(0, 1)},
                ],
            },
        )
    if checkpoint is not None:
        await store.checkpoints.add(
            run.id,
            checkpoint,
            label_set_id=label_set.id,
            metrics={"settings": {"dev_fraction": DEV_FRACTION, "seed": 0}, "dev_examples": 5},
        )
    return DemoRun(
        run_id=run.id,
        config=config,
        label_set_id=label_set.id,
        task_ids=tuple(task.id for task in tasks),
        node_ids=tuple(nodes),
        episodes=tuple(episodes),
        checkpoint=checkpoint,
    )
