"""LLM faults injected into real ``qlass explore`` / ``qlass eval`` runs through the LiteLLM
backend over real HTTP, with a planted API key that must never leave the process.

Transient faults (429, 500, timeout, dropped connection) are retried; bad completions
(malformed body, empty, over-long, no action) become recorded invalid steps or retried
calls; an outage fails its task with a clear error and a rerun finishes it, with every
committed node kept. The key is sent to the server, yet appears in no log line, error
message, DB byte or report file.

Each fault is scripted for the root call of one task (the server knows it by its seed,
which the explorer derives from the run seed, the task and the node), not for the n-th
request to arrive: which call meets which fault, and so what each tree holds, does not
depend on the order in which concurrent trees happen to call (it used to, and a loaded
box left faults unserved when the run ended first).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from qlass._seeding import derive_seed
from qlass.config import load_config
from qlass.runtime.pipeline import Pipeline
from qlass.storage import TreeStore
from tests.reliability.fault_server import FaultServer
from tests.reliability.harness import (
    child_env,
    duplicate_siblings,
    qlass_command,
    snapshot,
    start,
)

NAME = "llm"
WIDTH = 2
# What each task's root call meets, attempt by attempt (then normal answers). A transient
# fault is retried; the retry of the first three gets a bad completion, which is not.
SCRIPTS: list[list[str | None]] = [
    ["429", "empty"],
    ["500", "long"],
    ["timeout", "noaction"],
    ["drop"],
    ["malformed"],
    ["401-echo"],  # not retried: the task fails
    ["500", "500", "500"],  # an outage that outlasts the retries: the task fails
]
TRANSIENT = ["429", "500", "timeout", "drop", "malformed"]


def _pairs(base_url: str, run_dir: Path) -> list[str]:
    return [
        f"name={NAME}",
        f"run_dir={run_dir}",
        "env.games=[coin]",
        "env.params=numLocations=3,includeDoors=0",
        f"env.train_tasks={len(SCRIPTS)}",
        "env.eval_tasks=1",
        "env.max_steps=5",
        "env.pool_size=4",
        f"explore.width={WIDTH}",
        "explore.max_depth=3",
        "explore.min_prune_depth=1",
        "explore.concurrency=2",
        "policy.backend=litellm",
        "policy.model=openai/fake-model",  # an OpenAI provider: n samples in one request
        f"policy.api_base={base_url}",
        "policy.api_key_env=OPENAI_API_KEY",
        "policy.prompt=none",
        "policy.retries=2",
        "policy.timeout_s=1",
        "search.strategies=[greedy]",
    ]


def _root_seeds(pairs: list[str]) -> dict[str, int]:
    """The seed of each train task's root call (by task key), as the explorer derives it."""
    config = load_config(None, pairs)
    tasks = asyncio.run(Pipeline(config).tasks("train", config.env.train_tasks))
    return {task.key: derive_seed(config.seed, "explore", task.key, (), WIDTH) for task in tasks}


async def _labels_exact(db: Path) -> int:
    async with await TreeStore.open(db) as store:
        run = await store.runs.get(NAME)
        (label_set,) = await store.labels.sets(run.id)
        return await store.labels.recompute(label_set.id)


