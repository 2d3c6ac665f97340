"""The processes that hold a run (``run_holders``): their names, and whether one is gone.

Every process working on a run (a ``qlass run``, an explore worker, a Ray actor) holds a
lease on it named after its host and pid. A process killed outright cannot leave, so the
run reads ``running`` until its lease lapses (``store.run_lease_s``, 120 s by default).
Where the holder ran on this machine, whether its process still exists can be seen at
once: :func:`observed_status` reads such a run as ``interrupted`` without waiting for the
lease.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket

from qlass.storage import RunRecord, TreeStore

__all__ = ["holder_name", "holder_process", "observed_status", "process_gone"]

_PROCESS = re.compile(r"^(?:[^@]*@)?(?P<host>[^:@/]+):(?P<pid>\d+)(?::[0-9a-f]+)?$")
"""``host:pid`` or ``host:pid:token`` (a pipeline), after an optional ``name@`` (a Ray
actor's ``ray0@host:pid``), in the last ``/``-separated part of a holder's name."""


def holder_name() -> str:
    """A new pipeline's holder name: ``host:pid:random`` (several pipelines of one process,
    e.g. a study's seeds, hold a run each under different names)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_process(holder: str) -> tuple[str, int] | None:
    """The (host, pid) a holder's name gives, or None for a name of another form (a
    holder named by an embedding application)."""
    match = _PROCESS.match(holder.rsplit("/", 1)[-1])
    return None if match is None else (match["host"], int(match["pid"]))


def process_gone(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer exists. False where
    that cannot be told (another host, a name of another form, a pid that exists again)."""
    process = holder_process(holder)
    if process is None or process[0] != socket.gethostname():
        return False
    try:
        os.kill(process[1], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has that pid
        return False
    return False


async def observed_status(store: TreeStore, run: RunRecord) -> RunRecord:
    """``run`` as read now: a ``running`` run whose live holders are all processes of this
    host that no longer exist reads as ``interrupted`` (the store is not changed: the next
    command on the run writes its status)."""
    if run.status != "running":
        return run
    holders = await store.runs.live_holders(run.id)
    if holders and all(process_gone(holder) for holder in holders):
        return dataclasses.replace(run, status="interrupted")
    return run
