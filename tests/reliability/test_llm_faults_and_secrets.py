"""LLM faults injected into real ``qlass explore`` / ``qlass eval`` runs through the LiteLLM
backend over real HTTP, with a planted API key that must never leave the process.

Transient faults (429, 500, timeout, dropped connection) are retried; bad completions
(malformed body, empty, over-long, no action) become recorded invalid steps or retried
calls; an outage fails the tasks in flight with a clear error and a rerun finishes them,
with every committed node kept. The key is sent to the server, yet appears in no log line,
error message, DB byte or report file.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

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
TRANSIENT = ["429", "500", "timeout", "drop", "malformed"]
CONTENT = ["empty", "long", "noaction"]


def _settings(server: FaultServer, run_dir: Path) -> list[str]:
    pairs = [
        f"name={NAME}",
        f"run_dir={run_dir}",
        "env.games=[coin]",
        "env.params=numLocations=3,includeDoors=0",
        "env.train_tasks=3",
        "env.eval_tasks=1",
        "env.max_steps=5",
        "env.pool_size=4",
        "explore.width=2",
        "explore.max_depth=3",
        "explore.min_prune_depth=1",
        "explore.concurrency=2",
        "policy.backend=litellm",
        "policy.model=openai/fake-model",
        f"policy.api_base={server.base_url}",
        "policy.api_key_env=OPENAI_API_KEY",
        "policy.prompt=none",
        "policy.retries=1",
        "policy.timeout_s=1",
        "search.strategies=[greedy]",
    ]
    return [arg for pair in pairs for arg in ("--set", pair)]


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
    # Two good answers after each fault: with two calls in flight, the retry of a call that
    # met a fault gets a good answer.
    faults: list[str | None] = []
    for fault in [*TRANSIENT, *CONTENT, "401-echo"]:
        faults += [fault, None, None]
    with FaultServer(faults, slow_s=1.5) as server:
        args = ["explore", "--db", str(db), *_settings(server, tmp_path / "run")]
        first = start(qlass_command(*args), logs, "faults", env)
        while server.faults and first.popen.poll() is None:  # every fault served
            time.sleep(0.02)
        server.down = True  # then an outage: the tasks in flight fail after their retries
        assert first.wait(timeout=180) == 0, first.err()[-4000:]
        assert "incomplete" in first.out()
        assert not server.faults
        broken = snapshot(str(db), NAME)
        failed = [k for k, status in broken.task_status.items() if status == "failed"]
        assert failed  # the outage and the 401 failed tasks, with the error kept

        server.down = False
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
        served = list(server.served)
        assert server.authorization == {key}  # the key really was in use

    final = snapshot(str(db), NAME)
    # Nothing committed before the outage was lost or changed; every task finished.
    for node_id, row in broken.nodes.items():
        assert final.nodes[node_id] == row
    assert set(final.task_status.values()) == {"done"}
    assert duplicate_siblings(final) == []
    assert asyncio.run(_labels_exact(db)) == 0
    # Every fault was served. Transient ones were retried (each retry is logged) ...
    for fault in [*TRANSIENT, *CONTENT, "401-echo"]:
        assert fault in served
    retried = " ".join(e.get("detail", "") for e in first.events() if e["event"] == "policy.retry")
    for sign in ("injected 429", "injected 500", "no answer within 1 s", "Connection error"):
        assert sign in retried
    assert "Expecting property name" in retried  # the body that was not JSON
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
