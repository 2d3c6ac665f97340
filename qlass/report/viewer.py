"""A static HTML viewer of a run's exploration trees: one self-contained file (inline CSS,
a few lines of inline JS for the expand/collapse-all buttons), opened from disk with no
server.

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

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from qlass.errors import UnknownNameError
from qlass.qnet.base import ValueModel
from qlass.report.scoring import node_queries, score_queries
from qlass.runtime.progress import Progress
from qlass.storage import LabelSetRecord, NodeRecord, Tree, TreeStore

__all__ = [
    "TreeView",
    "add_qnet_scores",
    "chosen_path",
    "load_tree_views",
    "render_tree",
    "render_viewer",
    "select_nodes",
]

OBSERVATION_PREVIEW = 400
"""Characters of an observation shown before "full observation" must be opened."""
MAX_TEXT = 20_000
"""Characters of any one text put in the page at most (the rest is cut, and says so)."""


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


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters not shown)"


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _action_label(node: NodeRecord) -> str:
    if node.parent_id is None:
        return '<span class="action root">start (after reset)</span>'
    if node.status == "failed":
        return '<span class="action failed">step failed</span>'
    if node.action is None or node.status == "invalid":
        return '<span class="action invalid">invalid output</span>'
    short = node.action if len(node.action) <= 160 else node.action[:160] + "…"
    return f'<span class="action">{_e(short)}</span>'


def _summary(view: TreeView, node: NodeRecord, kids: int) -> str:
    parts = [f'<span class="depth">d{node.depth}</span>', _action_label(node)]
    if node.id in view.q:
        parts.append(
            f'<span class="q" title="Q label: raw / normalised per tree">Q '
            f'<span class="q-raw">{_num(view.q[node.id])}</span> / '
            f'<span class="q-norm">{_num(view.q_normalized.get(node.id))}</span></span>'
        )
    else:
        parts.append('<span class="q none" title="no Q label">Q –</span>')
    if node.id in view.qnet:
        parts.append(f'<span class="qnet">QNet {_num(view.qnet[node.id])}</span>')
    if node.final_reward is not None:
        mark = " ✓" if node.success else ""
        parts.append(f'<span class="final">final {_num(node.final_reward, 3)}{mark}</span>')
    if kids:
        parts.append(f'<span class="kids">{kids} child{"ren" if kids > 1 else ""}</span>')
    return " ".join(parts)


def _facts(node: NodeRecord) -> str:
    facts = [
        ("node", f"#{node.id}"),
        ("depth", str(node.depth)),
        ("step reward", _num(node.reward, 3)),
        ("score so far", _num(node.score, 3)),
        ("final reward", _num(node.final_reward, 3)),
        ("done / success", f"{'yes' if node.done else 'no'} / {'yes' if node.success else 'no'}"),
        ("status", node.status),
    ]
    if node.parent_id is not None:
        facts.append(
            ("tokens (prompt / completion)", f"{node.prompt_tokens} / {node.completion_tokens}")
        )
        facts.append(("sample", str(node.sample_index)))
    cells = "".join(f'<span class="fact"><i>{_e(k)}</i> {_e(v)}</span>' for k, v in facts)
    return f'<div class="facts">{cells}</div>'


def _observation(text: str) -> str:
    if len(text) <= OBSERVATION_PREVIEW:
        return f'<div class="observation"><div class="label">observation</div><pre>{_e(text)}</pre></div>'
    preview = text[:OBSERVATION_PREVIEW] + " …"
    return (
        '<div class="observation"><div class="label">observation</div>'
        f"<pre>{_e(preview)}</pre>"
        f'<details class="more"><summary>full observation ({len(text)} characters)</summary>'
        f"<pre>{_e(_cut(text))}</pre></details></div>"
    )


def _node_open(view: TreeView, node: NodeRecord, kids: int) -> str:
    on_path = node.id in view.chosen
    classes = "node on-path" if on_path else "node"
    if node.final_reward is not None:
        classes += " leaf"
    attributes = [
        f'class="{classes}"',
        f'id="node-{node.id}"',
        f'data-node-id="{node.id}"',
        f'data-depth="{node.depth}"',
    ]
    if node.id in view.q:
        attributes.append(f'data-q="{view.q[node.id]!r}"')
    if node.id in view.q_normalized:
        attributes.append(f'data-q-norm="{view.q_normalized[node.id]!r}"')
    if on_path:
        attributes.append("open")
    body = [_facts(node)]
    if node.parent_id is not None and node.text:
        body.append(
            f'<div class="model-text"><div class="label">model output</div>'
            f"<pre>{_e(_cut(node.text))}</pre></div>"
        )
    if node.error:
        body.append(f'<div class="error">{_e(_cut(node.error, 2000))}</div>')
    body.append(_observation(node.observation))
    return (
        f"<details {' '.join(attributes)}><summary>{_summary(view, node, kids)}</summary>"
        f'<div class="body">{"".join(body)}<div class="children">'
    )


def _node_close(hidden_children: int) -> str:
    note = (
        f'<p class="hidden-note">{hidden_children} more child node(s) not shown (node cap)</p>'
        if hidden_children
        else ""
    )
    return f"</div>{note}</div></details>"


def render_tree(view: TreeView) -> str:
    """The nested ``<details>`` of one tree (iterative: deep trees need no recursion)."""
    root = view.tree.root
    if root is None:
        return ""
    out: list[str] = []
    stack: list[tuple[bool, int | str]] = [(True, root.id)]
    while stack:
        is_node, item = stack.pop()
        if not is_node:
            out.append(str(item))
            continue
        node = view.tree.by_id[int(item)]
        children = view.tree.children(node.id)
        kept = [child for child in children if child.id in view.shown]
        out.append(_node_open(view, node, len(children)))
        stack.append((False, _node_close(len(children) - len(kept))))
        stack.extend((True, child.id) for child in reversed(kept))
    return "".join(out)


def _tree_section(view: TreeView) -> str:
    tree = view.tree
    leaves = [n for n in tree.nodes if n.final_reward is not None]
    best = max((n.final_reward for n in leaves if n.final_reward is not None), default=None)
    section_id = f"tree-{tree.task.id}"
    stats = (
        f"{len(tree.nodes)} nodes, {len(leaves)} finished leaves, best final reward "
        f"{_num(best, 3)}, chosen path of {len(view.chosen)} nodes"
    )
    if view.hidden:
        stats += f"; {view.hidden} nodes not shown (node cap)"
    buttons = "".join(
        f'<button type="button" data-expand="{mode}" data-target="{section_id}">{label}</button>'
        for mode, label in (
            ("all", "expand all"),
            ("path", "chosen path only"),
            ("none", "collapse all"),
        )
    )
    return (
        f'<section class="tree" id="{section_id}" data-task-key="{_e(tree.task.key)}">'
        f"<h2>{_e(tree.task.key)}</h2>"
        f'<p class="instruction">{_e(_cut(tree.task.instruction, 4000))}</p>'
        f'<p class="stats">{_e(stats)}</p><div class="buttons">{buttons}</div>'
        f"{render_tree(view)}</section>"
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
header h1{margin:0 0 6px;font-size:20px}
.meta,.legend{margin:4px 0;color:#444}
.notices{margin:8px 0;padding:8px 12px;background:#fff7e0;border:1px solid #f0d58c;border-radius:4px}
.notices li{margin:2px 0}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;padding:8px 24px;background:#f2f2f2;border-bottom:1px solid #ddd;font-size:13px}
nav a{overflow-wrap:anywhere}
main{padding:8px 24px 40px}
section.tree{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 16px 16px;margin:16px 0}
section.tree h2{font-size:16px;margin:8px 0 4px;font-family:ui-monospace,monospace}
.instruction{margin:4px 0;color:#333}
.stats{margin:4px 0;color:#666;font-size:13px}
.buttons button{margin:4px 6px 8px 0;font-size:12px}
details.node{margin:2px 0 2px 0;padding-left:10px;border-left:2px solid #e2e2e2}
details.node>summary{cursor:pointer;padding:2px 4px;border-radius:3px;list-style-position:outside}
details.node>summary:hover{background:#f0f4ff}
details.node.on-path{border-left-color:#e0a800}
details.node.on-path>summary{background:#fff1b8;font-weight:600}
.depth{display:inline-block;min-width:2.2em;color:#888;font-family:ui-monospace,monospace;font-size:12px}
.action{font-family:ui-monospace,monospace}
.action.invalid,.action.failed{color:#b00020;font-style:italic}
.action.root{color:#555;font-style:italic}
.q,.qnet,.final,.kids{margin-left:10px;font-size:12px;padding:0 5px;border-radius:3px}
.q{background:#e8f0fe;color:#1a4b9c}.q.none{background:#eee;color:#777}
.qnet{background:#fde7e9;color:#9c1a2b}.final{background:#e6f4ea;color:#1e6b34}
.kids{color:#777}
.body{margin:2px 0 6px 6px;padding:4px 8px;border-left:1px dashed #ccc}
.facts{display:flex;flex-wrap:wrap;gap:2px 16px;margin:4px 0;font-size:12px;color:#333}
.fact i{font-style:normal;color:#888}
.label{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:#888;margin-top:4px}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;padding:4px 6px;background:#f6f6f6;border-radius:3px;font-size:12px}
.error{color:#b00020;font-size:12px;margin:4px 0}
.hidden-note{color:#a06000;font-size:12px;margin:4px 0}
details.more>summary{font-size:12px;color:#1a4b9c;cursor:pointer}
"""

