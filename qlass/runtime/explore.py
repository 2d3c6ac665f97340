"""Exploration trees (paper stage 2), grown concurrently and committed node by node.

For a task, the tree starts at the state after reset. A node at depth ``d`` is expanded
with ``width`` samples of the policy (temperature ``temperature``), each executed in the
environment and committed as a child as soon as its env step returns:

- ``d < min_prune_depth``: every child is expanded further;
- ``min_prune_depth <= d < max_depth``: the first child is expanded further, the others are
  rolled out (one sample per step) to a leaf;
- ``d >= max_depth``: the node is rolled out to a leaf.

A leaf is a node whose episode ended (done) or hit the step limit; its final reward is the
episode score, and the store relabels its ancestors' Q values in the same transaction.

Resume: the tree is re-read from the store and walked by the same deterministic rules.
Children already committed are reused (no env step, no policy call); a missing sibling is
sampled again with the same seed, which the policy-call cache answers from the DB.
Environments are positioned through the :class:`EnvProvider`, one env branch per line of
the tree (:func:`~qlass.runtime.context.env_branch`): a node's first child continues the
env standing at the node, which stays reserved for that line while its policy calls run;
every other child starts a branch of its own (a reset and a replay of the node's path),
and a line gives its env back at its leaf. No line waits for a sibling, so a line holding
an env never waits for another one, and each leaf costs its depth in env steps whatever
the order in which policy calls return.

Several explorers may grow the same tree at once (a worker whose lease expired while it was
still running, and the task's next owner): a child is stored with
``add_child_if_absent``, so each (parent, sample index) is stored once and the explorer that
lost the race continues from the stored child.

Trace events (structlog, DEBUG; see docs/reliability.md), each with ``task`` and ``path``
(the sample indices from the root to the node; ``[]`` is the root):

- ``explore.sample``: a policy sample that was not answered from the call cache;
- ``explore.step``: an env step whose result is to become a node (not the replays that
  position an env), logged as the step is issued, so a process killed during the step
  still leaves it in the trace (a step that fails logs once per attempt);
- ``explore.node``: a node committed (``created`` false when another explorer stored it
  first).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import structlog

from qlass._seeding import derive_seed
from qlass.errors import EnvCrashedError, EnvTimeoutError, StoreError
from qlass.runtime.context import (
    EnvBranchProvider,
    SearchContext,
    Tally,
    action_key,
    env_branch,
)
from qlass.runtime.episode import Decision, EpisodeState, advance, start_episode
from qlass.runtime.scheduler import StopSignal
from qlass.storage import NewNode, NodeRecord, TaskRecord, Tree, TreeStore
from qlass.types import Candidate, History, TaskSpec, Turn

__all__ = ["DuplicateActions", "ExploreSettings", "TreeExplorer", "TreeStats"]

log = structlog.get_logger(__name__)

DuplicateActions = Literal["keep", "merge", "resample"]
"""What to do when the W samples of a node repeat an action (they lead to the same state):
``keep`` each as a child (the paper's code; the twins' Q labels then differ only by their
rollouts' luck), ``merge`` them into one child, or ``resample`` (up to
``resample_rounds`` more policy calls) to get W different actions."""


@dataclass(frozen=True, slots=True)
class ExploreSettings:
    """The paper's exploration knobs (W, D, prune depth, temperature) plus the step limit."""

    width: int = 2
    max_depth: int = 8
    min_prune_depth: int = 3
    temperature: float = 0.7
    max_steps: int = 30
    env_retries: int = 1
    duplicate_actions: DuplicateActions = "keep"
    resample_rounds: int = 2


@dataclass
class TreeStats:
    """What growing one tree cost and produced."""

    new_nodes: int = 0
    leaves: int = 0
    duplicate_samples: int = 0
    best_score: float = 0.0
    stopped: bool = False
    tally: Tally = field(default_factory=Tally)
    wall_time_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Node:
    record: NodeRecord
    state: EpisodeState
    path: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Child:
    """A child of a node about to be followed: stored already, or a sample to execute."""

    index: int
    stored: NodeRecord | None
    candidate: Candidate | None


