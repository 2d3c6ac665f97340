"""Drive a py4j simulator (one JVM per env instance) from asyncio.

TextWorldExpress and ScienceWorld each launch their own JVM through py4j and answer every
call over a socket. :class:`JvmEnv` gives such a simulator:

- one dedicated worker thread, so its blocking calls never run on the event loop and calls
  of one instance stay in order;
- a timeout per call: a step slower than ``step_timeout_s`` kills the JVM (the process is
  really terminated) and raises :class:`~qlass.errors.EnvTimeoutError`;
- crash detection: a dead JVM or a broken py4j connection raises
  :class:`~qlass.errors.EnvCrashedError`; the instance is then dead for good (an
  :class:`~qlass.envs.pool.EnvPool` replaces it);
- a JVM that only qlass stops: it runs in a process group of its own, so a Ctrl-C at the
  terminal (SIGINT to the foreground process group) reaches qlass alone, which then
  stops gracefully and closes the simulators itself;
- a JVM that yields the CPU to qlass: it runs at a lower scheduling priority
  (:data:`qlass.envs._jvm_launch.JVM_NICENESS`), so a machine saturated by simulators
  does not keep the event loop waiting for a core;
- a close that always terminates the JVM, plus a finalizer that kills it if an instance is
  dropped without ``close()`` (and at interpreter exit). py4j also starts the JVM with
  ``--die-on-broken-pipe``, so it exits with this process even on SIGKILL or an
  unhandled SIGTERM;
- no py4j traffic outside the worker thread, finalizers included: from the moment the
  gateway exists, py4j's release messages for garbage-collected proxies (sent by
  whatever thread the collector runs in, possibly the event loop's) are queued for the
  worker, and the client is marked disconnected on shutdown.

:func:`qlass.envs._jvm_launch.qlass_launch` makes a simulator wrapper launch its JVM that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from qlass.envs._jvm_launch import ReleasesInOwnerThread
from qlass.envs.base import require_action
from qlass.errors import EnvCrashedError, EnvError, EnvTimeoutError, QlassError
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["JvmEnv", "java_child_pids"]

log = structlog.get_logger(__name__)
T = TypeVar("T")


def java_child_pids(parent: int | None = None) -> list[int]:
    """PIDs of the live (non-zombie) ``java`` processes whose parent is ``parent``.

    ``parent`` defaults to this process. Reads ``/proc``, so it returns ``[]`` where there
    is no ``/proc``. Blocking (file reads): call it from a thread in async code.
    """
    parent = os.getpid() if parent is None else parent
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    pids = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Format: "pid (comm) state ppid ..."; comm may itself hold spaces or parentheses.
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if comm == "java" and len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == parent:
            pids.append(int(entry))
    return sorted(pids)


def _reap(proc: subprocess.Popen[bytes]) -> int | None:
    """Kill ``proc`` if it still runs, close our end of its stdin and wait for it.

    ``wait()`` without a timeout: with a timeout it polls with ``time.sleep``, and this
    also runs as a finalizer, possibly in the event loop's thread; a SIGKILLed process is
    reaped at once.
    """
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
    return proc.wait()


def _disconnect(sim: Any) -> None:
    """Stop py4j from talking to the JVM: with the client marked disconnected, proxies that
    are garbage-collected later no longer try to reach a dead JVM (which logs errors and
    could block whatever thread the collector runs in)."""
    with contextlib.suppress(Exception):
        sim._gateway._gateway_client.is_connected = False
    with contextlib.suppress(Exception):
        # Close the idle pooled sockets locally (no JVM traffic): a JVM that died leaves
        # them open, and they would surface later as ResourceWarnings.
        sim._gateway._gateway_client.close()


def _dispose(sim: Any, proc: subprocess.Popen[bytes], release: Callable[[Any], None]) -> None:
    """Finalizer of an env dropped without ``close()``: no socket work, just kill and free."""
    _disconnect(sim)
    _reap(proc)
    with contextlib.suppress(Exception):
        release(sim)


def _is_py4j_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("py4j")


def is_java_exception(exc: BaseException) -> bool:
    """Whether ``exc`` is an exception the simulator threw in Java (py4j's
    ``Py4JJavaError``; the JVM is still alive), as opposed to a lost connection."""
    return type(exc).__name__ == "Py4JJavaError" and _is_py4j_error(exc)


def java_error_line(exc: BaseException) -> str:
    """The Java exception of a ``Py4JJavaError`` in one line
    (``java.lang.RuntimeException: ERROR: ...``), without py4j's preamble and the Java
    stack trace (those go to DEBUG logs)."""
    for line in str(exc).splitlines():
        line = line.strip().removeprefix(": ").strip()
        if line and not line.startswith(("at ", "An error occurred while calling")):
            return line
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class JvmEnv(ABC):
    """Base of envs backed by a py4j simulator; subclasses implement the blocking hooks.

    The JVM starts lazily, in the worker thread, on the first ``reset``. Subclasses define
    :meth:`_launch`, :meth:`_reset_blocking` and :meth:`_step_blocking` (all run in the
    worker thread) and may translate simulator-specific user errors themselves.
    """

    #: Registry name of the env family, used in messages and TaskSpec.env.
    family: str = "jvm"

    def __init__(
        self, *, step_timeout_s: float | None = 30.0, start_timeout_s: float | None = 180.0
    ) -> None:
        self.step_timeout_s = step_timeout_s
        self.start_timeout_s = start_timeout_s
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"qlass-{self.family}"
        )
        self._worker_started = False
        self._lock = threading.Lock()
        self._sim: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._dead: str | None = None
        self._task: TaskSpec | None = None
        self._moves = 0

    # -- hooks (worker thread) -------------------------------------------------------------

    @abstractmethod
    def _launch(self) -> Any:
        """Start the simulator; return its py4j wrapper (which has ``_gateway``).

        Build the wrapper from :func:`~qlass.envs._jvm_launch.qlass_launch` so that its JVM
        only stops when qlass stops it and its releases stay in this (the worker) thread.
        """

    @abstractmethod
    def _reset_blocking(self, task: TaskSpec, gold: bool) -> tuple[Observation, list[str]]:
        """Load ``task`` and return the first observation and, if ``gold``, the gold path."""

    @abstractmethod
    def _step_blocking(self, action: str) -> StepResult:
        """Execute ``action`` in the loaded task."""

    @staticmethod  # noqa: B027 - an optional hook with nothing to do by default
    def _release(sim: Any) -> None:
        """Free what the wrapper holds besides the JVM (temp files); after the JVM is gone."""

    # -- public API ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The JVM's process id (``None`` before the first reset or after close)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def task(self) -> TaskSpec | None:
        """The task of the current episode."""
        return self._task

    @property
    def alive(self) -> bool:
        """False once the simulator crashed, timed out or was closed."""
        return not self._closed and self._dead is None

    async def reset(self, task: TaskSpec) -> Observation:
        """Start ``task``; the first call also starts the JVM (``start_timeout_s`` covers it)."""
        obs, _ = await self._call(
            self._reset_blocking,
            task,
            False,
            limit_s=self.start_timeout_s,
            what=f"resetting {task.key}",
        )
        return obs

    async def gold_actions(self, task: TaskSpec) -> list[str]:
        """Reset to ``task`` with gold-path generation and return the gold action sequence."""
        _, gold = await self._call(
            self._reset_blocking,
            task,
            True,
            limit_s=self.start_timeout_s,
            what=f"generating the gold path of {task.key}",
        )
        return gold

    async def step(self, action: str) -> StepResult:
        """Execute one action; raises EnvTimeoutError / EnvCrashedError on failure."""
        action = require_action(action)
        if self._task is None:
            raise RuntimeError(f"{self.family}: step() before reset()")
        where = f"step {self._moves + 1} ({action!r}) of {self._task.key}"
        return await self._call(
            self._step_blocking, action, limit_s=self.step_timeout_s, what=where
        )

    async def close(self) -> None:
        """Terminate the JVM and the worker thread. Idempotent; never blocks the loop."""
        if self._closed:
            return
        self._closed = True
        # Not on self._executor: its thread may be stuck in a call to a hung JVM.
        await asyncio.to_thread(self._shutdown_blocking)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def kill(self) -> None:
        """Kill the JVM now (blocking, a few ms). Used by tests and emergency shutdown."""
        if self._sim is not None:
            _disconnect(self._sim)
        if self._proc is not None:
            _reap(self._proc)

    # -- internals -------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, limit_s: float | None, what: str) -> T:
        if self._closed:
            raise RuntimeError(f"{self.family} env is closed")
        if self._dead is not None:
            raise EnvCrashedError(
                f"{self.family} simulator is dead ({self._dead}); cannot do {what}"
            )
        if self._worker_started:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self._guarded, fn, args, what)
        else:
            # The executor starts its thread on the first submit, and Thread.start() waits
            # for the new thread to run (tens of ms on a loaded machine): not in the loop.
            submitted = await asyncio.to_thread(
                self._executor.submit, self._guarded, fn, args, what
            )
            self._worker_started = True
            future = asyncio.wrap_future(submitted)
        try:
            async with asyncio.timeout(limit_s) as scope:
                return await future
        except TimeoutError:
            if not scope.expired():
                raise
            pid = self.pid
            self._dead = f"timed out after {limit_s:g} s"
            await asyncio.to_thread(self.kill)
            log.warning("env_timeout", env=self.family, pid=pid, what=what, timeout_s=limit_s)
            raise EnvTimeoutError(
                f"{self.family} simulator (pid {pid}) did not finish {what} within "
                f"{limit_s:g} s; its JVM was killed"
            ) from None

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...], what: str) -> T:
        """Run ``fn`` in the worker thread, translating py4j/socket failures."""
        try:
            self._ensure_started()
            client = self._sim._gateway._gateway_client
            if isinstance(client, ReleasesInOwnerThread):
                client.flush_releases()
            return fn(*args)
        except QlassError:
            raise
        except Exception as exc:
            if not (_is_py4j_error(exc) or isinstance(exc, OSError | EOFError)):
                raise
            if self._dead is not None:  # killed after a timeout: already reported
                raise EnvCrashedError(f"{self.family} simulator was killed ({self._dead})") from exc
            if self._closed:  # closed while this call was under way (a stop): no crash
                raise EnvCrashedError(f"{self.family} env was closed during {what}") from exc
            if is_java_exception(exc) and self._proc is not None and self._proc.poll() is None:
                log.debug("env_java_error", env=self.family, what=what, error=str(exc))
                raise EnvError(
                    f"{self.family} simulator raised an error during {what}: {java_error_line(exc)}"
                ) from exc
            pid = self._proc.pid if self._proc is not None else None
            _disconnect(self._sim)
            code = _reap(self._proc) if self._proc is not None else None
            self._dead = f"JVM exited with code {code}" if code is not None else "connection lost"
            log.warning("env_crashed", env=self.family, pid=pid, what=what, error=str(exc))
            raise EnvCrashedError(
                f"{self.family} simulator (pid {pid}) died during {what}: JVM exit code {code}; "
                f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            ) from exc

    def _ensure_started(self) -> None:
        if self._sim is not None:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.family} env is closed")
            sim = self._launch()
            self._sim = sim
            self._proc = sim._gateway.java_process
            self._finalizer = weakref.finalize(self, _dispose, sim, self._proc, type(self)._release)
            log.debug("env_started", env=self.family, pid=self._proc.pid if self._proc else None)

    def _shutdown_blocking(self) -> None:
        with self._lock:
            sim, proc = self._sim, self._proc
            if sim is None or proc is None:
                return
            if self._finalizer is not None:
                self._finalizer.detach()
            running = proc.poll() is None
            if running:
                with contextlib.suppress(Exception):
                    sim._gateway.shutdown()
            else:
                _disconnect(sim)
                with contextlib.suppress(Exception):
                    sim._gateway.shutdown_callback_server()
            _disconnect(sim)
            code = _reap(proc)
            with contextlib.suppress(Exception):
                self._release(sim)
            self._proc = None
        # running_until_close=False: the JVM had exited by itself (or was killed) before.
        log.debug(
            "env_closed", env=self.family, pid=proc.pid, exit_code=code, running_until_close=running
        )
