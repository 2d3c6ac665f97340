"""The whole method end to end on TextWorldExpress with a tiny model: every stage runs,
and the stored trees, labels, checkpoint and metrics are checked, not just produced."""

from pathlib import Path

import pytest

from qlass.runtime import resources
from qlass.runtime.pipeline import STAGES, Pipeline
from qlass.storage import minmax_normalize
from qlass.testing import TINY_BC, tiny_run_config

OVERRIDES = [
    "name=e2e",
    *TINY_BC,
    "env.params=numLocations=2,includeDoors=0",
    "env.train_tasks=6",
    "env.eval_tasks=2",
    "env.max_steps=4",
    "env.pool_size=2",
    "explore.width=2",
    "explore.max_depth=2",
    "explore.min_prune_depth=1",
    "explore.concurrency=2",
    "qnet.epochs=1",
    "qnet.batch_size=8",
    "qnet.head_dim=16",
    "qnet.max_length=512",
    "qnet.dev_fraction=0.25",
    "search.strategies=[greedy, best_of_n:2, qlass:2]",
    "eval.concurrency=2",
    "self_train.rounds=2",
    "self_train.tasks=2",
    "self_train.strategy=greedy",
    "self_train.min_score=0",
    "self_train.epochs=1",
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("e2e")
    return tiny_run_config(run_dir, *OVERRIDES)


async def test_every_stage_runs_and_stores_consistent_results(config) -> None:
    async with Pipeline(config) as pipeline:
        results = await pipeline.run(STAGES)
        assert [r.name for r in results] == list(STAGES)
        assert not any(r.skipped for r in results)
        by_name = {r.name: r.metrics for r in results}
        store, run = pipeline.store, pipeline.run_record

        # Gold paths: one expert trajectory per train task, written to the run folder.
        assert by_name["gold"]["trajectories"] == 6
        assert Path(by_name["gold"]["file"]).exists()
        # BC produced a loadable model directory.
        assert (config.policy_dir / "config.json").exists()

        # Trees: every train task explored to completion, in the paper's shape.
        tasks = await store.tasks.of_run(run.id)
        assert len(tasks) == 6
        assert all(t.status == "done" for t in tasks)
        (label_set,) = await store.labels.sets(run.id)
        assert label_set.gamma == config.labels.gamma
        total_nodes = executed = 0
        for task in tasks:
            tree = await store.trees.load(task.id)
            total_nodes += len(tree.nodes)
            executed += sum(1 for n in tree.nodes if n.action is not None and n.status == "ok")
            root = tree.root
            assert root is not None
            assert len(tree.children(root.id)) == 2  # W at depth 0 < min_prune_depth
            leaves = [n for n in tree.nodes if n.is_leaf and n.final_reward is not None]
            assert leaves
            assert all(n.done or n.depth == 4 for n in leaves)
            # Stored labels equal a Bellman backup recomputed here from the leaves.
            q = await store.labels.values(label_set.id, task.id, normalized=False)
            for node in tree.nodes:
                children = [c for c in tree.children(node.id) if c.id in q]
                if node.final_reward is not None:
                    assert q[node.id] == pytest.approx(node.final_reward)
                elif children:
                    best = max(q[c.id] for c in children)
                    assert q[node.id] == pytest.approx(config.labels.gamma * best)
            normalised = await store.labels.values(label_set.id, task.id)
            assert normalised == pytest.approx(minmax_normalize(q, [root.id]))
        assert by_name["explore"]["nodes"] == total_nodes
        # Every executed action cost an env step (invalid outputs cost none).
        assert by_name["explore"]["env_steps"] >= executed > 0

        # QNet: trained on the exported triples, checkpoint recorded with its metrics.
        checkpoint = await store.checkpoints.latest(run.id)
        assert checkpoint is not None
        assert Path(checkpoint.path, "qnet_config.json").exists()
        assert (
            checkpoint.metrics["train_examples"] + checkpoint.metrics["dev_examples"]
            == (by_name["train_qnet"]["triples"])
        )

        # Evaluation: every strategy played every eval task; reports match the episodes.
        reports = by_name["eval"]["reports"]
        assert [r["strategy"] for r in reports] == ["greedy", "best_of_n:2", "qlass:2"]
        for report in reports:
            episodes = await store.episodes.of_run(run.id, strategy=report["strategy"])
            assert len(episodes) == report["episodes"] == 2
            mean = sum(e.final_score for e in episodes) / len(episodes)
            assert report["avg_reward"] == pytest.approx(mean)
            assert report["completion_tokens"] == sum(e.completion_tokens for e in episodes)
        greedy, best_of_n, _qlass = reports
        assert best_of_n["completion_tokens"] > greedy["completion_tokens"]

        # Every stage recorded what it cost.
        stages = {s.name: s for s in await store.stages.of_run(run.id)}
        assert all(stages[name].status == "done" for name in STAGES)
        assert stages["explore"].metrics["completion_tokens"] > 0
        assert all("wall_time_s" in stages[name].metrics for name in STAGES)
        # ... and the settings it ran with (a rerun may change those of later stages).
        assert stages["train_qnet"].metrics["settings"]["qnet"]["lr"] == config.qnet.lr
        assert set(stages["bc"].metrics["settings"]) == {"env", "bc", "policy"}


async def test_rerun_skips_finished_stages(config) -> None:
    async with Pipeline(config) as pipeline:
        results = await pipeline.run(STAGES)
    assert all(r.skipped for r in results)


async def test_self_training_rounds_train_evaluate_and_reuse_each_rounds_policy(
    config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds collect, fine-tune and evaluate; a round's evaluated policy collects the
    next round without being loaded again; a rerun keeps the finished rounds."""
    async with Pipeline(config) as pipeline:
        await pipeline.run(STAGES)  # done by the tests above (skipped), unless run alone
    built: list[str | None] = []
    build = resources.build_policy

    def counting_build(policy_config, **options):  # type: ignore[no-untyped-def]
        built.append(policy_config.model)
        return build(policy_config, **options)

    monkeypatch.setattr(resources, "build_policy", counting_build)
    async with Pipeline(config) as pipeline:
        first, second = await pipeline.stage("self_train")
    assert [r.metrics["round"] for r in (first, second)] == [1, 2]
    rounds = [config.directory / f"policy-round{k}" for k in (1, 2)]
    for result, out in zip((first, second), rounds, strict=True):
        assert result.metrics["model_dir"] == str(out) and (out / "config.json").exists()
        assert result.metrics["collected"] == 2 and result.metrics["examples"] > 0
        strategies = [r["strategy"] for r in result.metrics["reports"]]
        assert strategies == ["greedy", "best_of_n:2", "qlass:2"]
    # The BC policy (collects round 1), round 1's (evaluated, then collects round 2) and
    # round 2's: three policies for two rounds.
    assert built == [str(config.policy_dir), *map(str, rounds)]

    async with Pipeline(config) as pipeline:
        again = await pipeline.stage("self_train")
    assert [r.skipped for r in again] == [True, True] and len(built) == 3