class TreeExplorer:
    """Grows the exploration tree of one task at a time; many may run concurrently."""

    def __init__(
        self,
        store: TreeStore,
        ctx: SearchContext,
        settings: ExploreSettings,
        *,
        seed: int,
        stop: StopSignal | None = None,
    ) -> None:
        self._store = store
        self._ctx = ctx
        self._settings = settings
        self._seed = seed
        self._stop = stop or StopSignal()

    async def explore(self, task: TaskRecord) -> TreeStats:
        """Grow (or finish growing) the tree of ``task`` and return what it cost.

        After a graceful stop request no new step starts; steps under way are committed
        and the returned stats say ``stopped`` (the tree is then not complete).
        """
        started = time.perf_counter()
        stats = TreeStats()
        ctx = replace(self._ctx, tally=stats.tally, max_steps=self._settings.max_steps)
        with env_branch(self._ctx.envs) as line:
            await self._explore(task, stats, ctx, line)
        stats.stopped = self._stop.requested
        stats.wall_time_s = time.perf_counter() - started
        return stats

    async def _explore(
        self, task: TaskRecord, stats: TreeStats, ctx: SearchContext, line: EnvBranchProvider
    ) -> None:
        tree = await self._store.trees.load(task.id)
        spec = task.spec
        root_record = tree.root
        if root_record is None:
            state = await start_episode(replace(ctx, envs=line), spec)
            try:
                root_record = await self._store.trees.add_root(
                    task.id,
                    state.history.initial_observation,
                    instruction=state.history.instruction,
                )
            except StoreError:  # another explorer stored the root first: use its tree
                tree = await self._store.trees.load(task.id)
                if tree.root is None:
                    raise
                root_record = tree.root
                log.debug(
                    "explore.node", task=spec.key, path=[], node=root_record.id, created=False
                )
            else:
                stats.new_nodes += 1
                log.debug("explore.node", task=spec.key, path=[], node=root_record.id, created=True)
        else:
            state = EpisodeState(
                task=spec,
                history=History(tree.task.instruction, root_record.observation),
                started=time.perf_counter(),
            )
        grower = _Grower(
            self._store, ctx, self._settings, self._seed, spec, tree, stats, self._stop
        )
        await grower.grow(_Node(root_record, state, ()), line)


