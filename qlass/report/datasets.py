"""A run's data as Hugging Face datasets (parquet), for people who train elsewhere (trl, ...).

``export_datasets`` writes into ``<run folder>/datasets/`` (or ``out_dir``):

- ``expert.parquet``: the expert trajectories behaviour cloning trained on (the run's
  ``expert.jsonl`` with the run's system prompt, as BC swaps it in), one conversation per
  row in the chat ``messages`` format trl's ``SFTTrainer`` reads, with the task and its
  final score;
- ``triples.parquet``: the Q-labelled (state, candidate, Q) triples the QNet trains on,
  exactly as ``train_qnet`` exports them (:func:`qlass.storage.export.export_triples`, the
  run's label set, ``labels.max_triples_per_tree`` and seed), with the state both as fields
  (instruction, first observation, turns) and as the chat ``messages`` the QNet scores;
- ``episodes.parquet``: every stored evaluation (and self-training) episode with its stage,
  strategy, outcome, cost, every step with the candidates the search considered and their
  values, and the whole episode as chat ``messages`` with the run's system prompt (the
  policy itself saw only the last ``policy.max_turns_in_prompt`` turns when that is set);
- ``README.md``: a dataset card naming the columns, with a ``configs`` header so that
  ``datasets.load_dataset(<folder>, "triples")`` works as well as
  ``load_dataset("parquet", data_files=...)``.

Needs the optional ``datasets`` package (``pip install 'qlass[datasets]'``). Building the
rows reads the store; converting and writing them (pyarrow) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from qlass.chat import policy_messages, value_messages
from qlass.config import RunConfig
from qlass.errors import ConfigError, MissingDependencyError, UnknownNameError
from qlass.report.data import episode_trajectory, pick_label_set, stored_config
from qlass.storage import EpisodeRecord, LabelSetRecord, TreeStore
from qlass.types import LabelledStep

__all__ = ["DATASETS", "ExportResult", "export_datasets", "load_datasets_module"]

log = structlog.get_logger(__name__)

DATASETS = ("expert", "triples", "episodes")
"""The datasets :func:`export_datasets` writes, each as ``<name>.parquet``."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_datasets` wrote: a parquet file and a row count per dataset."""

    directory: Path
    files: Mapping[str, Path]
    rows: Mapping[str, int]
    label_set_id: int | None = None
    notes: tuple[str, ...] = field(default=())


def load_datasets_module() -> ModuleType:
    """The ``datasets`` package.

    Raises:
        MissingDependencyError: it is not installed.
    """
    try:
        return importlib.import_module("datasets")
    except ImportError as exc:
        raise MissingDependencyError("datasets", "datasets", "qlass export") from exc


def _features(datasets: ModuleType) -> dict[str, Any]:
    """The column types of each dataset (explicit, so every export has the same schema,
    whatever its rows hold)."""
    value = datasets.Value
    messages = [{"role": value("string"), "content": value("string")}]
    task = {
        "task_key": value("string"),
        "env": value("string"),
        "task_name": value("string"),
        "variation": value("int64"),
        "split": value("string"),
        "params": value("string"),
    }
    candidate = {"text": value("string"), "action": value("string"), "value": value("float64")}
    step = {
        "text": value("string"),
        "action": value("string"),
        "thought": value("string"),
        "value": value("float64"),
        "candidates": [candidate],
        "observation": value("string"),
        "reward": value("float64"),
        "score": value("float64"),
        "done": value("bool"),
        "success": value("bool"),
    }
    return {
        "expert": datasets.Features(
            {
                **task,
                "messages": messages,
                "final_score": value("float64"),
                "success": value("bool"),
                "steps": value("int64"),
            }
        ),
        "triples": datasets.Features(
            {
                "tree_id": value("int64"),
                "task_key": value("string"),
                "instruction": value("string"),
                "initial_observation": value("string"),
                "turns": [
                    {
                        "text": value("string"),
                        "action": value("string"),
                        "observation": value("string"),
                    }
                ],
                "candidate_text": value("string"),
                "q": value("float64"),
                "messages": messages,
            }
        ),
        "episodes": datasets.Features(
            {
                "episode_id": value("int64"),
                "stage": value("string"),
                "strategy": value("string"),
                **task,
                "final_score": value("float64"),
                "success": value("bool"),
                "num_steps": value("int64"),
                "prompt_tokens": value("int64"),
                "completion_tokens": value("int64"),
                "cost_usd": value("float64"),
                "env_steps": value("int64"),
                "wall_time_s": value("float64"),
                "instruction": value("string"),
                "initial_observation": value("string"),
                "steps": [step],
                "info": value("string"),
                "messages": messages,
            }
        ),
    }


