"""Holder names and the liveness of their processes: a run whose holders are processes of
this host that no longer exist reads as interrupted at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from qlass.runtime.holders import holder_name, holder_process, observed_status, process_gone
from qlass.storage import TreeStore

HOST = socket.gethostname()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_holder_names_give_their_host_and_pid() -> None:
    assert holder_process("box:42:0a1b2c3d") == ("box", 42)  # a pipeline
    assert holder_process("box:42:0a1b2c3d/ray1@node-7:99") == ("node-7", 99)  # a Ray actor
    assert holder_process("my-app worker") is None  # named by an embedding application
    host, pid = holder_process(holder_name()) or ("", 0)
    assert (host, pid) == (HOST, os.getpid())


def test_only_a_process_of_this_host_that_is_gone_counts_as_gone() -> None:
    assert not process_gone(holder_name())  # this process
    assert process_gone(f"{HOST}:{_dead_pid()}:00ff00ff")
    assert not process_gone(f"another-host-{HOST}:{_dead_pid()}:00ff00ff")  # cannot tell
    assert not process_gone("my-app worker")


async def test_a_run_held_only_by_gone_processes_reads_interrupted(tmp_path: Path) -> None:
    async with await TreeStore.open(tmp_path / "q.db") as store:
        run = await store.runs.create("r", config={})
        gone = f"{HOST}:{_dead_pid()}:00ff00ff"
        await store.runs.enter(run.id, gone, lease_s=3600)
        stored = await store.runs.get(run.id)
        assert stored.status == "running"
        assert (await observed_status(store, stored)).status == "interrupted"
        assert (await store.runs.get(run.id)).status == "running"  # read, not written

        await store.runs.enter(run.id, f"elsewhere:{_dead_pid()}", lease_s=3600)
        assert (await observed_status(store, stored)).status == "running"  # may be alive
