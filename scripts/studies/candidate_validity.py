"""How Q-guided search chose between valid and invalid candidates, from a study's store.

For every evaluation step after the first (the first state's valid actions are not stored),
each candidate the strategy considered is valid when it is in the previous step's
valid-action list (TextWorldExpress and ScienceWorld report them). Prints, per strategy,
how often the candidates were all invalid / all valid / mixed, and in mixed steps how often
the chosen action was valid and the value gap between the best valid and best invalid one.

    python scripts/studies/candidate_validity.py runs/coin-base/qlass.db qlass:2 qlass:4
"""

from __future__ import annotations

import collections
import itertools
import json
import sqlite3
import statistics
import sys


def report(db: sqlite3.Connection, strategy: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    gaps: list[float] = []
    wrong: collections.Counter[str] = collections.Counter()
    rows = db.execute(
        "select trajectory from episodes where strategy = ? and stage like 'eval%'", (strategy,)
    )
    for (trajectory,) in rows:
        steps = json.loads(trajectory)["steps"]
        for before, step in itertools.pairwise(steps):
            valid = set(before["result"].get("valid_actions") or ())
            considered = step["considered"]
            if not valid or not considered:
                continue
            counts["steps"] += 1
            chosen = step["candidate"]["action"]
            flags = [(c["candidate"]["action"] in valid, c["value"]) for c in considered]
            n_valid = sum(ok for ok, _ in flags)
            counts["chosen_valid"] += chosen in valid
            kind = (
                "all_invalid" if not n_valid else "all_valid" if n_valid == len(flags) else "mixed"
            )
            counts[kind] += 1
            if kind == "mixed":
                counts["mixed_chosen_valid"] += chosen in valid
                best_valid = max(v for ok, v in flags if ok)
                best_invalid = max(v for ok, v in flags if not ok)
                gaps.append(best_valid - best_invalid)
                if chosen not in valid:
                    wrong[chosen] += 1
    n = counts["steps"]
    if not n:
        print(f"{strategy}: no steps with considered candidates")
        return
    print(
        f"{strategy}: {n} steps; chosen valid {counts['chosen_valid'] / n:.1%}; candidates all "
        f"invalid {counts['all_invalid'] / n:.1%}, all valid {counts['all_valid'] / n:.1%}, "
        f"mixed {counts['mixed'] / n:.1%}"
    )
    if gaps:
        print(
            f"  mixed: valid chosen {counts['mixed_chosen_valid'] / counts['mixed']:.1%}; "
            f"value(best valid) - value(best invalid) median {statistics.median(gaps):+.4f}; "
            f"invalid actions chosen: {wrong.most_common(5)}"
        )


def main() -> None:
    store, *strategies = sys.argv[1:]
    with sqlite3.connect(store) as db:
        for strategy in strategies or ["qlass:2", "qlass:4"]:
            report(db, strategy)


if __name__ == "__main__":
    main()
