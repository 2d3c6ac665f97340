"""What a stage body works with (:class:`StageContext`) and what it returns
(:class:`StageResult`), plus the small helpers the stage modules share."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from qlass.config import RunConfig
    from qlass.runtime.progress import Progress, ProgressBar
    from qlass.runtime.resources import RunResources
    from qlass.runtime.scheduler import StopSignal
    from qlass.storage import RunRecord, TreeStore
    from qlass.types import TaskSpec

__all__ = ["StageBody", "StageContext", "StageResult", "bar_progress", "import_in_thread"]

StageBody = Callable[[], Awaitable[dict[str, Any]]]
"""A stage's work; returns the metrics recorded with the stage."""


@dataclass
class StageResult:
    """What a stage did (or that it was skipped) and what it cost."""

    name: str
    skipped: bool
    metrics: dict[str, Any] = field(default_factory=dict)


class StageContext(Protocol):
    """The run a stage works on: its config, store, parts and bookkeeping."""

    @property
    def config(self) -> RunConfig: ...

    @property
    def progress(self) -> Progress: ...

    @property
    def stop(self) -> StopSignal: ...

    @property
    def store(self) -> TreeStore: ...

    @property
    def run_record(self) -> RunRecord: ...

    @property
    def resources(self) -> RunResources: ...

    def fingerprint(self, stage: str) -> str:
        """The fingerprint of the config sections ``stage`` depends on."""
        ...

    async def tasks(self, split: str, limit: int | None) -> list[TaskSpec]:
        """The env's tasks of ``split`` (train never holds a dev or test game)."""
        ...

    async def run_recorded(
        self,
        name: str,
        body: StageBody,
        *,
        force: bool = False,
        fingerprint_of: str | None = None,
    ) -> StageResult:
        """Run ``body`` as stage ``name`` unless it is done for this config; record it."""
        ...


def bar_progress(bar: ProgressBar) -> Callable[[int, int, float | None], None]:
    """A trainer's progress callback (step, total, loss) that moves a progress bar."""

    def update(step: int, total: int, loss: float | None) -> None:
        bar.update(total=total, completed=step, loss=loss if loss is not None else float("nan"))

    return update


async def import_in_thread(module: str) -> None:
    """Import a module that loads torch and transformers, in a worker thread (importing
    reads many files). Only the stages that train import them, so that exploring with a
    remote or scripted policy starts in a second."""
    await asyncio.to_thread(importlib.import_module, module)
