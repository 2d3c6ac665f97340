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
task that gave the env back does not wait for it).

That grace depends on the wall clock: on a busy machine a policy call outlasts it and
another branch takes the env, so the first one replays. A search that grows many branches
at once (the explorer) holds its envs through :meth:`EnvPool.branch` instead: an
:class:`EnvBranch` keeps one env reserved between its steps, no other request takes it,
and a branch takes its env only from those nobody reserves (the longest usable prefix, a
free env, else the least recently used, never waiting out a linger). A branch that holds
an env never waits for another, so branches cannot deadlock each other; branches beyond
the pool's size wait before their first step. Where every branch of a tree keeps its env
until its leaf, each leaf costs one reset and its depth in steps, whatever the order in
which policy calls return: env steps per new node are a property of the tree.

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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import structlog

from qlass.envs.base import Env
from qlass.envs.pool_handle import EnvHandle, _Position, _Slot
from qlass.envs.pool_stats import PoolStats
from qlass.envs.pool_waiters import Waiters
from qlass.errors import EnvCrashedError, EnvTimeoutError, ReplayMismatchError
from qlass.types import StepResult, TaskSpec

__all__ = ["EnvBranch", "EnvHandle", "EnvPool", "PoolStats"]

log = structlog.get_logger(__name__)


class EnvBranch:
    """One branch of a search holding one env of an :class:`EnvPool` between its steps.

    Get one from :meth:`EnvPool.branch`. Its sessions (one at a time) all use the same env,
    which stays reserved for the branch while it waits for its next policy call: no other
    request takes it, however long the call lasts. The first session takes an env that no
    branch reserves (waiting for one if needed); :meth:`release` (or leaving the ``with``
    block) gives it back, as finished. A branch therefore never waits for a second env
    while it holds one, and where a tree's branches each hold an env until their leaf,
    env steps per new node depend on the tree and nothing else (see the module doc).
    """

    def __init__(self, pool: EnvPool) -> None:
        self._pool = pool
        self._slot: _Slot | None = None

    def session(
        self,
        task: TaskSpec,
        actions: Sequence[str] = (),
        expected: Sequence[str] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[EnvHandle]:
        """:meth:`EnvPool.at` on this branch's env."""
        return self._pool._lend(task, actions, expected, self)

    def release(self) -> None:
        """End the reservation: nobody continues from where the env stands. Idempotent."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._unreserve(slot)


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
        async with self._lend(task, actions, expected, None) as handle:
            yield handle

    @contextlib.asynccontextmanager
    async def _lend(
        self,
        task: TaskSpec,
        actions: Sequence[str],
        expected: Sequence[str] | None,
        branch: EnvBranch | None,
    ) -> AsyncIterator[EnvHandle]:
        path = tuple(actions)
        if expected is not None and len(expected) != len(path):
            raise ValueError(f"expected has {len(expected)} observations for {len(path)} actions")
        slot = await self._acquire(task, path, branch)
        try:
            await self._position(slot, task, path, expected)
            yield EnvHandle(slot, self._caller_step)
        finally:
            await self._release(slot)

    @contextlib.contextmanager
    def branch(self) -> Iterator[EnvBranch]:
        """A branch of a search that keeps one env reserved between its steps (see
        :class:`EnvBranch`); released at the end of the block."""
        branch = EnvBranch(self)
        try:
            yield branch
        finally:
            branch.release()

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

    def _choose(
        self, task: TaskSpec, path: tuple[str, ...], now: float, *, reserving: bool = False
    ) -> _Slot | float | None:
        """The slot to lend, or how long to wait before an idle env may be taken from the
        branch it stands on (None: wait for a release). Envs reserved for a branch are
        never chosen; a request ``reserving`` one for its branch does not honour the linger
        time of envs nobody reserves (it depends on nothing but the pool's state)."""
        idle = [s for s in self._slots if not s.busy and s.branch is None]
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
        if reserving:
            return min(idle, key=lambda s: s.idle_since) if idle else None
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

    async def _acquire(
        self, task: TaskSpec, path: tuple[str, ...], branch: EnvBranch | None
    ) -> _Slot:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise RuntimeError(f"{self.name} pool is closed")
            if branch is not None and branch._slot is not None:
                choice: _Slot | float | None = branch._slot
                if branch._slot.busy:
                    raise RuntimeError("an env branch lends its env to one session at a time")
            else:
                choice = self._choose(task, path, loop.time(), reserving=branch is not None)
            if isinstance(choice, _Slot):
                choice.busy, choice.finished = True, False
                if branch is not None:
                    choice.branch, branch._slot = branch, choice
                return choice
            await self._waiters.wait(task, choice)

    def _unreserve(self, slot: _Slot) -> None:
        slot.branch, slot.finished = None, True
        if not slot.busy:
            self._waiters.wake(lambda _waiter: True)

    async def _release(self, slot: _Slot) -> None:
        if slot.broken:
            await self._discard(slot)
        slot.busy = False
        slot.idle_since = asyncio.get_running_loop().time()
        slot.owner = asyncio.current_task()
        if slot.branch is not None:  # still reserved: nobody else can take it
            return
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

    async def _caller_step(self, slot: _Slot, action: str) -> StepResult:
        return await self._step(slot, action, caller=True)

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