class _Grower:
    """The recursive part of :class:`TreeExplorer` for one tree."""

    def __init__(
        self,
        store: TreeStore,
        ctx: SearchContext,
        settings: ExploreSettings,
        seed: int,
        task: TaskSpec,
        tree: Tree,
        stats: TreeStats,
        stop: StopSignal,
    ) -> None:
        self._store = store
        self._stop = stop
        self._ctx = ctx
        self._settings = settings
        self._seed = seed
        self._task = task
        self._tree = tree
        self._stats = stats

    async def grow(self, node: _Node, line: EnvBranchProvider) -> None:
        """Grow the subtree of ``node``; ``line`` is the env branch standing at it, handed
        to the first child and released where that line of the tree ends."""
        depth = node.record.depth
        if node.record.is_leaf:
            line.release()
            return
        if depth >= self._settings.max_depth:
            await self._rollout(node, line)
            return
        children = await self._children(node, self._settings.width)
        if not children:
            line.release()
            return
        expand_all = depth < self._settings.min_prune_depth

        async def follow(rank: int, child: _Child) -> None:
            if rank == 0:
                await self._follow(node, child, line, expand=True)
                return
            with env_branch(self._ctx.envs) as own:
                await self._follow(node, child, own, expand=expand_all)

        await asyncio.gather(*(follow(rank, child) for rank, child in enumerate(children)))

    async def _follow(
        self, node: _Node, child: _Child, line: EnvBranchProvider, *, expand: bool
    ) -> None:
        """Make ``child`` (unless stored) on ``line``'s env, then grow or roll it out."""
        made = await self._made(node, child, line)
        if made is None:
            line.release()
        elif expand:
            await self.grow(made, line)
        else:
            await self._rollout(made, line)

    async def _rollout(self, node: _Node, line: EnvBranchProvider) -> None:
        try:
            while not node.record.is_leaf:
                children = await self._children(node, 1)
                made = await self._made(node, children[0], line) if children else None
                if made is None:
                    return
                node = made
        finally:
            line.release()

    async def _children(self, node: _Node, count: int) -> list[_Child]:
        """The first ``count`` children of ``node``, in sample order: stored ones, and
        policy samples for the missing ones (merged duplicates drop out)."""
        stored = {c.sample_index: c for c in self._tree.children(node.record.id)}
        missing = [i for i in range(count) if i not in stored]
        if missing and self._stop.requested:
            return []
        candidates: list[Candidate] = []
        if missing:
            candidates = await self._propose(node, count)
            for i, candidate in enumerate(candidates):
                if not candidate.cached:
                    log.debug("explore.sample", task=self._task.key, path=[*node.path, i])
        children = []
        for i in range(count):
            if i in stored:
                children.append(_Child(i, stored[i], None))
            elif i < len(candidates):
                children.append(_Child(i, None, candidates[i]))
        return children

    async def _made(self, node: _Node, child: _Child, line: EnvBranchProvider) -> _Node | None:
        """The child's node: the stored one, or executed on ``line`` and committed (None
        if the env failed)."""
        record = child.stored
        if record is None:
            assert child.candidate is not None
            record = await self._execute(node, child.candidate, child.index, line)
        if record is None:
            return None
        return _Node(record, self._state_after(node, record), (*node.path, child.index))

    async def _propose(self, node: _Node, count: int) -> list[Candidate]:
        """The node's ``count`` samples, duplicates handled per ``duplicate_actions``; a
        child's sample index is its position in this list (the same on every resume)."""
        seed = derive_seed(self._seed, "explore", self._task.key, node.path, count)
        history, temperature = node.state.history, self._settings.temperature
        mode = self._settings.duplicate_actions if count > 1 else "keep"
        if mode == "keep":
            candidates = await self._ctx.propose(
                history, n=count, temperature=temperature, seed=seed
            )
            self._stats.duplicate_samples += len(candidates) - len(
                {action_key(c) for c in candidates}
            )
            return candidates
        proposal = await self._ctx.propose_distinct(
            history,
            n=count,
            temperature=temperature,
            seed=seed,
            extra_rounds=self._settings.resample_rounds if mode == "resample" else 0,
        )
        self._stats.duplicate_samples += proposal.duplicates
        return proposal.candidates

    @staticmethod
    def _state_after(node: _Node, record: NodeRecord) -> EpisodeState:
        state = node.state
        executed = record.action is not None and record.status == "ok"
        return replace(
            state,
            history=state.history.extend(Turn(record.text, record.action, record.observation)),
            actions=(*state.actions, record.action) if executed else state.actions,  # type: ignore[arg-type]
            observations=(*state.observations, record.observation)
            if executed
            else state.observations,
            score=record.score,
            done=record.done,
            success=record.success,
        )

    async def _execute(
        self, node: _Node, candidate: Candidate, index: int, line: EnvBranchProvider
    ) -> NodeRecord | None:
        """Run one candidate from ``node`` and commit the child (None if the env failed)."""
        error: Exception | None = None
        ctx = replace(self._ctx, envs=line)
        path = [*node.path, index]
        for _attempt in range(self._settings.env_retries + 1):
            started = time.perf_counter()
            if candidate.action is not None:  # an invalid output costs no env step
                # Before the step, so that a kill during it still leaves its trace.
                log.debug("explore.step", task=self._task.key, path=path)
            try:
                after = await advance(ctx, node.state, Decision(candidate))
            except (EnvCrashedError, EnvTimeoutError) as exc:
                error = exc
                log.warning("explore.env_failed", task=self._task.key, error=str(exc))
                continue
            result = after.steps[-1].result
            leaf = after.done or node.record.depth + 1 >= self._settings.max_steps
            record, created = await self._store.trees.add_child_if_absent(
                node.record.id,
                NewNode(
                    observation=result.observation,
                    action=candidate.action,
                    text=candidate.text,
                    reward=result.reward,
                    score=result.score,
                    done=result.done,
                    success=result.success,
                    final_reward=after.score if leaf else None,
                    sample_index=index,
                    prompt_tokens=candidate.usage.prompt_tokens,
                    completion_tokens=candidate.usage.completion_tokens,
                    cost_usd=candidate.usage.cost_usd,
                    env_time_s=time.perf_counter() - started,
                    status="ok" if candidate.is_valid else "invalid",
                    error=candidate.parse_error,
                ),
            )
            log.debug(
                "explore.node", task=self._task.key, path=path, node=record.id, created=created
            )
            if created:
                self._stats.new_nodes += 1
                self._stats.leaves += leaf
                self._stats.best_score = max(self._stats.best_score, after.score if leaf else 0.0)
            return record
        await self._store.trees.add_child_if_absent(
            node.record.id,
            NewNode(
                observation="",
                action=candidate.action,
                text=candidate.text,
                is_leaf=True,
                sample_index=index,
                status="failed",
                error=str(error),
            ),
        )
        return None
