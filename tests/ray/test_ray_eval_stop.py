"""Ctrl-C to ``qlass eval --executor ray``: the actors finish the episodes under way and
start none, the local Ray is shut down, exit code 130 with a resume command that keeps
``--executor ray``; resumed, the run holds every episode once, equal to a local ``qlass
eval`` of the same config.

Slow (two local Ray starts): ``make test-ray``.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.harness import assert_session_gone, kill, settings

from ..postgres.conftest import PostgresServer
from .driver import create_schema, played, ray_driver, run_locally, stored_episodes

pytest.importorskip("ray")

NAME = "evalstop"
EXTRA = [
    "env.eval_tasks=40",
    "env.max_steps=10",
    "env.pool_size=2",
    "search.strategies=[sampled,best_of_n:2]",
    "search.value_model=random",
    "eval.concurrency=1",
    "ray.actors=2",
]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_ctrl_c_stops_a_ray_evaluation_and_the_resume_plays_only_the_rest(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    create_schema(url)
    local_db = tmp_path / "local.db"
    run_locally(local_db, "eval", *settings(NAME, f"run_dir={tmp_path / 'local'}", *EXTRA))

    args = ["eval", "--db", url, "--executor", "ray"]
    args += settings(NAME, f"run_dir={tmp_path / 'run'}", *EXTRA)
    with ray_driver(args, tmp_path / "logs", "stopped") as driver:
        deadline = time.monotonic() + 600
        while not stored_episodes(url, NAME):
            assert driver.popen.poll() is None, driver.err()[-4000:]
            assert time.monotonic() < deadline, "no episode was stored"
            time.sleep(0.1)
        kill(driver, signal.SIGINT)
        assert driver.wait(timeout=600) == 130, driver.err()[-4000:]
    assert_session_gone(driver.pid, timeout=60)  # the local Ray went with the driver
    err = driver.err()
    assert f"qlass eval --resume {NAME} --db" in err and "--executor ray" in err
    # Stored before the stop (most likely not all 80: the actors start no episode after
    # it; not asserted, so that a machine's speed cannot fail the test).
    at_stop = stored_episodes(url, NAME)
    assert at_stop

    resume = ["eval", "--resume", NAME, "--db", url, "--executor", "ray"]
    with ray_driver(resume, tmp_path / "logs", "resumed") as again:
        assert again.wait(timeout=900) == 0, again.err()[-4000:]
    final = stored_episodes(url, NAME)
    counts = Counter((e.strategy, e.task_key) for e in final)
    assert len(counts) == 80 and set(counts.values()) == {1}  # every episode, none twice
    kept = {e.id for e in at_stop}
    assert kept <= {e.id for e in final}  # what the stopped run stored is kept as it was
    assert played(final) == played(stored_episodes(str(local_db), NAME))
