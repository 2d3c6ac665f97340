"""Sweeps: a study per point of a grid of config values, sharing every stage whose inputs
did not change.

``qlass sweep run -c CONFIG --grid labels.gamma=0.5,0.9 --seeds 3`` makes one point per
combination of the grid's values; each point is a study (``<sweep>.p<i>``, one result per
seed) and all of them live in the sweep's store. What a point costs depends on which
sections its values touch (:data:`~qlass.runtime.stages.DEPENDS`):

- ``search.*`` / ``eval.*``: the same run per seed, the same trees and QNet; only the
  evaluation is new (its own episode label and stage record).
- ``labels.*`` / ``qnet.*``: the same run and trees; a label set of its own, a QNet folder
  ``qnet-<variant>`` of its own and its own label/train_qnet/eval records
  (``train_qnet@<fingerprint>``), so resuming one variant never retrains another.
- ``explore.*``: a new run per seed (new trees) that takes over the gold trajectories and
  the BC policy of the seed's other runs.
- ``bc.*`` / ``policy.*``: a new run and a new policy; the gold trajectories are taken
  over.

A run's name is ``<sweep>-seed<k>-<key>``, the key a hash of the sections that decide its
trees. The BC policy of a seed lives in ``seed<k>/policy-<key>`` (one folder per BC
setting), and a stage taken over from another run is recorded in the taking run with
``reused_from`` naming the run that paid for it (:func:`adopt_stage`), so the compute
table counts it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from qlass._version import code_version
from qlass.config import RunConfig, StoreConfig, apply_overrides
from qlass.errors import ConfigError, MissingDataError
from qlass.runtime.pipeline import Pipeline
from qlass.runtime.progress import NullProgress, Progress
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.stages import DEPENDS, OPTIONAL_STAGES, STAGES
from qlass.runtime.stages.evaluation import eval_stage_label
from qlass.runtime.stages.gold import expert_file
from qlass.storage import StudyRecord, TreeStore

__all__ = [
    "SHARED_STAGES",
    "GridAxis",
    "SweepPoint",
    "SweepResult",
    "SweepRunner",
    "adopt_stage",
    "parse_grid",
    "point_study_name",
    "sweep_member_config",
    "sweep_points",
]

log = structlog.get_logger(__name__)

SHARED_STAGES = ("gold", "bc")
"""Stages one run of a sweep can take over from another run of the same seed."""


@dataclass(frozen=True, slots=True)
class GridAxis:
    """One ``--grid field=v1,v2`` option: a config field and the values it takes."""

    field: str
    values: tuple[str, ...]

    def overrides(self) -> list[str]:
        return [f"{self.field}={value}" for value in self.values]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets (``search.strategies=[greedy, qlass:2],[greedy]``)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid(text: str) -> GridAxis:
    """``'labels.gamma=0.5,0.9'`` -> ``GridAxis('labels.gamma', ('0.5', '0.9'))``."""
    field, sep, raw = text.partition("=")
    field = field.strip()
    if not sep or "." not in field:
        raise ConfigError(f"a grid looks like section.field=v1,v2 (e.g. labels.gamma=0.5,0.9), "
                          f"got {text!r}")  # fmt: skip
    values = tuple(v for v in _split_top_level(raw) if v)
    if not values:
        raise ConfigError(f"grid {field}: no values given")
    if len(set(values)) != len(values):
        raise ConfigError(f"grid {field}: values repeat ({raw})")
    return GridAxis(field, values)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One combination of the grid's values."""

    index: int
    label: str
    overrides: tuple[str, ...]
    config: RunConfig


