"""Studies: one configuration repeated over several seeds, one run per seed, one store.

A single run's numbers move with everything its seed decides (expert data, BC, the
exploration trees, QNet training, sampling at evaluation), so a claim about strategies needs
several seeds. A study named ``NAME`` runs the pipeline once per seed ``k`` as the run
``NAME-seed<k>`` (folder ``<study folder>/seed<k>``), all in the study's store, and records
which run and which evaluation stage belongs to each seed. Every strategy of a run is
evaluated on the same held-out tasks (the split's task list does not depend on the seed),
so results can be compared task by task and seed by seed
(:mod:`qlass.report.study` computes the intervals and paired differences).

Resume: each run resumes as a run does (finished stages are skipped, trees continue from
their committed nodes, episodes already stored are not played again), so running the same
study again continues where it stopped; asking for more seeds adds runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from qlass._version import code_version
from qlass.config import RunConfig, StoreConfig
from qlass.errors import ConfigError
from qlass.runtime.pipeline import Pipeline
from qlass.runtime.progress import NullProgress, Progress
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.stages import DEPENDS, FROZEN, OPTIONAL_STAGES, STAGES
from qlass.runtime.stages.evaluation import eval_stage_label
from qlass.storage import StudyRecord, TreeStore

__all__ = ["StudyResult", "StudyRunner", "member_config", "seed_list"]

log = structlog.get_logger(__name__)


def seed_list(first: int, count: int) -> tuple[int, ...]:
    """``count`` consecutive seeds from ``first`` (``--seeds 3`` from seed 0: 0, 1, 2)."""
    if count < 1:
        raise ConfigError(f"a study needs at least one seed, got {count}")
    return tuple(range(first, first + count))


def member_config(base: RunConfig, seed: int) -> RunConfig:
    """The run of ``seed`` in the study of ``base``: named ``<name>-seed<k>``, in the folder
    ``seed<k>`` of the study's folder, with the study's store."""
    return RunConfig.model_validate(
        base.model_dump(mode="json")
        | {
            "name": f"{base.name}-seed{seed}",
            "seed": seed,
            "run_dir": str(base.directory / f"seed{seed}"),
            "store": StoreConfig(url=base.store_url).model_dump(mode="json"),
        }
    )


@dataclass(frozen=True, slots=True)
class StudyResult:
    """What :meth:`StudyRunner.run` did."""

    study: StudyRecord
    seeds_done: tuple[int, ...]
    stopped: bool


class StudyRunner:
    """Runs the pipeline of ``base`` once per seed and records the runs as one study.

    The study's name, folder and store are ``base``'s; ``seeds`` replace ``base.seed``.
    Runs go one after another (training and simulators already use every core).
    """

    def __init__(
        self,
        base: RunConfig,
        seeds: Sequence[int],
        *,
        stages: Sequence[str] = STAGES,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        if not seeds:
            raise ConfigError("a study needs at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
        known = STAGES + OPTIONAL_STAGES
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(known)}")
        if not stages:
            raise ConfigError("no stages to run")
        self.base = base
        self.seeds = tuple(seeds)
        self.stages = tuple(stages)
        self.progress = progress or NullProgress()
        self.stop = stop or StopSignal()

    async def run(self) -> StudyResult:
        """Run (or resume) every seed's pipeline; stops cleanly after a stop request."""
        study = await self._get_or_create()
        bar = self.progress.bar(f"study {self.base.name}: seeds", len(self.seeds))
        done: list[int] = []
        for seed in self.seeds:
            if self.stop.requested:
                break
            config = member_config(self.base, seed)
            self.progress.log(f"[bold]seed {seed}[/bold]: run {config.name}")
            async with Pipeline(config, progress=self.progress, stop=self.stop) as pipeline:
                await pipeline.run(self.stages)
                run_id = pipeline.run_record.id
            if self.stop.requested:
                break
            async with await TreeStore.open(self.base.store_url) as store:
                await store.studies.set_member(study.id, seed, run_id, eval_stage_label(config))
            done.append(seed)
            bar.advance()
        stopped = self.stop.requested
        async with await TreeStore.open(self.base.store_url) as store:
            await store.studies.update(study.id, status="stopped" if stopped else "done")
            study = await store.studies.get(self.base.name)
        return StudyResult(study, tuple(done), stopped)

    async def _get_or_create(self) -> StudyRecord:
        base = self.base
        await asyncio.to_thread(base.directory.mkdir, parents=True, exist_ok=True)
        config = base.model_dump(mode="json")
        async with await TreeStore.open(base.store_url) as store:
            existing = await store.studies.find(base.name)
            if existing is None:
                return await store.studies.create(
                    base.name,
                    config=config,
                    config_fingerprint=base.fingerprint(),
                    code_version=await asyncio.to_thread(code_version),
                    settings={"seeds": list(self.seeds), "stages": list(self.stages)},
                )
            stored = RunConfig.model_validate(existing.config)
            _check_frozen(stored, base)
            seeds = sorted({*existing.settings.get("seeds", ()), *self.seeds})
            changed = [
                name
                for name in RunConfig.model_fields
                # read through the current schema: a field added since is at its default
                if name not in ("name", "seed") and getattr(base, name) != getattr(stored, name)
            ]
            if changed:
                log.info("study_config_changed", study=base.name, sections=changed)
                self.progress.log(
                    f"[yellow]study {base.name}: settings changed in {', '.join(changed)}; "
                    "the runs redo the stages that depend on them"
                )
            await store.studies.update(
                existing.id,
                settings={"seeds": seeds, "stages": list(self.stages)},
                status="running",
            )
            return existing


def _check_frozen(stored: RunConfig, new: RunConfig) -> None:
    """Refuse a change to the sections that make the seeds' stored trees meaningless."""
    old, now = stored.model_dump(mode="json"), new.model_dump(mode="json")
    for stage in FROZEN:
        sections = DEPENDS[stage]
        if any(old[section] != now[section] for section in sections):
            raise ConfigError(
                f"study {new.name!r} exists with different settings for its {stage} stage "
                f"(sections {', '.join(sections)}); its runs' trees would not match. Use a "
                "new study name (--set name=...) or the stored settings."
            )
