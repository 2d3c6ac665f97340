"""Running ``qlass ... --executor ray`` as a subprocess in the Ray tests, and reading what
it stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qlass.storage import EpisodeRecord, TreeStore
from tests.reliability.harness import Proc, child_env, qlass_command, settings, start


async def _create_schema(url: str) -> None:
    async with await TreeStore.open(url):
        pass


def create_schema(url: str) -> None:
    """The store's tables, so that a test can read the store before the driver wrote it."""
    asyncio.run(_create_schema(url))


def ray_explore_args(name: str, url: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "explore", "--db", url, "--executor", "ray",
        *settings(name, f"run_dir={run_dir}", *extra),
    ]  # fmt: skip


@contextlib.contextmanager
def ray_driver(args: list[str], log_dir: Path, tag: str) -> Iterator[Proc]:
    """The driver, with a local Ray; a failed check leaves neither behind."""
    env = child_env(RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)  # a local Ray for the test
    driver = start(qlass_command(*args), log_dir, tag, env)
    try:
        yield driver
    finally:
        if driver.popen.poll() is None:  # Ray's processes share the driver's session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


async def _episodes(url: str, name: str) -> list[EpisodeRecord]:
    async with await TreeStore.open(url, upgrade=False) as store:
        run = await store.runs.find(name)
        return [] if run is None else await store.episodes.of_run(run.id)


def stored_episodes(url: str, name: str) -> list[EpisodeRecord]:
    """The evaluation episodes run ``name`` has stored (none if there is no such run)."""
    return asyncio.run(_episodes(url, name))


def played(episodes: Sequence[EpisodeRecord]) -> dict[tuple[str, str], tuple[float, list[Any]]]:
    """Each (strategy, task) episode's final reward and actions: what must equal between
    a Ray run and a local one."""
    return {
        (e.strategy, e.task_key): (
            e.final_score,
            [step["candidate"]["action"] for step in e.trajectory["steps"]],
        )
        for e in episodes
    }


def run_locally(db: Path, *args: str) -> None:
    """``qlass ARGS --db DB`` in one local process (no Ray): the reference a Ray run must equal."""
    done = subprocess.run(
        qlass_command(*args, "--db", str(db)), capture_output=True, env=child_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
