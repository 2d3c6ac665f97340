"""How often a simulator shows a different observation when the same actions are replayed.

Exploration revisits a tree node by resetting an env and replaying the stored actions; the
replayed observations must equal the recorded ones (the family's ``same_observation``), else
the node cannot be revisited (``ReplayMismatchError``). This plays each task's gold path in
one env, replays it in a second fresh env, and counts the tasks whose replay differs (with
the family's comparison and with plain text equality), printing the first difference of each.

    python scripts/studies/replay_drift.py scienceworld train --per-game 1 [--params easy]
"""

from __future__ import annotations

import argparse
import asyncio
import collections

from qlass.envs.registry import create_env, get_family, list_tasks


async def _observations(env, task, actions):  # type: ignore[no-untyped-def]
    await env.reset(task)
    return [(await env.step(action)).observation for action in actions]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env")
    parser.add_argument("split")
    parser.add_argument("--per-game", type=int, default=1, help="tasks per game (task type)")
    parser.add_argument("--params", default=None)
    args = parser.parse_args()
    family = get_family(args.env)
    tasks = list_tasks(args.env, args.split, params=args.params)
    per_game: collections.Counter[str] = collections.Counter()
    chosen = []
    for task in tasks:
        if per_game[task.name] < args.per_game:
            per_game[task.name] += 1
            chosen.append(task)
    recorder, replayer = create_env(args.env), create_env(args.env)
    differs = {"family comparison": 0, "text equality": 0}
    try:
        for task in chosen:
            gold = await recorder.gold_actions(task)
            recorded = await _observations(recorder, task, gold)
            replayed = await _observations(replayer, task, gold)
            pairs = list(zip(recorded, replayed, strict=True))
            exact = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
            judged = next(
                (i for i, (a, b) in enumerate(pairs) if not family.same_observation(b, a)), None
            )
            differs["text equality"] += exact is not None
            differs["family comparison"] += judged is not None
            if judged is not None:
                a, b = pairs[judged]
                print(f"{task.key}: step {judged + 1} ({gold[judged]!r}) differs")
                print(f"   recorded: {a[:160]!r}\n   replayed: {b[:160]!r}")
    finally:
        await recorder.close()
        await replayer.close()
    print(
        f"{len(chosen)} tasks ({args.env} {args.split}, {args.per_game} per game): replay "
        f"differs in {differs['family comparison']} by the family's comparison, "
        f"{differs['text equality']} by text equality"
    )


if __name__ == "__main__":
    asyncio.run(main())
