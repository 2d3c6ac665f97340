"""Whole-method compute: what each point of a sweep spent in every stage (BC, exploration,
QNet training) next to what its evaluation spent, from the stage records.

Every stage records its tokens, env steps and wall time (:mod:`qlass.runtime.pipeline`);
a stage a run took over from another run of the sweep (``reused_from``) shows the donor's
figures, marked ``*``: the method needs that work, but the sweep paid for it once. Wall
time is the stage's elapsed time on this machine (GPU time when it trained on a GPU; it
is not measured apart). Values are means over the point's seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qlass.config import RunConfig
from qlass.runtime.pipeline import variant_record_name
from qlass.runtime.stages import DEPENDS, FROZEN
from qlass.runtime.sweep import GridAxis, sweep_member_config, sweep_points
from qlass.storage import StageRecord, TreeStore

__all__ = ["COMPUTE_MD", "StageCost", "compute_rows", "render_compute_markdown", "sweep_compute"]

COMPUTE_MD = "compute.md"

_STAGES = ("gold", "bc", "explore", "label", "train_qnet", "eval")


@dataclass(frozen=True, slots=True)
class StageCost:
    """One stage of one point, mean over its seeds."""

    point: str
    stage: str
    seeds: int
    completion_tokens: float
    train_tokens: float
    env_steps: float
    wall_time_s: float
    reused: bool


def _number(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def _eval_costs(metrics: Mapping[str, Any]) -> tuple[float, float]:
    """Completion tokens and env steps of an eval stage (summed over its strategies)."""
    reports = metrics.get("reports", [])
    tokens = sum(_number(report, "completion_tokens") for report in reports)
    return tokens, sum(_number(report, "env_steps") for report in reports)


async def sweep_compute(store: TreeStore, name: str) -> list[StageCost]:
    """Per point of sweep ``name`` and per stage, the mean cost over the point's seeds."""
    record = await store.studies.get(name)
    settings = record.settings
    base = RunConfig.model_validate(record.config)
    axes = [GridAxis(str(f), tuple(map(str, v))) for f, v in settings["grid"]]
    points = sweep_points(base, axes)
    labels = {int(p["index"]): str(p["label"]) for p in settings["points"]}
    costs: list[StageCost] = []
    for point in points:
        study = await store.studies.find(str(settings["points"][point.index]["study"]))
        if study is None:
            continue
        members = await store.studies.members(study.id)
        per_stage: dict[str, list[StageRecord]] = {}
        for member in members:
            config = sweep_member_config(base, point.config, member.seed)
            for stage in _STAGES:
                fingerprint = config.section_fingerprint(*DEPENDS[stage])
                record_name = stage if stage in FROZEN else variant_record_name(stage, fingerprint)
                found = await store.stages.get(member.run_id, record_name)
                if found is not None:
                    per_stage.setdefault(stage, []).append(found)
        costs += compute_rows(labels[point.index], per_stage)
    return costs


def compute_rows(point: str, per_stage: Mapping[str, Sequence[StageRecord]]) -> list[StageCost]:
    """The cost rows of one point from its stage records (one per seed and stage)."""
    rows = []
    for stage in _STAGES:
        records = per_stage.get(stage, ())
        if not records:
            continue
        n = len(records)
        tokens = train = steps = wall = 0.0
        for r in records:
            m = r.metrics
            if stage == "eval":
                t, s = _eval_costs(m)
                tokens, steps = tokens + t, steps + s
            else:
                tokens += _number(m, "completion_tokens")
                steps += _number(m, "env_steps")
            train += _number(m, "train_tokens")
            wall += _number(m, "wall_time_s")
        reused = any("reused_from" in r.metrics for r in records)
        rows.append(StageCost(point, stage, n, tokens / n, train / n, steps / n, wall / n, reused))
    return rows


def render_compute_markdown(name: str, costs: Sequence[StageCost]) -> str:
    """The compute table as markdown: one row per (point, stage), then per point totals."""
    lines = [
        f"# Compute of sweep {name}",
        "",
        "Means over each point's seeds. Policy completion tokens (exploration: sampling the "
        "trees; eval: every strategy's episodes together), BC training tokens, env steps "
        "and wall time. `*`: taken over from another run of the sweep (paid once).",
        "",
        "| point | stage | seeds | completion tokens | train tokens | env steps | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    totals: dict[str, list[float]] = {}
    for c in costs:
        mark = "*" if c.reused else ""
        lines.append(
            f"| {c.point} | {c.stage}{mark} | {c.seeds} | {c.completion_tokens:.0f} | "
            f"{c.train_tokens:.0f} | {c.env_steps:.0f} | {c.wall_time_s:.1f} |"
        )
        if c.stage != "eval":
            total = totals.setdefault(c.point, [0.0, 0.0, 0.0])
            total[0] += c.completion_tokens
            total[1] += c.env_steps
            total[2] += c.wall_time_s
    lines += [
        "",
        "## Training cost per point (gold + BC + exploration + labels + QNet)",
        "",
        "| point | completion tokens | env steps | wall s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p} | {t:.0f} | {s:.0f} | {w:.1f} |" for p, (t, s, w) in totals.items()]
    return "\n".join(lines) + "\n"
