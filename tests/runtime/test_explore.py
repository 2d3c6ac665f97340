"""The explorer against the real SQLite tree store, a corridor env and a scripted policy."""

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from qlass.backends.cache import CachedPolicy
from qlass.backends.scripted import ScriptedPolicy
from qlass.envs.pool import EnvPool
from qlass.runtime.context import SearchContext
from qlass.runtime.explore import ExploreSettings, TreeExplorer
from qlass.runtime.scheduler import StopSignal
from qlass.storage import Tree, TreeStore
from qlass.types import ChatMessage, StepResult

from .toys import TASK, Corridor

SETTINGS = ExploreSettings(width=2, max_depth=3, min_prune_depth=1, temperature=0.7, max_steps=6)


def _right_then_left(messages: Sequence[ChatMessage], index: int) -> str:
    return "Action: move right" if index % 2 == 0 else "Action: move left"


def _shape(tree: Tree) -> set[tuple[tuple[int, ...], str | None, str]]:
    """Each node as (sample-index path, action, observation): comparable across stores."""
    out = set()
    for node in tree.nodes:
        path = tuple(n.sample_index for n in tree.path(node.id)[1:])
        out.add((path, node.action, node.observation))
    return out


async def _explore(
    store: TreeStore, policy: ScriptedPolicy, stop: StopSignal | None = None
) -> tuple[Tree, Corridor, object]:
    run = await store.runs.get("r") if await store.runs.find("r") else None
    if run is None:
        run = await store.runs.create("r", config={}, seed=0)
        await store.labels.create_set(run.id, gamma=0.9, normalize=False)
    (task,) = await store.tasks.add_many(run.id, [TASK])
    env = Corridor(3)
    ctx = SearchContext(policy=CachedPolicy(policy, store.call_cache), envs=EnvPool.around(env))
    stats = await TreeExplorer(store, ctx, SETTINGS, seed=0, stop=stop).explore(task)
    return await store.trees.load(task.id), env, stats


def _check_paper_shape(tree: Tree) -> None:
    root = tree.root
    assert root is not None
    for node in tree.nodes:
        children = tree.children(node.id)
        if node.is_leaf:
            assert not children
            assert node.done or node.depth == SETTINGS.max_steps
            assert node.final_reward == node.score
            continue
        if node.depth < SETTINGS.min_prune_depth:
            assert len(children) == SETTINGS.width
        elif node.depth < SETTINGS.max_depth:
            # An expanded node has W children; a rolled-out one has exactly one.
            assert len(children) in (1, SETTINGS.width)
        else:
            assert len(children) == 1


async def test_tree_has_the_papers_shape_and_labels(tmp_path: Path) -> None:
    store = await TreeStore.open(tmp_path / "t.db")
    tree, env, stats = await _explore(store, ScriptedPolicy(rule=_right_then_left))
    _check_paper_shape(tree)
    assert stats.new_nodes == len(tree.nodes)
    # Every new non-root node cost exactly one env step that produced it.
    assert env.steps >= len(tree.nodes) - 1
    # The all-right path reaches the goal: its leaf has reward 1 and the root's first child
    # carries the discounted value 0.9**2 (two more steps to the goal).
    run = await store.runs.get("r")
    (label_set,) = await store.labels.sets(run.id)
    q = await store.labels.values(label_set.id, tree.task.id)
    first = next(c for c in tree.children(tree.root.id) if c.sample_index == 0)
    assert q[first.id] == pytest.approx(0.9**2)
    goal = [n for n in tree.nodes if n.success]
    assert goal
    assert all(q[n.id] == 1.0 for n in goal)
    await store.aclose()


async def test_rerun_reuses_every_committed_node(tmp_path: Path) -> None:
    store = await TreeStore.open(tmp_path / "t.db")
    first, _, _ = await _explore(store, ScriptedPolicy(rule=_right_then_left))
    policy = ScriptedPolicy(rule=_right_then_left)
    again, env, stats = await _explore(store, policy)
    assert _shape(again) == _shape(first)
    assert stats.new_nodes == 0
    assert env.steps == 0
    assert policy.calls == []
    await store.aclose()