def _read_expert(path: Path, system_prompt: str | None) -> list[dict[str, Any]]:
    """The expert file's conversations with the run's system prompt in place of the file's,
    as behaviour cloning trains on them (``qlass.runtime.bc`` swaps it the same way)."""
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                task = record["task"]
                rows.append(
                    {
                        "task_key": task["key"],
                        "env": task["env"],
                        "task_name": task["name"],
                        "variation": task["variation"],
                        "split": task["split"],
                        "params": task.get("params") or "",
                        "messages": head
                        + [
                            {"role": m["role"], "content": m["content"]}
                            for m in record["messages"]
                            if m["role"] != "system"
                        ],
                        "final_score": record["final_score"],
                        "success": record["success"],
                        "steps": record["steps"],
                    }
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not an expert-trajectory record") from exc
    return rows


def _triple_row(triple: LabelledStep) -> dict[str, Any]:
    history = triple.history
    return {
        "tree_id": triple.tree_id,
        "task_key": triple.task_key,
        "instruction": history.instruction,
        "initial_observation": history.initial_observation,
        "turns": [
            {"text": t.text, "action": t.action, "observation": t.observation}
            for t in history.turns
        ],
        "candidate_text": triple.candidate_text,
        "q": triple.q,
        "messages": list(value_messages(history, triple.candidate_text)),
    }


def _episode_row(record: EpisodeRecord, system_prompt: str | None) -> dict[str, Any]:
    trajectory = episode_trajectory(record)
    task = trajectory.task
    return {
        "episode_id": record.id,
        "stage": record.stage,
        "strategy": record.strategy,
        "task_key": task.key,
        "env": task.env,
        "task_name": task.name,
        "variation": task.variation,
        "split": task.split,
        "params": task.params,
        "final_score": trajectory.final_score,
        "success": trajectory.success,
        "num_steps": len(trajectory.steps),
        "prompt_tokens": trajectory.usage.prompt_tokens,
        "completion_tokens": trajectory.usage.completion_tokens,
        "cost_usd": trajectory.usage.cost_usd,
        "env_steps": trajectory.env_steps,
        "wall_time_s": trajectory.wall_time_s,
        "instruction": trajectory.instruction,
        "initial_observation": trajectory.initial_observation,
        "steps": [
            {
                "text": step.candidate.text,
                "action": step.candidate.action,
                "thought": step.candidate.thought,
                "value": step.value,
                "candidates": [
                    {"text": c.candidate.text, "action": c.candidate.action, "value": c.value}
                    for c in step.considered
                ],
                "observation": step.result.observation,
                "reward": step.result.reward,
                "score": step.result.score,
                "done": step.result.done,
                "success": step.result.success,
            }
            for step in trajectory.steps
        ],
        "info": json.dumps(dict(trajectory.info), default=str),
        "messages": list(policy_messages(trajectory.history, system_prompt)),
    }


def _system_prompt(config: RunConfig, notes: list[str]) -> str | None:
    """The policy's system prompt in this run (the pipeline's, from the same resolver)."""
    from qlass.runtime.resources import run_system_prompt

    try:
        return run_system_prompt(config)
    except UnknownNameError:
        notes.append(f"no prompt for env {config.env.name!r}: the messages have no system")
        return None


_CARD = """---
configs:
{configs}
---
# qlass run `{run}`: datasets

Written by `qlass export {run}` from the run's tree store. Load one with

```python
from datasets import load_dataset
triples = load_dataset("parquet", data_files="{directory}/triples.parquet", split="train")
# or, reading the configs above: load_dataset("{directory}", "triples", split="train")
```

{sections}
"""

_SECTIONS = {
    "expert": "Expert trajectories behaviour cloning trained on: `messages` (the run's system "
    "prompt if it has one, user task + first observation, then assistant `Action: ...` / user "
    "`Observation: ...`), task "
    "fields, `final_score`, `success`, `steps`. For trl's SFTTrainer.",
    "triples": "QNet training triples of label set #{label_set} (gamma {gamma}, "
    "normalised per tree: {normalize}): the state (`instruction`, `initial_observation`, "
    "`turns`), the candidate turn (`candidate_text`) and its Q label `q`; `messages` is what "
    "the QNet scores (task, history, candidate as the last assistant message, no system "
    "prompt; qlass's QNet reads the last `qnet.max_turns` turns of it).",
    "episodes": "Stored episodes of every stage (`stage`: `eval:<split>:<fingerprint>`, "
    "`self_train:<k>:...`): strategy, outcome (`final_score`, `success`), cost, and `steps` "
    "with the executed turn, its value, the `candidates` the search considered with their "
    "values, and the environment's answer; `info` is the strategy's JSON (Best-of-N: each "
    "rollout's value and true score); `messages` is the whole episode with the run's "
    "system prompt.",
}


def _card(
    run: str, directory: Path, rows: Mapping[str, int], label_set: LabelSetRecord | None
) -> str:
    names = [name for name in DATASETS if name in rows]
    configs = "\n".join(
        f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}.parquet"
        for name in names
    )
    sections = []
    for name in names:
        text = _SECTIONS[name]
        if name == "triples" and label_set is not None:
            text = text.format(
                label_set=label_set.id, gamma=label_set.gamma, normalize=label_set.normalize
            )
        sections.append(f"## {name} ({rows[name]} rows)\n\n{text}")
    return _CARD.format(
        configs=configs, run=run, directory=directory, sections="\n\n".join(sections)
    )


