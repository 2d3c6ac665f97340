"""Bellman labels of valid vs invalid sibling actions in a store's exploration trees.

A child is invalid when the game answered "Unknown action" (TextWorldExpress's reply to an
action it does not know). For every pair of siblings where one is valid and one is not,
prints per label set how often the valid one is labelled higher, equal or lower.

    python scripts/studies/sibling_labels.py runs/coin-base/qlass.db
"""

from __future__ import annotations

import collections
import itertools
import sqlite3
import sys

INVALID_PREFIX = "Unknown action"


def main() -> None:
    with sqlite3.connect(sys.argv[1]) as db:
        label_sets = db.execute("select id, run_id from label_sets order by id").fetchall()
        for label_set, run in label_sets:
            q = dict(
                db.execute("select node_id, q from q_labels where label_set_id = ?", (label_set,))
            )
            children: dict[int, list[tuple[int, bool]]] = collections.defaultdict(list)
            rows = db.execute(
                "select n.id, n.parent_id, n.observation from nodes n join tasks t "
                "on t.id = n.task_id where t.run_id = ? and n.parent_id is not null",
                (run,),
            )
            for node, parent, observation in rows:
                children[parent].append((node, observation.startswith(INVALID_PREFIX)))
            counts: collections.Counter[str] = collections.Counter()
            for siblings in children.values():
                for (a, a_invalid), (b, b_invalid) in itertools.combinations(siblings, 2):
                    if a_invalid == b_invalid or a not in q or b not in q:
                        continue
                    valid, invalid = (b, a) if a_invalid else (a, b)
                    gap = q[valid] - q[invalid]
                    counts["higher" if gap > 1e-9 else "lower" if gap < -1e-9 else "equal"] += 1
            n = sum(counts.values())
            if not n:
                print(f"run {run} label set {label_set}: no valid/invalid sibling pairs")
                continue
            print(
                f"run {run} label set {label_set}: {n} valid/invalid sibling pairs; valid "
                f"labelled higher {counts['higher'] / n:.0%}, equal {counts['equal'] / n:.0%}, "
                f"lower {counts['lower'] / n:.0%}"
            )


if __name__ == "__main__":
    main()
