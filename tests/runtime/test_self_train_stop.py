"""A stop request (Ctrl-C) during self-training's fine-tuning ends the round at once: no
half-trained policy is saved, the round is not evaluated, and a rerun trains it again."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from qlass.runtime.pipeline import Pipeline
from qlass.runtime.progress import NullProgress, ProgressBar
from qlass.runtime.scheduler import StopSignal
from qlass.testing import TINY_BC, tiny_run_config

SETTINGS = (
    *TINY_BC,
    "env.params=numLocations=2,includeDoors=0",
    "env.train_tasks=4",
    "env.eval_tasks=2",
    "env.max_steps=4",
    "search.strategies=[greedy]",
    "self_train.rounds=1",
    "self_train.tasks=2",
    "self_train.strategy=greedy",
    "self_train.min_score=0",
    "self_train.epochs=50",
)


class _StopOnTrainingBar(NullProgress):
    """Requests the stop (on the event loop, as the signal handler does) at the first
    step of a self-training bar, and holds the training thread until it is requested."""

    def __init__(self, stop: StopSignal, loop: asyncio.AbstractEventLoop) -> None:
        self.stop, self.loop = stop, loop
        self.requested_at_step: int | None = None

    def bar(self, description: str, total: float | None) -> ProgressBar:
        progress = self

        class Bar:
            def advance(self, amount: float = 1, **fields: Any) -> None:
                return None

            def update(
                self, *, total: float | None = None, completed: float | None = None, **_: Any
            ) -> None:
                if not description.startswith("self-training") or progress.requested_at_step:
                    return
                progress.requested_at_step = int(completed or 0)
                done = threading.Event()

                def request() -> None:
                    progress.stop.request()
                    done.set()

                progress.loop.call_soon_threadsafe(request)
                assert done.wait(60), "the event loop did not run the stop request"

        return Bar()


async def test_a_stop_during_self_training_saves_no_policy_and_the_rerun_trains(
    tmp_path: Path,
) -> None:
    config = tiny_run_config(tmp_path, "name=st-stop", *SETTINGS)
    out = config.directory / "policy-round1"
    async with Pipeline(config) as pipeline:
        await pipeline.stage("bc")
    stop = StopSignal()
    progress = _StopOnTrainingBar(stop, asyncio.get_running_loop())
    async with Pipeline(config, progress=progress, stop=stop) as pipeline:
        (stopped,) = await pipeline.stage("self_train")
        record = await pipeline.store.stages.get(pipeline.run_record.id, "self_train:1")
        episodes = await pipeline.store.episodes.of_run(pipeline.run_record.id)
    assert progress.requested_at_step is not None
    assert "stopped" in stopped.metrics["note"] and "model_dir" not in stopped.metrics
    assert not (out / "config.json").exists()
    assert record is not None and record.status == "running"  # to be resumed
    assert not any(e.stage.startswith("self_train:1:eval") for e in episodes)

    async with Pipeline(config) as pipeline:
        (again,) = await pipeline.stage("self_train")
    assert not again.skipped and again.metrics["model_dir"] == str(out)
    assert (out / "config.json").exists() and again.metrics["reports"]
