"""How well each seed's QNet picks among the candidates the search meets, judged by rollouts.

``rollout_oracle:M`` episodes store, for every step, the policy's candidates and each one's
value by sampled rollouts to the true reward. This scores the same (history, candidate)
pairs with the run's own QNet and prints, per run:

- pairs: candidate pairs of one step whose rollout values differ;
- agreement: the share of those the QNet orders as the rollouts do (0.5: chance), over all
  pairs and split by how many of the two actions are valid
  (valid = in the env's valid-action list of the state, where the env reports one; the
  first state's is not stored, so its pairs count only in "all");
- valid preferred: in the mixed pairs, how often the rollouts / the QNet rank the valid
  action higher;
- arg-max agreement: steps where the QNet would execute the rollouts' best candidate;
- regret: the rollout value of the rollouts' best minus that of the QNet's pick, mean over
  steps (0: the QNet chooses as well as the oracle);
- spread: the median gap of the QNet's values among one step's candidates against the
  median gap of their rollout values.

Run from the folder the study ran in (the QNet of run NAME-seedK is read from its
``run_dir``/qnet, or from ``QNET_ROOT``/seedK/qnet when given):

    python scripts/studies/oracle_agreement.py runs/diag/qlass.db rollout_oracle:2 [QNET_ROOT]
"""

from __future__ import annotations

import collections
import itertools
import json
import sqlite3
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from qlass._log import configure_logging
from qlass.qnet.base import ValueQuery
from qlass.qnet.scorer import QNetScorer
from qlass.storage.episodes import trajectory_from_json
from qlass.types import History, Turn


@dataclass(frozen=True)
class _Step:
    queries: list[ValueQuery]
    oracle: list[float]
    valid: list[bool | None]


def _steps(trajectory_json: str) -> list[_Step]:
    """Per step with two or more distinct valued candidates: queries, values, validity."""
    trajectory = trajectory_from_json(json.loads(trajectory_json))
    history = History(trajectory.instruction, trajectory.initial_observation)
    valid_actions: tuple[str, ...] | None = None
    out = []
    for step in trajectory.steps:
        valued: dict[str, tuple[float, str | None]] = {}
        for scored in step.considered:
            if scored.value is not None:
                valued[scored.candidate.text] = (scored.value, scored.candidate.action)
        if len(valued) >= 2:
            out.append(
                _Step(
                    [ValueQuery(history, text) for text in valued],
                    [value for value, _ in valued.values()],
                    [
                        None if valid_actions is None else action in valid_actions
                        for _, action in valued.values()
                    ],
                )
            )
        candidate = step.candidate
        history = history.extend(Turn(candidate.text, candidate.action, step.result.observation))
        valid_actions = step.result.valid_actions
    return out


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.2f} of {whole}" if whole else "n/a"


def report(db: sqlite3.Connection, strategy: str, qnet_root: Path | None) -> None:
    runs = db.execute("select id, name, config, seed from runs order by name").fetchall()
    for run_id, name, config, seed in runs:
        rows = db.execute(
            "select trajectory from episodes where run_id = ? and strategy = ?",
            (run_id, strategy),
        ).fetchall()
        steps = [s for (trajectory,) in rows for s in _steps(trajectory)]
        if not steps:
            continue
        if qnet_root is None:
            qnet_dir = Path(json.loads(config)["run_dir"]) / "qnet"
        else:
            qnet_dir = qnet_root / f"seed{seed}" / "qnet"
        scorer = QNetScorer.from_pretrained(qnet_dir)
        counts: collections.Counter[str] = collections.Counter()
        regrets: list[float] = []
        qnet_gaps: list[float] = []
        oracle_gaps: list[float] = []
        for step in steps:
            predicted, oracle = scorer.score_batch(step.queries), step.oracle
            for i, j in itertools.combinations(range(len(oracle)), 2):
                qnet_gaps.append(abs(predicted[i] - predicted[j]))
                oracle_gaps.append(abs(oracle[i] - oracle[j]))
                kinds = ["all"]
                valid_i, valid_j = step.valid[i], step.valid[j]
                if valid_i is not None and valid_j is not None:
                    kinds.append({2: "valid", 1: "mixed", 0: "invalid"}[valid_i + valid_j])
                    if valid_i != valid_j:
                        sign = 1 if valid_i else -1  # valid minus invalid
                        counts["one_valid"] += 1
                        counts["oracle_prefers_valid"] += sign * (oracle[i] - oracle[j]) > 0
                        counts["qnet_prefers_valid"] += sign * (predicted[i] - predicted[j]) > 0
                if oracle[i] == oracle[j]:
                    continue
                agree = (predicted[i] - predicted[j]) * (oracle[i] - oracle[j]) > 0
                for kind in kinds:
                    counts[f"{kind}_pairs"] += 1
                    counts[f"{kind}_agree"] += agree
            pick = max(range(len(predicted)), key=lambda k: (predicted[k], -k))
            counts["argmax_agree"] += oracle[pick] == max(oracle)
            regrets.append(max(oracle) - oracle[pick])
        mixed = counts["one_valid"]
        print(
            f"{name} {strategy} ({len(steps)} steps with 2+ candidates)\n"
            f"  agreement with the rollouts' order: all {_share(counts['all_agree'], counts['all_pairs'])}"
            f", both valid {_share(counts['valid_agree'], counts['valid_pairs'])}"
            f", one valid {_share(counts['mixed_agree'], counts['mixed_pairs'])}"
            f", both invalid {_share(counts['invalid_agree'], counts['invalid_pairs'])} pairs"
            f" (with different rollout values)\n"
            f"  one valid: valid ranked higher by the rollouts {_share(counts['oracle_prefers_valid'], mixed)}"
            f", by the QNet {_share(counts['qnet_prefers_valid'], mixed)} pairs\n"
            f"  arg-max agreement {counts['argmax_agree'] / len(steps):.2f}; "
            f"regret {statistics.fmean(regrets):.3f}; median gap: QNet "
            f"{statistics.median(qnet_gaps):.4f} vs rollouts {statistics.median(oracle_gaps):.4f}"
        )


def main() -> None:
    store, strategy, *rest = sys.argv[1:]
    configure_logging(level="WARNING")
    with sqlite3.connect(store) as db:
        report(db, strategy, Path(rest[0]) if rest else None)


if __name__ == "__main__":
    main()