_JS = """
document.addEventListener('click', function (event) {
  var button = event.target.closest('button[data-expand]');
  if (!button) return;
  var mode = button.getAttribute('data-expand');
  var section = document.getElementById(button.getAttribute('data-target'));
  section.querySelectorAll('details.node').forEach(function (node) {
    node.open = mode === 'all' || (mode === 'path' && node.classList.contains('on-path'));
  });
});
"""


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
    notice = ""
    if notes:
        notice = '<ul class="notices">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
    nav = "".join(
        f'<a href="#tree-{view.tree.task.id}">{_e(view.tree.task.key)}</a>' for view in views
    )
    body = "".join(_tree_section(view) for view in views) or "<p>No exploration trees stored.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qlass trees: {_e(run_name)}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>Exploration trees of run <code>{_e(run_name)}</code></h1>
<p class="meta">{len(views)} tree(s). {_e(labels)}. {_e(qnet_note)}. Generated {when}.</p>
<p class="legend">Highlighted: the <b>chosen path</b>, from the root following at each node the
child with the highest Q label (the first on ties) until no child is labelled; its nodes are
open. Click a node to expand or collapse it.</p>
{notice}</header>
<nav>{nav}</nav>
<main>{body}</main>
<script>{_JS}</script>
</body></html>
"""
