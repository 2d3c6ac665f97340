"""Tree-search baselines over the value model, on the shared episode loop.

    best_first:K    best-first search over the value (Koh et al., "Tree search for language
                    model agents", 2024): at every step, up to K nodes are executed in the
                    order of their value, then the path to the best-valued node is committed
    mcts:K          Monte-Carlo tree search with the value model (UCT, LATS-style): K
                    selection / expansion / evaluation / backup iterations per step, then
                    the most visited move is committed

Like every strategy, a tree search is scored by the value model only: a node that ends the
episode competes with the value of its last step, never with the env's reward (the test
reward; see ``PAPER.md``, defects of the reference code). Nodes away from the committed
path are reached through the env provider's replay (:meth:`EnvProvider.session` positions an
env after the node's actions), so a search pays, besides the ``env_steps`` of the nodes it
executes, up to the depth of each node in replayed steps; ``info['replay_bound']`` is that
upper bound per episode (a pool that continues a live env replays less).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

from qlass._seeding import derive_seed
from qlass.runtime.context import SearchContext
from qlass.runtime.episode import (
    Decision,
    EpisodeState,
    advance,
    start_episode,
    to_trajectory,
)
from qlass.types import ScoredCandidate, TaskSpec, Trajectory

__all__ = ["MCTS", "BestFirst", "scored_children"]


async def scored_children(
    ctx: SearchContext, state: EpisodeState, *, n: int, temperature: float, seed: int
) -> list[Decision]:
    """``n`` sampled next turns of ``state``, duplicates (same text) merged, each scored by
    the value model, as decisions carrying their value; the first sample, unscored, if
    none of them parses (it is played as an invalid step)."""
    proposed = await ctx.propose(state.history, n=n, temperature=temperature, seed=seed)
    valid = list({c.text: c for c in proposed if c.is_valid}.values())
    if not valid:
        return [Decision(proposed[0], tuple(ScoredCandidate(c) for c in proposed))]
    values = await ctx.score(state.history, valid)
    considered = tuple(ScoredCandidate(c, v) for c, v in zip(valid, values, strict=True))
    return [Decision(c, considered, v) for c, v in zip(valid, values, strict=True)]


def _value(decision: Decision) -> float:
    return -float("inf") if decision.value is None else decision.value


@dataclass(order=True)
class _Frontier:
    """A not yet executed child: ordered by value (highest first), then by insertion."""

    priority: tuple[float, int]
    parent: EpisodeState = field(compare=False)
    decision: Decision = field(compare=False)


@dataclass(frozen=True)
class BestFirst:
    """Best-first search over the value model (Koh et al. 2024, their ``vf`` search).

    At every real step, from the current state: sample ``branching`` turns and score them;
    then, ``budget`` times, pop the highest-valued unexecuted node of the frontier, execute
    it (an env positioned at its parent by replay), and, if it did not end the episode and
    lies fewer than ``lookahead`` steps below the current state, push its ``branching``
    scored children. The path to the best-valued executed node (ties: the one executed
    first) is committed, all of its steps at once, as in the authors' code; the search
    starts again from its end. A node's value is the value model's score of the turn that
    led to it, so a finished node is judged like any other.
    """

    needs_value: ClassVar[bool] = True

    budget: int = 4
    branching: int = 2
    lookahead: int = 2
    temperature: float = 0.7

    @property
    def name(self) -> str:
        return f"best_first:{self.budget}"

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        start = await start_episode(ctx, task)
        state, searches, executed, replay_bound = start, 0, 0, 0
        while not state.done and state.depth < ctx.max_steps:
            reason = ctx.meter.exceeded()
            if reason is not None:
                state = replace(state, stop_reason=reason)
                break
            state, nodes, bound = await self._search(ctx, state, derive_seed(seed, state.depth))
            searches += 1
            executed += nodes
            replay_bound += bound
        info = {
            "strategy": self.name,
            "searches": searches,
            "nodes_executed": executed,
            "replay_bound": replay_bound,
        }
        return to_trajectory(ctx, replace(state, started=start.started), info)

    async def _search(
        self, ctx: SearchContext, root: EpisodeState, seed: int
    ) -> tuple[EpisodeState, int, int]:
        """One search from ``root``: the state at the end of the committed path, the nodes
        executed and the replayed steps they may have cost at most."""
        order = itertools.count()
        frontier: list[_Frontier] = []

        async def push(parent: EpisodeState) -> None:
            children = await scored_children(
                ctx,
                parent,
                n=self.branching,
                temperature=self.temperature,
                seed=derive_seed(seed, next(order)),
            )
            for decision in children:
                heapq.heappush(
                    frontier, _Frontier((-_value(decision), next(order)), parent, decision)
                )

        await push(root)
        best: tuple[float, EpisodeState] | None = None
        executed = replay_bound = 0
        while frontier and executed < self.budget:
            node = heapq.heappop(frontier)
            replay_bound += node.parent.depth
            child = await advance(ctx, node.parent, node.decision)
            executed += 1
            value = _value(node.decision)
            if best is None or value > best[0]:
                best = (value, child)
            below = child.depth - root.depth
            if not child.done and below < self.lookahead and child.depth < ctx.max_steps:
                await push(child)
        assert best is not None  # the root always has at least one child
        return best[1], executed, replay_bound


@dataclass(eq=False)
class _TreeNode:
    """A node of the MCTS tree: the move that leads to it, its statistics and children.

    ``state`` is None until the node's move is executed; ``children`` is None until it is
    expanded. A node starts with one visit worth its value-model score (its prior)."""

    decision: Decision | None
    state: EpisodeState | None
    visits: int
    total: float
    children: list[_TreeNode] | None = None

    @property
    def mean(self) -> float:
        return self.total / self.visits


def _prior(decision: Decision) -> float:
    # An unparsable turn is worth 0 (the bottom of the normalised Q range), not -inf,
    # so that backing it up cannot poison its ancestors' means.
    return 0.0 if decision.value is None else decision.value


@dataclass(frozen=True)
class MCTS:
    """Monte-Carlo tree search with the value model as evaluator (UCT; LATS-style).

    Every real step runs ``iterations`` times from the current state: *selection* walks
    down the expanded nodes by UCT, ``mean + exploration * sqrt(ln N(parent) / N(child))``
    (ties: the child sampled first); *expansion* executes the selected node's move (an env
    positioned at its parent by replay) and samples ``branching`` scored children, each
    starting with one visit worth its value; *evaluation* is the best child's value (a
    finished node, or one at the step limit, is evaluated by its own value again);
    *backup* adds one visit and that value to every node on the path. Then the root's
    most visited child (ties: higher mean, then sampled first) is committed and the
    search goes on from it, keeping its subtree. No rollouts to the env's reward: a leaf is
    judged by the value model, as every strategy here is.
    """

    needs_value: ClassVar[bool] = True

    iterations: int = 4
    branching: int = 2
    exploration: float = 1.0
    temperature: float = 0.7

    @property
    def name(self) -> str:
        return f"mcts:{self.iterations}"

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        start = await start_episode(ctx, task)
        root = _TreeNode(None, start, 1, 0.0)
        counts = {"searches": 0, "nodes_executed": 0, "replay_bound": 0}
        state = start
        while not state.done and state.depth < ctx.max_steps:
            reason = ctx.meter.exceeded()
            if reason is not None:
                state = replace(state, stop_reason=reason)
                break
            for i in range(self.iterations):
                await self._iterate(ctx, root, derive_seed(seed, state.depth, i), counts)
            children = root.children
            assert children  # the first iteration expands the root
            _, root = max(enumerate(children), key=lambda c: (c[1].visits, c[1].mean, -c[0]))
            state = await self._realise(ctx, root, state, counts)
            counts["searches"] += 1
        info = {"strategy": self.name, **counts}
        return to_trajectory(ctx, replace(state, started=start.started), info)

    def _uct(self, parent: _TreeNode, child: _TreeNode) -> float:
        return child.mean + self.exploration * math.sqrt(math.log(parent.visits) / child.visits)

    async def _realise(
        self, ctx: SearchContext, node: _TreeNode, parent: EpisodeState, counts: dict[str, int]
    ) -> EpisodeState:
        if node.state is None:
            assert node.decision is not None
            counts["replay_bound"] += parent.depth
            counts["nodes_executed"] += 1
            node.state = await advance(ctx, parent, node.decision)
        return node.state

    async def _iterate(
        self, ctx: SearchContext, root: _TreeNode, seed: int, counts: dict[str, int]
    ) -> None:
        assert root.state is not None
        path, node, state = [root], root, root.state
        while node.children:
            parent = node
            node = max(node.children, key=lambda c: self._uct(parent, c))
            path.append(node)
            state = await self._realise(ctx, node, state, counts)
        if state.done or state.depth >= ctx.max_steps:
            value = node.mean
        else:
            children = await scored_children(
                ctx, state, n=self.branching, temperature=self.temperature, seed=seed
            )
            node.children = [_TreeNode(d, None, 1, _prior(d)) for d in children]
            value = max(child.total for child in node.children)
        for visited in path:
            visited.visits += 1
            visited.total += value
