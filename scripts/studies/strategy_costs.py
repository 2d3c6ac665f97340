"""What each strategy's evaluation episodes cost, from a store: per strategy, the episodes,
the mean reward, committed steps, env steps of the nodes it executed, the tree searches'
replay bound (the replayed steps that positioning envs off the committed path cost at
most, from the trajectory's ``info``) and completion tokens, per episode.

    python scripts/studies/strategy_costs.py runs/figure3/qlass.db
"""

from __future__ import annotations

import collections
import json
import sqlite3
import sys


def main() -> None:
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True) as db:
        rows = db.execute(
            "select strategy, final_score, steps, env_steps, completion_tokens, trajectory "
            "from episodes"
        )
        for strategy, score, steps, env_steps, tokens, trajectory in rows:
            info = json.loads(trajectory).get("info", {}) if trajectory else {}
            total = totals[strategy]
            total["episodes"] += 1
            total["reward"] += score
            total["steps"] += steps
            total["env_steps"] += env_steps
            total["replay_bound"] += info.get("replay_bound", 0)
            total["tokens"] += tokens
    print(
        f"{'strategy':14} {'episodes':>8} {'reward x100':>11} {'steps/ep':>9} "
        f"{'env steps/ep':>13} {'replay bound/ep':>16} {'tokens/ep':>10}"
    )
    for strategy, total in sorted(totals.items()):
        n = total["episodes"]
        print(
            f"{strategy:14} {n:8d} {100 * total['reward'] / n:11.1f} {total['steps'] / n:9.1f} "
            f"{total['env_steps'] / n:13.1f} {total['replay_bound'] / n:16.1f} "
            f"{total['tokens'] / n:10.1f}"
        )


if __name__ == "__main__":
    main()
