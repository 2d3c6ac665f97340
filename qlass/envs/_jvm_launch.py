"""How qlass launches a simulator's JVM through py4j (see :func:`qlass_launch`).

The simulator wrappers (TextWorldExpress, ScienceWorld) start their JVM with py4j's
``launch_gateway`` and talk to it through a ``JavaGateway``, with no way to pass options.
:func:`qlass_launch` runs a wrapper's own ``__init__`` with those two names bound to
versions that start the JVM in a process group of its own, at a lower CPU priority, with
the JVM options qlass needs, and whose gateway client sends py4j's release messages from
the env's worker thread only and closes the sockets of failed connections.
"""

from __future__ import annotations

import collections
import functools
import shutil
import subprocess
import threading
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["JVM_NICENESS", "JVM_OPTIONS", "ReleasesInOwnerThread", "qlass_launch"]


class ReleasesInOwnerThread:
    """py4j client behaviour: release messages are sent only from the creating thread.

    py4j tells the JVM to drop an object when its Python proxy is garbage-collected, over
    the socket, in whatever thread the collector happens to run: possibly the event
    loop's, which would then wait for a JVM round trip. Releases asked for in any other
    thread are queued and sent by :meth:`flush_releases`, which the env's worker calls
    before each of its calls. The client is created in the worker thread (the JVM is
    launched there), so no proxy ever exists without this routing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = threading.current_thread()
        self._pending: collections.deque[str] = collections.deque()

    def garbage_collect_object(self, target_id: str, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is self._owner:
            super().garbage_collect_object(target_id, *args, **kwargs)  # type: ignore[misc]
        else:
            self._pending.append(target_id)

    def flush_releases(self) -> None:
        while self._pending:
            super().garbage_collect_object(self._pending.popleft())  # type: ignore[misc]


class _ClosesFailedConnections:
    """py4j client behaviour: a connection that fails to open closes its socket.

    py4j's ``GatewayConnection.start`` raises on a failed connect (to a JVM that died or
    was killed) without closing the socket it made; collected later, wherever the garbage
    collector happens to run, it warns of an unclosed socket.
    """

    def _create_connection(self) -> Any:
        from py4j.java_gateway import GatewayConnection

        params, prop = self.gateway_parameters, self.gateway_property  # type: ignore[attr-defined]
        connection = GatewayConnection(params, prop)
        try:
            connection.start()
        except BaseException:
            stream = getattr(connection, "stream", None)  # made once the connect succeeded
            if stream is not None:
                stream.close()
            connection.socket.close()
            raise
        return connection


def _rebound(function: Any, **names: Any) -> Any:
    """A copy of ``function`` that sees ``names`` instead of its module's globals of those
    names (the module itself is left as it is).

    Raises:
        RuntimeError: ``function`` does not use every one of ``names`` (its package
            changed how it works; the caller needs updating).
    """
    missing = set(names) - set(function.__code__.co_names)
    if missing:
        raise RuntimeError(
            f"{function.__module__}.{function.__qualname__} no longer calls "
            f"{sorted(missing)}: qlass cannot set its JVM launch options (qlass/envs/_jvm.py)"
        )
    copy = types.FunctionType(
        function.__code__,
        {**function.__globals__, **names},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__doc__ = function.__doc__
    return copy


@functools.cache
def _launch_names() -> dict[str, Any]:
    """What :func:`qlass_launch` binds ``launch_gateway`` and ``JavaGateway`` to (py4j is
    imported only when a simulator is built)."""
    from py4j import java_gateway

    client = type(
        "WorkerBoundClient",
        (ReleasesInOwnerThread, _ClosesFailedConnections, java_gateway.GatewayClient),
        {},
    )

    class WorkerBoundGateway(java_gateway.JavaGateway):
        def _create_gateway_client(self) -> Any:
            return client(gateway_parameters=self.gateway_parameters)

    # py4j's launch option create_new_process_group gives the JVM a process group of its
    # own, so that a terminal's Ctrl-C does not reach it (it stays in qlass's session).
    # py4j makes the group with preexec_fn=os.setpgrp, which the subprocess docs call
    # unsafe with threads and which rules out vfork: the fork of a large process then
    # holds the GIL (stalling the event loop) for as long as it takes. Popen's own
    # process_group (Python 3.11) makes the same group without either.
    launch = _rebound(
        java_gateway.launch_gateway,
        get_create_new_process_group_kwargs=lambda: {"process_group": 0},
        Popen=_lower_priority_popen,
    )

    def launch_gateway(*args: Any, javaopts: Sequence[str] | None = None, **kwargs: Any) -> Any:
        options = [*(javaopts or ()), *JVM_OPTIONS]
        return launch(*args, javaopts=options, create_new_process_group=True, **kwargs)

    return {"launch_gateway": launch_gateway, "JavaGateway": WorkerBoundGateway}


JVM_NICENESS = 10
"""The niceness every simulator JVM starts with (through ``nice``; where there is no
``nice`` command the JVM runs at qlass's own priority). Sixteen JVMs on two cores keep
every core busy; at equal priority the event loop's thread, when it wakes, waits in the
run queue behind them, and every coroutine (policy calls, the store, an HTTP server, a
Ctrl-C) with it: ``benchmarks/bench_loop`` measured a 91-120 ms max loop lag at 200
concurrent episodes on an otherwise idle machine, of which the loop ran about 10 ms and
waited for a CPU the rest. At niceness 10 the JVMs still get every cycle qlass leaves
idle, so the episodes' wall time stayed the same, and the max lag fell to 26-35 ms
(docs/envs.md)."""


def _lower_priority_popen(command: Sequence[str], *args: Any, **kwargs: Any) -> Any:
    """``subprocess.Popen`` for py4j's JVM launch, run under ``nice -n JVM_NICENESS``.

    ``nice`` execs the JVM, so the pid (and the process group of its own) stay the JVM's,
    and every thread the JVM starts inherits the niceness from the first instruction;
    lowering it after the launch would miss threads, and ``preexec_fn`` is unsafe with
    threads.
    """
    nice = shutil.which("nice")
    if nice is not None:
        command = [nice, "-n", str(JVM_NICENESS), *command]
    return subprocess.Popen(command, *args, **kwargs)


JVM_OPTIONS = ("-XX:-UsePerfData",)
"""Added to every simulator JVM's options. Without it, the JVM writes a monitoring file
``/tmp/hsperfdata_<user>/<pid>``; when a file of that name is locked by another process
(pids are reused, e.g. across containers sharing /tmp), the JVM prints a warning on stdout
before py4j's port line, py4j reads the warning as the port, and the launch fails
(``invalid literal for int()``), leaving the JVM running. qlass needs no such monitoring."""


def qlass_launch(cls: type[Any]) -> type[Any]:
    """A subclass of the simulator wrapper ``cls`` that launches its JVM as qlass needs.

    The wrappers (TextWorldExpress, ScienceWorld) build their gateway in ``__init__`` with
    py4j's ``launch_gateway`` and ``JavaGateway``, with no way to pass launch options. The
    subclass runs that same ``__init__`` code with two names bound differently: the JVM is
    started in its own process group, and the gateway's client sends py4j's release
    messages from the worker thread only (see :class:`ReleasesInOwnerThread`; nothing in
    the wrapper's module changes). Its ``__del__`` does nothing: the wrappers
    call ``close()`` from ``__del__``, which on a JVM qlass already terminated prints a
    BrokenPipeError; qlass closes explicitly instead.

    Raises:
        RuntimeError: ``cls.__init__`` no longer calls both names (a wrapper release changed
            how it launches; this function needs updating).
    """
    init = _rebound(cls.__init__, **_launch_names())
    return type(cls.__name__, (cls,), {"__init__": init, "__del__": lambda self: None})
