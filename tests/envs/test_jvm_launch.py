"""How qlass launches the simulators' JVMs: a process group of their own (a terminal's
Ctrl-C reaches qlass alone), a lower CPU priority than qlass's, py4j traffic only from the
env's worker thread (finalizers included), actions that no simulator can take rejected
before they reach one."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import pytest

from qlass.envs._jvm_launch import JVM_NICENESS, qlass_launch
from qlass.envs.base import InvalidActionError
from qlass.envs.scienceworld import ScienceWorldEnv
from qlass.envs.textworld_express import TextWorldExpressEnv
from qlass.types import TaskSpec

COIN = TaskSpec("textworld_express", "coin", 0, "train", "numLocations=3,includeDoors=0")


@pytest.mark.parametrize(
    ("make", "task"),
    [
        (TextWorldExpressEnv, COIN),
        (ScienceWorldEnv, TaskSpec("scienceworld", "boil", 0, "train", "easy")),
    ],
    ids=["textworld_express", "scienceworld"],
)
async def test_jvm_has_a_process_group_of_its_own_in_this_session(
    make: Any, task: TaskSpec
) -> None:
    env = make()
    try:
        await env.reset(task)
        pid = env.pid
        assert os.getpgid(pid) == pid != os.getpgid(0)  # a terminal's SIGINT misses it
        assert os.getsid(pid) == os.getsid(0)  # still findable as part of this session
        # No hsperfdata file: one locked by another process made the JVM print a warning
        # where py4j reads its port (the launch failed and the JVM was left running).
        cmdline = await asyncio.to_thread(_cmdline, pid)
        assert "-XX:-UsePerfData" in cmdline
        # Every JVM thread (GC and compiler threads included) yields the CPU to qlass.
        nices = await asyncio.to_thread(_thread_niceness, pid)
        assert len(nices) > 1
        assert set(nices) == {os.getpriority(os.PRIO_PROCESS, 0) + JVM_NICENESS}
    finally:
        await env.close()


def _thread_niceness(pid: int) -> list[int]:
    """The niceness of each thread of process ``pid`` (field 19 of its ``stat``)."""
    nices = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as file:
            after_name = file.read().rsplit(")", 1)[1].split()
        nices.append(int(after_name[16]))
    return nices


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().decode().split("\0")


async def test_proxies_collected_on_the_loop_thread_are_released_by_the_worker() -> None:
    env = TextWorldExpressEnv()
    try:
        await env.reset(COIN)
        loop = asyncio.get_running_loop()

        made: list[Any] = []  # the worker's result stays referenced by its future: pass it here

        def new_proxy() -> None:
            made.append(env._sim._gateway.jvm.java.util.ArrayList())

        await loop.run_in_executor(env._executor, new_proxy)
        client = env._sim._gateway._gateway_client
        sent: list[str] = []
        real_send = client.send_command
        client.send_command = lambda command, *a, **k: (
            sent.append(command) or real_send(command, *a, **k)
        )
        target = made[0]._target_id
        made.clear()
        gc.collect()  # the proxy's finalizer runs here, in the event loop's thread
        assert sent == [] and target in client._pending
        await env.step("look around")  # the worker sends the release before its call
        assert not client._pending
        assert f"m\nd\n{target}\ne\n" in sent  # py4j's release message, sent by the worker
    finally:
        await env.close()


def test_launch_needs_the_names_it_rebinds() -> None:
    class Wrapper:
        def __init__(self) -> None:
            self.started = True

    with pytest.raises(RuntimeError, match="no longer calls"):
        qlass_launch(Wrapper)


async def test_action_with_undecodable_bytes_is_rejected_and_the_jvm_survives() -> None:
    env = TextWorldExpressEnv()
    try:
        await env.reset(COIN)
        pid = env.pid
        action = b"move \xff\xfe north".decode("utf-8", errors="surrogateescape")
        with pytest.raises(InvalidActionError, match="not UTF-8"):
            await env.step(action)
        assert env.alive and env.pid == pid
        await env.step("look around")
    finally:
        await env.close()


def test_a_failed_connect_to_a_dead_jvm_closes_its_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """py4j's connection keeps its socket open when the connect fails (a JVM that died or
    was killed); freed later, wherever that happened, it warned of an unclosed socket."""
    import socket

    from py4j import java_gateway

    from qlass.envs._jvm_launch import _launch_names

    made: list[Any] = []

    class Recorded(java_gateway.GatewayConnection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(java_gateway, "GatewayConnection", Recorded)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = _launch_names()["JavaGateway"](
        gateway_parameters=java_gateway.GatewayParameters(port=port), start_callback_server=False
    )
    with pytest.raises(java_gateway.Py4JNetworkError):
        gateway._gateway_client._create_connection()
    (connection,) = made
    assert connection.socket.fileno() == -1  # closed
