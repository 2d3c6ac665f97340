"""A deterministic expert for simulators whose own gold agent is random: search with replay.

TextWorldExpress's gold agent walks at random in coin and twc (a ``new Random()`` inside
the JVM, out of reach of any seed), so two exports of the same task give different expert
paths and every later stage of a run inherits the difference. The simulator itself is
deterministic for a given action sequence, which is all a search needs:

- :func:`search_expert_path` runs breadth-first search over the valid actions from the
  current state to the nearest state with a higher score, commits to that sub-path, and
  repeats until the task is won. For a game with a single reward (coin: taking the coin)
  that is the shortest winning path; with several rewards (twc: one per object put away)
  it is a chain of shortest sub-paths, greedy rather than globally shortest.
- A state is known by what the simulator shows of it (a :class:`SearchState` key chosen
  by the adapter: e.g. room description, inventory, valid actions, score); states seen
  before are not expanded again. Actions are tried in sorted order, so ties are broken the
  same way every time and the result depends only on the task.
- Getting to a state replays its action path from a restart, unless the simulator already
  stands at a prefix of it (then only the rest is played). An action that leaves the key
  unchanged (``look around``, ``examine ...``) leaves the simulator where it was, so the
  next action is tried without a replay.
- The work is bounded (``max_calls`` simulator calls: steps plus restarts); a task whose
  search runs out of it, or has no reachable gain, raises :class:`NoExpertPathError`
  with the reason, and the gold export skips the task naming it.

The search is synchronous: adapters run it in their simulator's worker thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from qlass.errors import NoExpertPathError

__all__ = ["DEFAULT_MAX_CALLS", "Replayable", "SearchState", "search_expert_path"]

DEFAULT_MAX_CALLS = 50_000
"""Simulator calls (steps plus restarts) one task's search may use: about a minute at
TextWorldExpress's ~1 ms a call. The default games need far fewer (measured in
docs/envs.md)."""


@dataclass(frozen=True, slots=True)
class SearchState:
    """What the search knows of a simulator state.

    ``key`` identifies the state (equal keys: the same state for the search's purpose);
    ``actions`` are the valid actions there; ``success`` and ``failure`` end the episode.
    """

    key: Hashable
    actions: tuple[str, ...]
    score: float
    success: bool = False
    failure: bool = False


class Replayable(Protocol):
    """A deterministic simulator the search drives (blocking calls)."""

    def restart(self) -> SearchState:
        """Start the task afresh; the state after reset."""
        ...

    def act(self, action: str) -> SearchState:
        """Execute ``action``; the state after it."""
        ...


class _Driver:
    """Positions the simulator at action paths, counting calls against the bound."""

    def __init__(self, sim: Replayable, max_calls: int) -> None:
        self.sim = sim
        self.max_calls = max_calls
        self.calls = 0
        self.at: tuple[str, ...] | None = None  # the path the simulator stands at

    def _count(self) -> None:
        self.calls += 1
        if self.calls > self.max_calls:
            raise NoExpertPathError(
                f"expert search found no winning path within {self.max_calls} simulator calls"
            )

    def restart(self) -> SearchState:
        self._count()
        state = self.sim.restart()
        self.at = ()
        return state

    def act(self, action: str) -> SearchState:
        self._count()
        assert self.at is not None
        state = self.sim.act(action)
        self.at = (*self.at, action)
        return state

    def go_to(self, path: tuple[str, ...]) -> None:
        if self.at is not None and path[: len(self.at)] == self.at:
            rest = path[len(self.at) :]
        else:
            self.restart()
            rest = path
        for action in rest:
            self.act(action)


def _nearest_gain(
    driver: _Driver, prefix: tuple[str, ...], start: SearchState
) -> tuple[tuple[str, ...], SearchState]:
    """The shortest extension of ``prefix`` that wins or raises the score above ``start``'s."""
    seen = {start.key}
    frontier: deque[tuple[tuple[str, ...], SearchState]] = deque([(prefix, start)])
    while frontier:
        path, state = frontier.popleft()
        for action in sorted(state.actions):
            driver.go_to(path)
            after = driver.act(action)
            extended = (*path, action)
            if after.success or (after.score > start.score and not after.failure):
                return extended, after
            if after.key == state.key:
                driver.at = path  # nothing changed: the simulator is still at ``path``
                continue
            if after.failure or after.key in seen:
                continue
            seen.add(after.key)
            frontier.append((extended, after))
    raise NoExpertPathError(
        f"expert search: no action sequence raises the score above {start.score:g} "
        f"after {len(prefix)} expert steps ({len(seen)} states searched)"
    )


def search_expert_path(sim: Replayable, *, max_calls: int = DEFAULT_MAX_CALLS) -> list[str]:
    """A winning action sequence for ``sim``'s task, the same on every call (see module doc).

    Raises:
        NoExpertPathError: no win within ``max_calls`` simulator calls, or none reachable.
    """
    driver = _Driver(sim, max_calls)
    state = driver.restart()
    path: tuple[str, ...] = ()
    while not state.success:
        path, state = _nearest_gain(driver, path, state)
    return list(path)