class _StopAfter(ScriptedPolicy):
    def __init__(self, calls: int, stop: StopSignal) -> None:
        super().__init__(rule=_right_then_left)
        self._left, self._stop = calls, stop

    async def sample(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        self._left -= 1
        if self._left <= 0:
            self._stop.request()
        return await super().sample(messages, **kw)


async def test_interrupted_exploration_resumes_to_the_same_tree(tmp_path: Path) -> None:
    reference_store = await TreeStore.open(tmp_path / "ref.db")
    reference, _, _ = await _explore(reference_store, ScriptedPolicy(rule=_right_then_left))

    store = await TreeStore.open(tmp_path / "t.db")
    stop = StopSignal()
    partial, _, stats = await _explore(store, _StopAfter(4, stop), stop)
    assert stats.stopped
    assert 1 < len(partial.nodes) < len(reference.nodes)
    committed = {n.id: n for n in partial.nodes}

    resumed, env, resumed_stats = await _explore(store, ScriptedPolicy(rule=_right_then_left))
    assert _shape(resumed) == _shape(reference)
    # Committed nodes are untouched and were not made again.
    for node_id, node in committed.items():
        assert resumed.by_id[node_id] == node
    assert resumed_stats.new_nodes == len(reference.nodes) - len(partial.nodes)
    # The resume paid env steps for the new nodes (plus replays to reach the frontier).
    assert env.steps >= resumed_stats.new_nodes
    await store.aclose()
    await reference_store.aclose()


async def test_rollouts_stop_at_the_step_limit(tmp_path: Path) -> None:
    store = await TreeStore.open(tmp_path / "t.db")
    tree, _, _ = await _explore(store, ScriptedPolicy(actions=["move left"]))
    _check_paper_shape(tree)
    depths = [n.depth for n in tree.nodes]
    assert max(depths) == SETTINGS.max_steps
    leaves = [n for n in tree.nodes if n.is_leaf]
    assert leaves
    assert all(n.depth == SETTINGS.max_steps and not n.done for n in leaves)
    assert all(n.final_reward == 0.0 for n in leaves)
    await store.aclose()


class _FirstCallRepeats(ScriptedPolicy):
    """The first call for a conversation samples 'move right' every time; later calls for
    the same conversation say 'move left' (so resampling finds the second action)."""

    def __init__(self) -> None:
        super().__init__(rule=self._turn)
        self._seen: dict[str, int] = {}
        self._call = 0

    async def sample(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        key = repr(messages)
        self._call = self._seen.get(key, 0)
        self._seen[key] = self._call + 1
        return await super().sample(messages, **kw)

    def _turn(self, _messages: Sequence[ChatMessage], _index: int) -> str:
        return "Action: move right" if self._call == 0 else "Action: move left"


@pytest.mark.parametrize(
    ("mode", "root_actions"),
    [
        ("keep", ["move right", "move right"]),
        ("merge", ["move right"]),
        ("resample", ["move right", "move left"]),
    ],
)
async def test_duplicate_samples_are_kept_merged_or_resampled(
    tmp_path: Path, mode: str, root_actions: list[str]
) -> None:
    store = await TreeStore.open(tmp_path / "t.db")
    run = await store.runs.create("r", config={}, seed=0)
    await store.labels.create_set(run.id, gamma=0.9, normalize=False)
    (task,) = await store.tasks.add_many(run.id, [TASK])
    policy = _FirstCallRepeats()
    ctx = SearchContext(
        policy=CachedPolicy(policy, store.call_cache), envs=EnvPool.around(Corridor(3))
    )
    settings = replace(SETTINGS, duplicate_actions=mode)  # type: ignore[arg-type]
    stats = await TreeExplorer(store, ctx, settings, seed=0).explore(task)
    tree = await store.trees.load(task.id)
    assert tree.root is not None
    children = sorted(tree.children(tree.root.id), key=lambda n: n.sample_index)
    assert [c.action for c in children] == root_actions
    assert stats.duplicate_samples >= 1  # the root's first call repeated itself
    if mode == "resample":
        # Every expanded node got two different actions.
        for node in tree.nodes:
            kids = tree.children(node.id)
            if len(kids) > 1:
                assert len({k.action for k in kids}) == len(kids)
    # A rerun rebuilds the same tree from the store and the call cache: no new node.
    again = await TreeExplorer(store, ctx, settings, seed=0).explore(task)
    assert again.new_nodes == 0
    await store.aclose()


class _HangsOnFirstStep(Corridor):
    """The corridor, but its first step never returns (a process killed mid-step)."""

    def __init__(self) -> None:
        super().__init__(3)
        self.stepping = asyncio.Event()

    async def step(self, action: str) -> StepResult:
        self.stepping.set()
        await asyncio.Event().wait()  # forever
        raise AssertionError("unreachable")


async def test_a_step_is_traced_before_it_is_made(tmp_path: Path) -> None:
    """A kill during a step still leaves its ``explore.step`` event, so the documented
    count of repeated work sees it (it was logged after the step returned)."""
    async with await TreeStore.open(tmp_path / "t.db") as store:
        run = await store.runs.create("r", config={}, seed=0)
        (task,) = await store.tasks.add_many(run.id, [TASK])
        env = _HangsOnFirstStep()
        policy = ScriptedPolicy(rule=_right_then_left)
        ctx = SearchContext(policy=policy, envs=EnvPool.around(env))
        with structlog.testing.capture_logs() as events:
            work = asyncio.create_task(TreeExplorer(store, ctx, SETTINGS, seed=0).explore(task))
            await env.stepping.wait()
            work.cancel()
            with pytest.raises(asyncio.CancelledError):
                await work
    steps = [e for e in events if e["event"] == "explore.step"]
    assert steps and steps[0]["task"] == TASK.key and len(steps[0]["path"]) == 1
