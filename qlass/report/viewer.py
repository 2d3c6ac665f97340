"""A static HTML viewer of a run's exploration trees: one self-contained file (inline CSS,
a few lines of inline JS for the expand/collapse-all buttons), opened from disk with no
server. The page is the Jinja2 template ``templates/trees.html`` (autoescaped).

Each tree is nested ``<details>``/``<summary>`` elements, so nodes expand and collapse
natively. A node shows its depth, action (or "invalid output" and the raw model text),
observation, step reward and score, final reward if it is a finished leaf, its Q label
(raw and normalised per tree) from the run's label set, and the QNet's score when one was
computed.

The **chosen path** starts at the root and, at every node, follows the child with the
highest Q label (the first such child on ties), until a node has no labelled child. It is
the path a greedy policy on the true Q labels would take; its nodes are open by default and
carry the CSS class ``on-path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from qlass.errors import UnknownNameError
from qlass.qnet.base import ValueModel
from qlass.report.scoring import node_queries, score_queries
from qlass.report.templating import number, render_page
from qlass.runtime.progress import Progress
from qlass.storage import LabelSetRecord, NodeRecord, TaskRecord, Tree, TreeStore

__all__ = [
    "TreeView",
    "add_qnet_scores",
    "chosen_path",
    "load_tree_views",
    "render_viewer",
    "select_nodes",
    "tree_items",
]

OBSERVATION_PREVIEW = 400
"""Characters of an observation shown before "full observation" must be opened."""


@dataclass(frozen=True)
class TreeView:
    """One task's tree with what the page shows beside the nodes.

    ``q`` holds raw Q labels and ``q_normalized`` the per-tree min-max normalised ones
    (both by node id, labelled nodes only); ``qnet`` the QNet's scores of shown nodes;
    ``chosen`` the chosen path; ``shown`` the node ids rendered (all of them unless the
    tree is larger than the node cap).
    """

    tree: Tree
    q: Mapping[int, float] = field(default_factory=dict)
    q_normalized: Mapping[int, float] = field(default_factory=dict)
    qnet: Mapping[int, float] = field(default_factory=dict)
    chosen: tuple[int, ...] = ()
    shown: frozenset[int] = frozenset()

    @property
    def hidden(self) -> int:
        return len(self.tree.nodes) - len(self.shown)


def chosen_path(tree: Tree, q: Mapping[int, float]) -> tuple[int, ...]:
    """Root, then at each node its highest-Q child (first on ties) while one is labelled."""
    root = tree.root
    if root is None:
        return ()
    path = [root.id]
    current = root
    while True:
        labelled = [child for child in tree.children(current.id) if child.id in q]
        if not labelled:
            return tuple(path)
        best = max(q[child.id] for child in labelled)
        current = next(child for child in labelled if q[child.id] == best)
        path.append(current.id)


def select_nodes(tree: Tree, chosen: Sequence[int], max_nodes: int) -> frozenset[int]:
    """The nodes to render: all of them, or (over ``max_nodes``) the chosen path and then
    the shallowest nodes whose parent is kept, until the cap is reached."""
    if len(tree.nodes) <= max_nodes:
        return frozenset(node.id for node in tree.nodes)
    keep = set(chosen)
    for node in sorted(tree.nodes, key=lambda n: (n.depth, n.id)):
        if len(keep) >= max_nodes:
            break
        if node.parent_id is None or node.parent_id in keep:
            keep.add(node.id)
    return frozenset(keep)


async def load_tree_views(
    store: TreeStore,
    run_id: int,
    *,
    label_set: LabelSetRecord | None,
    task_key: str | None = None,
    max_trees: int = 100,
    max_nodes: int = 2000,
) -> tuple[list[TreeView], list[str]]:
    """The run's non-empty trees (or the one of ``task_key``) with their Q labels, plus
    notes on what the caps left out.

    Raises:
        UnknownNameError: ``task_key`` is not a task of the run.
    """
    tasks = await store.tasks.of_run(run_id)
    if task_key is not None:
        tasks = [task for task in tasks if task.key == task_key]
        if not tasks:
            known = [t.key for t in await store.tasks.of_run(run_id)]
            listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
            raise UnknownNameError(f"no task {task_key!r} in this run (tasks: {listed or 'none'})")
    notes: list[str] = []
    views: list[TreeView] = []
    for position, task in enumerate(tasks):
        if len(views) >= max_trees:
            # Not loaded: a task that left 'pending' has (at least the root of) a tree.
            rest = sum(1 for t in tasks[position:] if t.status != "pending")
            if rest:
                notes.insert(
                    0,
                    f"{len(views)} trees shown (tree cap {max_trees}); "
                    f"{rest} more explored tasks not shown",
                )
            break
        tree = await store.trees.load(task.id)
        if not tree.nodes:
            continue
        q: dict[int, float] = {}
        normalized: dict[int, float] = {}
        if label_set is not None:
            q = await store.labels.values(label_set.id, task.id, normalized=False)
            normalized = await store.labels.values(label_set.id, task.id, normalized=True)
        chosen = chosen_path(tree, q)
        shown = select_nodes(tree, chosen, max_nodes)
        views.append(TreeView(tree, q, normalized, {}, chosen, shown))
        if len(shown) < len(tree.nodes):
            notes.append(
                f"{task.key}: {len(shown)} of {len(tree.nodes)} nodes shown "
                f"(node cap {max_nodes}; the chosen path is always shown)"
            )
    return views, notes


async def add_qnet_scores(
    views: Sequence[TreeView], model: ValueModel, *, progress: Progress | None = None
) -> list[TreeView]:
    """The views with the QNet's score of every shown non-root node (one batched pass)."""
    keys: list[tuple[int, int]] = []
    queries = []
    for index, view in enumerate(views):
        for node_id, query in node_queries(view.tree, sorted(view.shown)).items():
            keys.append((index, node_id))
            queries.append(query)
    scores = await score_queries(model, queries, progress=progress, description="QNet on nodes")
    per_view: list[dict[int, float]] = [{} for _ in views]
    for (index, node_id), score in zip(keys, scores, strict=True):
        per_view[index][node_id] = score
    return [replace(view, qnet=found) for view, found in zip(views, per_view, strict=True)]