def _write(
    directory: Path,
    tables: Mapping[str, list[dict[str, Any]]],
    card: str,
) -> dict[str, Path]:
    datasets = load_datasets_module()
    features = _features(datasets)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in tables.items():
        path = directory / f"{name}.parquet"
        datasets.Dataset.from_list(rows, features=features[name]).to_parquet(str(path))
        files[name] = path
    (directory / "README.md").write_text(card, encoding="utf-8")
    return files


async def export_datasets(
    store: TreeStore,
    run: str | int,
    *,
    out_dir: Path | None = None,
    label_set_id: int | None = None,
    max_triples_per_tree: int | None = None,
) -> ExportResult:
    """Write the run's expert trajectories, Q-labelled triples and episodes as parquet
    datasets (see the module docstring) and return where.

    Args:
        out_dir: default ``<run folder>/datasets``.
        label_set_id: the label set of the triples (default: the run config's).
        max_triples_per_tree: default the run's ``labels.max_triples_per_tree`` (what
            QNet training used).

    Raises:
        MissingDependencyError: ``datasets`` is not installed (checked before any work).
        UnknownNameError: no such run or label set.
    """
    await asyncio.to_thread(load_datasets_module)  # a clear error first; imports read files
    record = await store.runs.get(run)
    config = stored_config(record)
    directory = out_dir if out_dir is not None else config.directory / "datasets"
    notes: list[str] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    system = await asyncio.to_thread(_system_prompt, config, notes)

    expert_file = config.bc.expert_file or config.directory / "expert.jsonl"
    if await asyncio.to_thread(expert_file.exists):
        tables["expert"] = await asyncio.to_thread(_read_expert, expert_file, system)
    else:
        notes.append(f"no expert trajectories at {expert_file}: no expert.parquet")

    label_set = pick_label_set(await store.labels.sets(record.id), config, label_set_id)
    if label_set is None:
        notes.append("no Q-label set in this run: no triples.parquet")
    else:
        cap = max_triples_per_tree or config.labels.max_triples_per_tree
        triples = await store.export_triples(label_set.id, max_per_tree=cap, seed=config.seed)
        tables["triples"] = await asyncio.to_thread(lambda: [_triple_row(t) for t in triples])

    episodes = await store.episodes.of_run(record.id)
    if episodes:
        tables["episodes"] = await asyncio.to_thread(
            lambda: [_episode_row(e, system) for e in episodes]
        )
    else:
        notes.append("no episodes stored: no episodes.parquet")

    rows = {name: len(items) for name, items in tables.items()}
    card = _card(record.name, directory, rows, label_set)
    files = await asyncio.to_thread(_write, directory, tables, card)
    log.info("datasets exported", run=record.name, directory=str(directory), **rows)
    return ExportResult(
        directory=directory,
        files=files,
        rows=rows,
        label_set_id=label_set.id if label_set is not None else None,
        notes=tuple(notes),
    )
