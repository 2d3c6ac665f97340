"""Ctrl-C to ``qlass explore --executor ray``: every actor stops gracefully (the steps
under way committed, its tasks released at once rather than left to their leases), the
local Ray is shut down, exit code 130 with a resume command that keeps ``--executor ray``;
resumed, the run ends with the trees and Q labels of one uninterrupted process.

Slow (two local Ray starts): ``pytest -m 'slow and ray' tests/ray``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.reliability.campaign import finish_reference, start_reference
from tests.reliability.harness import assert_session_gone, kill, snapshot

from ..postgres.conftest import PostgresServer
from .driver import create_schema, ray_driver, ray_explore_args

pytest.importorskip("ray")

NAME = "stopray"
EXTRA = ["env.train_tasks=6", "env.max_steps=6", "explore.max_depth=4", "env.pool_size=2"]
LEASE_S = 600  # a task left to its lease would hold the resumed run up for 10 minutes


def _wait_for_trees(url: str, timeout: float = 600) -> None:
    """Until both actors hold a task with committed nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = snapshot(url, NAME)
        held = {t for t, status in snap.task_status.items() if status == "running"}
        growing = {key[0] for key in snap.key_set() if key[0] in held and len(key[1]) >= 1}
        if len(growing) >= 2:
            return
        time.sleep(0.05)
    raise TimeoutError("the actors did not get into two trees")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_ctrl_c_stops_every_actor_and_the_run_resumes(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    create_schema(url)
    reference, ref_db = start_reference(tmp_path, NAME, EXTRA)
    args = ray_explore_args(NAME, url, tmp_path / "run", "ray.actors=2", *EXTRA)
    args += ["--lease-s", str(LEASE_S)]
    with ray_driver(args, tmp_path / "logs", "stopped") as driver:
        _wait_for_trees(url)
        kill(driver, signal.SIGINT)
        assert driver.wait(timeout=600) == 130, driver.err()[-4000:]
    assert_session_gone(driver.pid, timeout=60)  # the local Ray went with the driver
    err = driver.err()
    assert "stopped: every committed step is kept. Resume with:" in err
    assert f"qlass explore --resume {NAME} --db" in err and "--executor ray" in err
    at_stop = snapshot(url, NAME)
    # Released, not left to their leases: no task is running, and some were unfinished.
    assert "running" not in at_stop.task_status.values()
    assert "pending" in at_stop.task_status.values()
    assert all(
        at_stop.claimed_by[t] is None for t, s in at_stop.task_status.items() if s == "pending"
    )

    resume = ["explore", "--resume", NAME, "--db", url, "--executor", "ray"]
    with ray_driver(resume, tmp_path / "logs", "resumed") as again:
        assert again.wait(timeout=900) == 0, again.err()[-4000:]
    final = snapshot(url, NAME)
    expected = finish_reference(reference, ref_db, NAME)
    assert set(final.task_status.values()) == {"done"}
    for node_id, row in at_stop.nodes.items():
        assert final.nodes[node_id] == row
    assert final.content() == expected.content()
    assert final.labels.keys() == expected.labels.keys()
    assert all(abs(final.labels[k] - expected.labels[k]) < 1e-9 for k in final.labels)
