"""A bounded pool of live simulators that hands out envs standing at a given tree node.

:meth:`EnvPool.at` yields an :class:`EnvHandle` whose env stands after executing
``actions`` from the reset of ``task``. The pool keeps every idle env together with the
(task, action path) it stands at, and positions an env for a request in the cheapest way:

1. an idle env standing exactly at ``actions`` is handed out as is (0 steps);
2. an idle env standing at a prefix of ``actions`` is advanced by the missing actions
   (live continuation: 1 step for a child of the node it stands at);
3. otherwise a new env is started while the pool is below ``size``, or an idle env is reset
   and ``actions`` are replayed from the reset (depth steps).

Which idle env is reset: first one standing at the end of an episode (done, at
``max_steps`` actions, or marked with :meth:`EnvHandle.finish`); an env standing
mid-episode is left to its branch, which likely continues from it after its next policy
call, until it has been idle for ``linger_s`` (the request waits meanwhile; a request of the
task that gave the env back does not wait for it). Without that
grace, concurrent branches (an explorer grows many at once) take each other's envs and
every step turns into a replay; with it, at most ``size`` branches advance at once.

Replayed observations are checked against ``expected`` when given, with the env family's
``same_observation`` (ScienceWorld's ignores its object order); a difference raises
:class:`~qlass.errors.ReplayMismatchError` (the simulator is not deterministic for that
task, so tree nodes cannot be revisited by replay). :meth:`EnvPool.around` positions one
env the caller owns (an app's own env) by the same rules. Every env step is counted in
:class:`PoolStats`, so "env steps per new node" is visible.

Failures: an env that crashed, timed out or raised during a step is closed (its JVM
killed) and replaced by a fresh instance on next use; the error reaches the caller. A crash
while positioning is retried once on a fresh instance, since no caller-visible step was
lost. ``aclose()`` (or leaving ``async with``) closes every env.

Do not hold a handle while waiting for another one from the same pool: with all envs
lent, that waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from qlass.envs.base import Env, require_action
from qlass.envs.pool_stats import PoolStats
from qlass.envs.pool_waiters import Waiters
from qlass.errors import EnvCrashedError, EnvTimeoutError, ReplayMismatchError
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["EnvHandle", "EnvPool", "PoolStats"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Position:
    """Where an env stands: a task, the actions executed since reset, and what it showed."""

    task: TaskSpec
    actions: tuple[str, ...]
    initial: Observation
    last: StepResult | None = None

    def advance(self, action: str, result: StepResult) -> _Position:
        return _Position(self.task, (*self.actions, action), self.initial, result)

    @property
    def observation(self) -> str:
        return self.last.observation if self.last is not None else self.initial.text


@dataclass(eq=False)
class _Slot:
    env: Env | None = None
    position: _Position | None = None
    busy: bool = False
    broken: bool = False
    idle_since: float = 0.0
    finished: bool = False  # the caller said nobody continues from this position
    owner: asyncio.Task[Any] | None = None  # the task that gave it back


class EnvHandle:
    """An env lent by :meth:`EnvPool.at`. Step it through this handle so that the pool
    knows the path it stands at when it is given back."""

    def __init__(self, pool: EnvPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot

    @property
    def _position(self) -> _Position:
        assert self._slot.position is not None
        return self._slot.position

    @property
    def task(self) -> TaskSpec:
        return self._position.task

    @property
    def initial(self) -> Observation:
        """The observation after reset (instruction, first view)."""
        return self._position.initial

    @property
    def actions(self) -> tuple[str, ...]:
        """Actions executed since reset: the path of the node the env stands at."""
        return self._position.actions

    @property
    def last(self) -> StepResult | None:
        """The result of the latest step (None at the reset state)."""
        return self._position.last

    @property
    def observation(self) -> str:
        """The current observation text."""
        return self._position.observation

    @property
    def done(self) -> bool:
        last = self._position.last
        return last is not None and last.done

    @property
    def env(self) -> Env:
        """The underlying env, for inspection only: stepping it directly bypasses the pool's
        bookkeeping."""
        assert self._slot.env is not None
        return self._slot.env

    async def step(self, action: str) -> StepResult:
        """Execute ``action`` (a new node); errors leave the env to be replaced."""
        return await self._pool._step(self._slot, require_action(action), caller=True)

    def finish(self) -> None:
        """Say that nobody will continue from where this env stands (an episode cut at a
        step limit, an abandoned branch), so the pool may reuse it at once."""
        self._slot.finished = True


class EnvPool:
    """At most ``size`` live envs made by ``factory``, positioned on request (see module doc).

    ``step_timeout_s`` bounds every step the pool issues, in addition to the env's own
    timeout; an env that exceeds it is closed and replaced. ``linger_s`` is how long an idle
    env standing mid-episode is kept for its branch while other requests wait (0: reset it
    for any request at once). ``max_steps``: episodes end after that many actions (a number,
    or a function of the task such as the run's per-task limit), so an env standing there is
    free at once. ``same_observation(replayed, recorded)`` compares replayed observations
    (default: equal text). ``owns_envs=False``: the envs are the caller's, never closed
    (after a failure the env is reset on its next use instead of replaced).
    """

    def __init__(
        self,
        factory: Callable[[], Env],
        *,
        size: int = 4,
        step_timeout_s: float | None = None,
        linger_s: float = 0.5,
        max_steps: int | Callable[[TaskSpec], int | None] | None = None,
        name: str = "env",
        same_observation: Callable[[str, str], bool] = operator.eq,
        owns_envs: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self._factory = factory
        self.size = size
        self.step_timeout_s = step_timeout_s
        self.linger_s = linger_s
        self.max_steps = max_steps
        self.name = name
        self.same_observation = same_observation
        self._owns_envs = owns_envs
        self.stats = PoolStats()
        self._slots: list[_Slot] = []
        self._waiters = Waiters()
        self._closed = False

    @classmethod
    def for_env(
        cls,
        name: str,
        *,
        size: int = 4,
        step_timeout_s: float | None = 30.0,
        linger_s: float = 0.5,
        max_steps: int | Callable[[TaskSpec], int | None] | None = None,
        **options: Any,
    ) -> EnvPool:
        """A pool of registry env ``name``; ``options`` go to
        :func:`qlass.envs.registry.create_env`."""
        from qlass.envs.registry import create_env, get_family

        family = get_family(name)  # fail now, not on first use, for an unknown name

        def factory() -> Env:
            return create_env(family.name, step_timeout_s=step_timeout_s, **options)

        # The env enforces step_timeout_s itself (killing its simulator); the pool's own
        # limit, a little later, is a backstop for envs that cannot.
        backstop = None if step_timeout_s is None else step_timeout_s + 5.0
        return cls(
            factory,
            size=size,
            step_timeout_s=backstop,
            linger_s=linger_s,
            max_steps=max_steps,
            name=family.name,
            same_observation=family.same_observation,
        )

    @classmethod
    def around(cls, env: Env) -> EnvPool:
        """A pool that lends the caller's one ``env``, one session at a time: continued
        where it stands on the way, else reset and replayed. The pool never closes it."""
        return cls(lambda: env, size=1, linger_s=0.0, name=type(env).__name__, owns_envs=False)

    @property
    def live(self) -> int:
        """Env instances currently held (busy or idle)."""
        return sum(1 for s in self._slots if s.env is not None)

    @property
    def envs(self) -> list[Env]:
        """The live env instances (for inspection, e.g. their simulator pids)."""
        return [s.env for s in self._slots if s.env is not None]

    async def __aenter__(self) -> EnvPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every env, busy or idle. Idempotent."""
        self._closed = True
        envs = [s.env for s in self._slots if s.env is not None and self._owns_envs]
        for slot in self._slots:
            slot.env, slot.position = None, None
        results = await asyncio.gather(*(env.close() for env in envs), return_exceptions=True)
        for error in results:
            if isinstance(error, BaseException):
                log.warning("env_close_failed", pool=self.name, error=repr(error))
        self._waiters.wake(lambda _waiter: True)

    @contextlib.asynccontextmanager
    async def at(
        self,
        task: TaskSpec,
        actions: Sequence[str] = (),
        expected: Sequence[str] | None = None,
    ) -> AsyncIterator[EnvHandle]:
        """Lend an env standing after ``actions`` from the reset of ``task``.

        ``expected[i]`` is the observation recorded after ``actions[i]``; replayed steps are
        checked against it. The env goes back to the pool at the end of the block, standing
        wherever the caller's steps took it.
        """
        path = tuple(actions)
        if expected is not None and len(expected) != len(path):
            raise ValueError(f"expected has {len(expected)} observations for {len(path)} actions")
        slot = await self._acquire(task, path)
        try:
            await self._position(slot, task, path, expected)
            yield EnvHandle(self, slot)
        finally:
            await self._release(slot)

    def session(
        self,
        task: TaskSpec,
        actions: Sequence[str] = (),
        expected: Sequence[str] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[EnvHandle]:
        """:meth:`at` under the name of the runtime's ``EnvProvider`` protocol."""
        return self.at(task, actions, expected)

    # -- lending ---------------------------------------------------------------------------

    def _at_end(self, slot: _Slot) -> bool:
        """True where the env stands at the end of an episode (done or at max_steps): no
        request will continue from there."""
        pos = slot.position
        if pos is None:
            return False
        if slot.finished or (pos.last is not None and pos.last.done):
            return True
        limit = self.max_steps(pos.task) if callable(self.max_steps) else self.max_steps
        return limit is not None and len(pos.actions) >= limit

    def _choose(self, task: TaskSpec, path: tuple[str, ...], now: float) -> _Slot | float | None:
        """The slot to lend, or how long to wait before an idle env may be taken from the
        branch it stands on (None: wait for a release)."""
        idle = [s for s in self._slots if not s.busy]
        usable: list[tuple[int, _Slot]] = []
        for slot in idle:
            pos = slot.position
            if slot.env is None or pos is None or pos.task != task:
                continue
            if pos.actions == path:
                return slot
            n = len(pos.actions)
            if n < len(path) and path[:n] == pos.actions and not self._at_end(slot):
                usable.append((n, slot))
        if usable:
            return max(usable, key=lambda item: item[0])[1]
        free = [s for s in idle if s.env is None or s.position is None or self._at_end(s)]
        blank = [s for s in free if s.env is not None and s.position is None]
        if blank:
            return blank[0]
        if len(self._slots) < self.size:
            slot = _Slot()
            self._slots.append(slot)
            return slot
        if free:  # a lost env or one at the end of an episode
            return min(free, key=lambda s: (s.env is not None, s.idle_since))
        # Every idle env stands mid-episode; its branch will likely continue from there (after
        # a policy call), so it is taken away only after lingering idle for linger_s, except
        # from the task that gave it back: that one has moved on (one task working depth
        # first never waits for itself).
        me = asyncio.current_task()
        stale = [s for s in idle if now - s.idle_since >= self.linger_s or s.owner is me]
        if stale:
            return min(stale, key=lambda s: s.idle_since)
        if idle:
            return min(self.linger_s - (now - s.idle_since) for s in idle)
        return None

    async def _acquire(self, task: TaskSpec, path: tuple[str, ...]) -> _Slot:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise RuntimeError(f"{self.name} pool is closed")
            choice = self._choose(task, path, loop.time())
            if isinstance(choice, _Slot):
                choice.busy, choice.finished = True, False
                return choice
            await self._waiters.wait(task, choice)

    async def _release(self, slot: _Slot) -> None:
        if slot.broken:
            await self._discard(slot)
        slot.busy = False
        slot.idle_since = asyncio.get_running_loop().time()
        slot.owner = asyncio.current_task()
        # Wake only the waiters whose choice this release can change (waking all of them
        # at every release made each of hundreds of waiting episodes scan the pool once
        # per step): any waiter for a free env; a waiter of the same task (it may continue
        # from this env); a waiter that saw no idle env at all (it now has one to linger
        # on). A waiter with a timeout already lingers on an older idle env, which is free
        # to take sooner than this one.
        free = slot.env is None or slot.position is None or self._at_end(slot)
        task = slot.position.task if slot.position is not None else None
        self._waiters.wake(lambda waiter: free or not waiter.timed or waiter.task == task)

    # -- positioning -----------------------------------------------------------------------

    async def _position(
        self,
        slot: _Slot,
        task: TaskSpec,
        path: tuple[str, ...],
        expected: Sequence[str] | None,
    ) -> None:
        for attempt in (1, 2):
            try:
                await self._position_once(slot, task, path, expected)
                return
            except (EnvCrashedError, EnvTimeoutError) as exc:
                if attempt == 2:
                    raise
                log.warning(
                    "env_replaced_while_positioning", pool=self.name, task=task.key, error=str(exc)
                )
                await self._discard(slot)

    async def _discard(self, slot: _Slot) -> None:
        """Close the slot's env (a fresh one is made on its next use); a caller's env is
        kept and reset on its next use."""
        env, slot.position, slot.broken = slot.env, None, False
        if self._owns_envs:
            slot.env = None
        if env is not None and self._owns_envs:
            self.stats.replaced += 1
            try:
                await env.close()
            except Exception as exc:
                log.warning("env_close_failed", pool=self.name, error=repr(exc))

    async def _position_once(
        self,
        slot: _Slot,
        task: TaskSpec,
        path: tuple[str, ...],
        expected: Sequence[str] | None,
    ) -> None:
        if slot.env is None:
            slot.env = self._factory()
            self.stats.created += 1
        pos = slot.position
        if pos is not None and pos.task == task and pos.actions == path:
            self.stats.exact_reuses += 1
            if expected and not self.same_observation(pos.observation, expected[-1]):
                raise self._mismatch(task, path, len(path) - 1, expected[-1], pos.observation)
            return
        if (
            pos is not None
            and pos.task == task
            and path[: len(pos.actions)] == pos.actions
            and not (pos.last is not None and pos.last.done)
        ):
            self.stats.continuations += 1
            start = len(pos.actions)
        else:
            self.stats.replays += 1
            slot.position = None
            try:
                initial = await slot.env.reset(task)
            except BaseException:
                slot.broken = True
                raise
            self.stats.resets += 1
            slot.position = _Position(task, (), initial)
            start = 0
        replaying = start == 0
        for i in range(start, len(path)):
            result = await self._step(slot, path[i], caller=False, replay=replaying)
            if expected is not None and not self.same_observation(result.observation, expected[i]):
                raise self._mismatch(task, path, i, expected[i], result.observation)

    def _mismatch(
        self, task: TaskSpec, path: tuple[str, ...], index: int, want: str, got: str
    ) -> ReplayMismatchError:
        return ReplayMismatchError(
            f"replaying {task.key}: after step {index + 1} ({path[index]!r}) the simulator "
            f"showed a different observation than recorded, so it is not deterministic for "
            f"this task and its tree nodes cannot be revisited by replay.\n"
            f"  recorded: {want[:200]!r}\n  replayed: {got[:200]!r}"
        )

    async def _step(
        self, slot: _Slot, action: str, *, caller: bool, replay: bool = False
    ) -> StepResult:
        env, pos = slot.env, slot.position
        if env is None or pos is None or slot.broken:
            raise EnvCrashedError(
                f"{self.name} env was lost by an earlier failure; start again with pool.at()"
            )
        try:
            async with asyncio.timeout(self.step_timeout_s) as scope:
                result = await env.step(action)
        except TimeoutError:
            slot.broken = True
            if not scope.expired():
                raise
            self.stats.timeouts += 1
            raise EnvTimeoutError(
                f"{self.name} step {len(pos.actions) + 1} ({action!r}) of {pos.task.key} took "
                f"longer than {self.step_timeout_s:g} s; the env is replaced"
            ) from None
        except EnvTimeoutError:
            slot.broken = True
            self.stats.timeouts += 1
            raise
        except EnvCrashedError:
            slot.broken = True
            self.stats.crashes += 1
            raise
        except asyncio.CancelledError:
            # The step may or may not have happened: keep the env but forget where it is.
            slot.position = None
            raise
        except BaseException:
            slot.broken = True
            raise
        slot.position = pos.advance(action, result)
        self.stats.steps += 1
        if caller:
            self.stats.caller_steps += 1
        elif replay:
            self.stats.replayed_steps += 1
        else:
            self.stats.advanced_steps += 1
        return result