def _validated(data: dict[str, Any], label: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise ConfigError(f"sweep point {label}: {where}: {error['msg']}") from None


def sweep_points(base: RunConfig, axes: Sequence[GridAxis]) -> list[SweepPoint]:
    """Every combination of the axes' values (the first axis varies slowest)."""
    if not axes:
        raise ConfigError("a sweep needs at least one --grid")
    fields = [axis.field for axis in axes]
    if len(set(fields)) != len(fields):
        raise ConfigError(f"a field appears in two grids: {fields}")
    for field in fields:
        if field.split(".")[0] not in DEPENDS["self_train"]:
            raise ConfigError(
                f"grid {field}: only fields of the sections "
                f"{', '.join(DEPENDS['self_train'])} can be swept"
            )
    data = base.model_dump(mode="json")
    points = []
    for index, combination in enumerate(itertools.product(*(a.overrides() for a in axes))):
        label = " ".join(combination)
        config = _validated(apply_overrides(data, combination), label)
        points.append(SweepPoint(index, label, tuple(combination), config))
    return points


def base_point(base: RunConfig, points: Sequence[SweepPoint]) -> SweepPoint:
    """The point the others are compared with: the one equal to the base config (its
    values are the config file's), else the first."""
    for point in points:
        if point.config.fingerprint() == base.fingerprint():
            return point
    return points[0]


def point_study_name(sweep: str, index: int) -> str:
    """The study holding one point's per-seed results."""
    return f"{sweep}.p{index}"


def sweep_member_config(base: RunConfig, point: RunConfig, seed: int) -> RunConfig:
    """The run config of ``point`` for ``seed``: its run is shared by every point with the
    same env/bc/policy/explore sections, its BC folder by every point with the same
    env/bc/policy sections, its QNet folder by every point with the same labels/qnet
    sections (and run)."""
    seeded = point.model_copy(update={"seed": seed})
    run_key = seeded.section_fingerprint(*DEPENDS["explore"])[:8]
    bc_key = seeded.section_fingerprint(*DEPENDS["bc"])[:8]
    qnet_key = seeded.section_fingerprint("labels", "qnet")[:8]
    seed_dir = base.directory / f"seed{seed}"
    run_dir = seed_dir / run_key
    data = seeded.model_dump(mode="json")
    data |= {
        "name": f"{base.name}-seed{seed}-{run_key}",
        "run_dir": str(run_dir),
        "store": StoreConfig(url=base.store_url).model_dump(mode="json"),
    }
    if seeded.bc.output_dir is None:
        data["bc"] = data["bc"] | {"output_dir": str(seed_dir / f"policy-{bc_key}")}
    if seeded.qnet.output_dir is None:
        data["qnet"] = data["qnet"] | {"output_dir": str(run_dir / f"qnet-{qnet_key}")}
    return RunConfig.model_validate(data)


async def adopt_stage(store: TreeStore, config: RunConfig, run_id: int, stage: str) -> str | None:
    """Record ``stage`` of run ``run_id`` as done if another run of the store did it with
    the same fingerprint (same sections, same seed); returns the donor's name.

    The gold trajectories are copied into the run's folder (a small JSONL file); the BC
    policy is not copied: runs with the same BC settings share its folder
    (:func:`sweep_member_config`). Nothing is adopted if the stage is done already.
    """
    fingerprint = config.section_fingerprint(*DEPENDS[stage])
    if await store.stages.is_done(run_id, stage, fingerprint):
        return None
    for other in await store.runs.all():
        if other.id == run_id or other.seed != config.seed:
            continue
        done = await store.stages.get(other.id, stage)
        if done is None or done.status != "done" or done.fingerprint != fingerprint:
            continue
        if "reused_from" in done.metrics:
            continue  # adopt from the run that did the work
        if stage == "gold":
            source = Path(str(done.metrics.get("file", "")))
            if not await asyncio.to_thread(source.exists):
                continue
            target = expert_file(config)
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, source, target)
            metrics = dict(done.metrics) | {"file": str(target)}
        else:
            metrics = dict(done.metrics)
        await store.stages.start(run_id, stage, fingerprint)
        await store.stages.finish(run_id, stage, metrics=metrics | {"reused_from": other.name})
        log.info("stage_adopted", stage=stage, run_id=run_id, donor=other.name)
        return other.name
    return None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What :meth:`SweepRunner.run` did."""

    sweep: StudyRecord
    points: tuple[SweepPoint, ...]
    base: SweepPoint
    stopped: bool


class SweepRunner:
    """Runs every point of a grid over ``seeds``, one study per point, in one store.

    Seeds go in the outer loop, so that the first seed's points are all done (and can be
    looked at) before the second starts; within a seed the points run in grid order.
    """

    def __init__(
        self,
        base: RunConfig,
        axes: Sequence[GridAxis],
        seeds: Sequence[int],
        *,
        stages: Sequence[str] = STAGES,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"a sweep needs distinct seeds, got {list(seeds)}")
        known = STAGES + OPTIONAL_STAGES
        unknown = [s for s in stages if s not in known]
        if unknown or not stages:
            raise ConfigError(
                f"unknown stage {unknown[0]!r}; stages are {', '.join(known)}"
                if unknown
                else "no stages to run"
            )
        self.base = base
        self.axes = tuple(axes)
        self.points = tuple(sweep_points(base, axes))
        self.base_point = base_point(base, self.points)
        self.seeds = tuple(seeds)
        self.stages = tuple(stages)
        self.progress = progress or NullProgress()
        self.stop = stop or StopSignal()

    async def run(self) -> SweepResult:
        """Run (or resume) every (seed, point); stops cleanly after a stop request."""
        sweep, studies = await self._record()
        bar = self.progress.bar(f"sweep {self.base.name}", len(self.seeds) * len(self.points))
        for seed in self.seeds:
            for point in self.points:
                if self.stop.requested:
                    break
                await self._run_point(point, seed, studies[point.index])
                bar.advance()
        stopped = self.stop.requested
        async with await TreeStore.open(self.base.store_url) as store:
            for study in [sweep, *studies.values()]:
                await store.studies.update(study.id, status="stopped" if stopped else "done")
            sweep = await store.studies.get(self.base.name)
        return SweepResult(sweep, self.points, self.base_point, stopped)

    async def _run_point(self, point: SweepPoint, seed: int, study: StudyRecord) -> None:
        """Run one (point, seed). A point whose runs find nothing to work on (a policy that
        never acts, so no QNet can be trained) is recorded as failed with the reason and
        the sweep goes on; any other error stops it."""
        config = sweep_member_config(self.base, point.config, seed)
        self.progress.log(f"[bold]seed {seed}[/bold] {point.label}: run {config.name}")
        try:
            async with Pipeline(
                config, progress=self.progress, stop=self.stop, variant_records=True
            ) as pipeline:
                for stage in SHARED_STAGES:
                    store = pipeline.store
                    donor = await adopt_stage(store, config, pipeline.run_record.id, stage)
                    if donor is not None:
                        self.progress.log(f"[dim]{stage}: taken over from {donor}")
                await pipeline.run(self.stages)
                run_id = pipeline.run_record.id
        except MissingDataError as error:
            self.progress.log(f"[yellow]seed {seed} {point.label} failed: {error}")
            await self._record_failure(study, seed, str(error))
            return
        if self.stop.requested:
            return
        async with await TreeStore.open(self.base.store_url) as store:
            await store.studies.set_member(study.id, seed, run_id, eval_stage_label(config))
            await self._record_failure(study, seed, None, store=store)

    async def _record_failure(
        self, study: StudyRecord, seed: int, reason: str | None, *, store: TreeStore | None = None
    ) -> None:
        """Keep (or, with ``reason=None``, clear) why ``seed`` of this point has no run,
        in the point study's ``failed`` setting (the report shows it)."""
        async with contextlib.AsyncExitStack() as stack:
            if store is None:
                store = await stack.enter_async_context(await TreeStore.open(self.base.store_url))
            settings = dict((await store.studies.get(study.name)).settings)
            failed = {k: v for k, v in settings.get("failed", {}).items() if k != str(seed)}
            if reason is not None:
                failed[str(seed)] = reason
            if failed != settings.get("failed", {}):
                await store.studies.update(study.id, settings=settings | {"failed": failed})

    async def _record(self) -> tuple[StudyRecord, dict[int, StudyRecord]]:
        """The sweep's record (a study whose settings list the points) and one study per
        point (its members are the point's runs)."""
        base = self.base
        await asyncio.to_thread(base.directory.mkdir, parents=True, exist_ok=True)
        version = await asyncio.to_thread(code_version)
        points = [
            {"index": p.index, "label": p.label, "overrides": list(p.overrides),
             "study": point_study_name(base.name, p.index)}
            for p in self.points
        ]  # fmt: skip
        async with await TreeStore.open(base.store_url) as store:
            sweep = await self._get_or_create(
                store,
                base.name,
                base,
                version,
                {
                    "kind": "sweep",
                    "grid": [[a.field, list(a.values)] for a in self.axes],
                    "points": points,
                    "base_point": self.base_point.index,
                },
            )
            studies = {}
            for point in self.points:
                name = point_study_name(base.name, point.index)
                config = point.config.model_copy(
                    update={"name": name, "run_dir": base.directory / "points" / f"p{point.index}"}
                )
                studies[point.index] = await self._get_or_create(
                    store, name, config, version, {"sweep": base.name, "point": point.label}
                )
        return sweep, studies

    async def _get_or_create(
        self,
        store: TreeStore,
        name: str,
        config: RunConfig,
        version: str,
        extra: dict[str, Any],
    ) -> StudyRecord:
        existing = await store.studies.find(name)
        if existing is None:
            return await store.studies.create(
                name,
                config=config.model_dump(mode="json"),
                config_fingerprint=config.fingerprint(),
                code_version=version,
                settings={"seeds": list(self.seeds), "stages": list(self.stages), **extra},
            )
        if existing.config_fingerprint != config.fingerprint():
            raise ConfigError(
                f"{name!r} exists in the store with other settings; give the sweep a new "
                "name (--set name=...) or run it with the stored settings"
            )
        seeds = sorted({*existing.settings.get("seeds", ()), *self.seeds})
        await store.studies.update(
            existing.id,
            settings=dict(existing.settings) | extra | {"seeds": seeds},
            status="running",
        )
        return existing