# -- HTML -------------------------------------------------------------------------------


def tree_items(view: TreeView) -> list[tuple[NodeRecord | None, int]]:
    """The shown nodes of a tree in page order, flattened so that the template needs no
    recursion (deep trees would exhaust Python's stack): ``(node, children)`` opens a node
    that has ``children`` children in the tree, ``(None, hidden)`` closes the last open node,
    ``hidden`` of whose children the node cap left out."""
    root = view.tree.root
    if root is None:
        return []
    items: list[tuple[NodeRecord | None, int]] = []
    stack: list[tuple[NodeRecord | None, int]] = [(root, 0)]
    while stack:
        node, count = stack.pop()
        if node is None:
            items.append((None, count))
            continue
        children = view.tree.children(node.id)
        kept = [child for child in children if child.id in view.shown]
        items.append((node, len(children)))
        stack.append((None, len(children) - len(kept)))
        stack.extend((child, 0) for child in reversed(kept))
    return items


@dataclass(frozen=True)
class _TreeSection:
    """What the template shows of one tree."""

    view: TreeView
    stats: str
    nodes: list[tuple[NodeRecord | None, int]]

    @property
    def task(self) -> TaskRecord:
        return self.view.tree.task

    @property
    def section_id(self) -> str:
        return f"tree-{self.task.id}"


def _tree_section(view: TreeView) -> _TreeSection:
    tree = view.tree
    leaves = [n for n in tree.nodes if n.final_reward is not None]
    best = max((n.final_reward for n in leaves if n.final_reward is not None), default=None)
    stats = (
        f"{len(tree.nodes)} nodes, {len(leaves)} finished leaves, best final reward "
        f"{number(best, 3)}, chosen path of {len(view.chosen)} nodes"
    )
    if view.hidden:
        stats += f"; {view.hidden} nodes not shown (node cap)"
    return _TreeSection(view, stats, tree_items(view))


def render_viewer(
    run_name: str,
    views: Sequence[TreeView],
    *,
    label_set: LabelSetRecord | None,
    qnet_note: str,
    notes: Sequence[str] = (),
    generated_at: datetime | None = None,
) -> str:
    """The whole page. ``qnet_note`` says where the QNet scores come from (or why none)."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    if label_set is None:
        labels = "no Q-label set in this run: nodes show no Q labels"
    else:
        labels = (
            f"Q labels from label set #{label_set.id} (gamma {label_set.gamma}, intermediate "
            f"reward {label_set.intermediate_reward}), shown raw / min-max normalised per tree"
        )
    return render_page(
        "trees.html",
        run_name=run_name,
        trees=[_tree_section(view) for view in views],
        labels=labels,
        qnet_note=qnet_note,
        notes=list(notes),
        generated=when,
        preview=OBSERVATION_PREVIEW,
    )