def test_llm_faults_are_retried_or_recorded_and_the_key_never_leaks(tmp_path: Path) -> None:
    key = f"sk-planted-{secrets.token_hex(16)}"
    env = child_env(OPENAI_API_KEY=key)
    db = tmp_path / "llm.db"
    logs = tmp_path / "logs"
    roots = _root_seeds(_pairs("http://unused/v1", tmp_path / "run"))
    keys, seeds = list(roots), list(roots.values())
    assert len(set(seeds)) == len(SCRIPTS)
    with FaultServer(by_seed=dict(zip(seeds, SCRIPTS, strict=True))) as server:
        pairs = _pairs(server.base_url, tmp_path / "run")
        args = ["explore", "--db", str(db), *[a for p in pairs for a in ("--set", p)]]
        first = start(qlass_command(*args), logs, "faults", env)
        assert first.wait(timeout=300) == 0, first.err()[-4000:]
        assert "incomplete" in first.out()
        # Every scripted fault was served, to the call it was meant for, in order; the
        # retry after a lone transient fault got a normal answer.
        served = {key: server.served_by_seed.get(seed) for key, seed in roots.items()}
        assert served == {
            key: [*script, *(["ok"] if script[-1] in ("drop", "malformed") else [])]
            for key, script in zip(keys, SCRIPTS, strict=True)
        }
        broken = snapshot(str(db), NAME)
        statuses = [broken.task_status[key] for key in keys]
        assert statuses == ["done"] * 5 + ["failed"] * 2

        resume = ["explore", "--resume", NAME, "--db", str(db)]
        second = start(qlass_command(*resume), logs, "recover", env)
        assert second.wait(timeout=180) == 0, second.err()[-4000:]

        server.faults = ["401-echo"]  # an evaluation that fails on a refused key
        evaluate = ["eval", "--resume", NAME, "--db", str(db), "--strategy", "greedy"]
        third = start(qlass_command(*evaluate), logs, "eval", env)
        assert third.wait(timeout=120) == 1
        report_dir = tmp_path / "report"
        report = start(
            [*qlass_command("report", NAME, "--db", str(db), "--out", str(report_dir))],
            logs,
            "report",
            env,
        )
        assert report.wait(timeout=120) == 0, report.err()[-3000:]
        assert server.authorization == {key}  # the key really was in use

    final = snapshot(str(db), NAME)
    # Nothing committed before the recovery was lost or changed; every task finished.
    for node_id, row in broken.nodes.items():
        assert final.nodes[node_id] == row
    assert set(final.task_status.values()) == {"done"}
    assert duplicate_siblings(final) == []
    assert asyncio.run(_labels_exact(db)) == 0
    # Each transient fault was retried, and the client logged why.
    retried = [e.get("detail", "") for e in first.events() if e["event"] == "policy.retry"]
    signs = {
        "429": "injected 429",
        "500": "injected 500",
        "timeout": "no answer within 1 s",
        "drop": f"connection to {server.base_url} failed",
        "malformed": "Expecting property name",  # the body that was not JSON
    }
    for fault, sign in signs.items():
        assert any(sign in detail for detail in retried), (fault, retried)
    refused, outage = (broken.task_errors[key] or "" for key in keys[5:])
    assert "AuthenticationError" in refused and "Incorrect API key provided: ***" in refused
    assert "injected 500" in outage and "gave up after 3 attempts" in outage
    # ... and bad completions are recorded invalid steps, never env steps.
    invalid = [row for row in final.nodes.values() if row["status"] == "invalid"]
    errors = {row["error"] for row in invalid}
    assert "the provider returned an empty completion" in errors
    assert "model output has no 'Action:' line" in errors
    assert any(len(row["text"]) >= 60_000 for row in invalid)
    assert all(row["action"] is None for row in invalid)
    # The eval failure is a clear message, with the echoed key masked.
    assert "failed: openai/fake-model: AuthenticationError" in third.err()
    assert "Incorrect API key provided: ***" in third.err()

    # The planted key is nowhere: logs, messages, tables, the DB files, the report.
    places = {f"logs/{p.name}": p.read_bytes() for p in logs.iterdir()}
    places |= {p.name: p.read_bytes() for p in tmp_path.glob("llm.db*")}
    places |= {f"report/{p.name}": p.read_bytes() for p in report_dir.rglob("*") if p.is_file()}
    assert len(places) > 10
    leaks = [name for name, data in places.items() if key.encode() in data]
    assert leaks == []
    assert b"***" in places["logs/faults.err"]  # the echoed key was there, masked
