# Resume an interrupted exploration: every tree node is committed to the store as soon as
# its env step returns, so a stopped (or crashed) exploration continues from where it was
# and redoes nothing. This script starts the explore stage, stops it after a few nodes
# (as Ctrl-C would: steps under way finish and are committed), resumes it, and checks
# that every node of the first run is still there, unchanged, and was not made again.
#
#   qlass demo                                   # trains runs/demo/policy (CPU)
#   python examples/resume_exploration.py        # or --policy hosted_vllm/NAME --api-base URL
#
# The same from the command line: `qlass explore --config C`, Ctrl-C, then the same command.
# --fast: 2 small trees (what the test suite runs).
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from qlass import Pipeline, RunConfig, configure_logging
from qlass.runtime.scheduler import StopSignal

Nodes = dict[int, tuple[int | None, str | None, str]]  # id -> (parent, action, observation)


async def stored_nodes(pipeline: Pipeline) -> Nodes:
    store, run = pipeline.store, pipeline.run_record
    nodes: Nodes = {}
    for task in await store.tasks.of_run(run.id):
        tree = await store.trees.load(task.id)
        nodes.update({n.id: (n.parent_id, n.action, n.observation) for n in tree.nodes})
    return nodes


async def explore(config: RunConfig, stop_after: int | None) -> tuple[Nodes, dict[str, object]]:
    """Run the explore stage; with ``stop_after``, ask it to stop once that many nodes exist."""
    stop = StopSignal()
    async with Pipeline(config, stop=stop) as pipeline:

        async def watch() -> None:
            while stop_after is not None and not stop.requested:
                if (await pipeline.store.runs.summary(config.name)).nodes >= stop_after:
                    stop.request()
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        try:
            (result,) = await pipeline.stage("explore")
        finally:
            watcher.cancel()
        return await stored_nodes(pipeline), result.metrics | {"skipped": result.skipped}


async def main_async(config: RunConfig, stop_after: int) -> None:
    first, metrics = await explore(config, stop_after)
    print(f"interrupted: {len(first)} nodes committed, stopped={metrics.get('stopped', False)}")
    second, metrics = await explore(config, None)
    kept = all(second.get(node_id) == node for node_id, node in first.items())
    print(
        f"resumed: {len(second) - len(first)} new nodes, total {len(second)}; "
        f"first run's nodes kept unchanged: {kept}; "
        f"policy calls {metrics.get('policy_calls')}, trees finished {metrics.get('trees')}"
    )
    third, metrics = await explore(config, None)
    print(f"again: stage skipped={metrics['skipped']}, nodes {len(third)} (nothing redone)")


def main() -> None:
    configure_logging(level="WARNING")  # qlass logs to stderr; stdout shows the results
    parser = argparse.ArgumentParser(description="Stop and resume an exploration.")
    parser.add_argument("--policy", default="runs/demo/policy", help="model dir or LiteLLM id")
    parser.add_argument("--api-base", help="OpenAI-compatible base URL for a LiteLLM policy")
    parser.add_argument("--max-turns", type=int, default=3, help="turns kept in the prompt")
    parser.add_argument("--params", default="numLocations=5,includeDoors=0")
    parser.add_argument("--run-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--stop-after", type=int, default=6, help="nodes before the stop")
    parser.add_argument("--fast", action="store_true", help="2 small trees (tests)")
    args = parser.parse_args()
    local = Path(args.policy).is_dir()
    if args.policy.startswith("runs/") and not local:
        parser.error(f"no model at {args.policy}: run `qlass demo` first, or pass --policy")
    config = RunConfig.model_validate(
        {
            "name": "resume-example",
            "run_dir": args.run_dir or Path(tempfile.mkdtemp(prefix="qlass-resume-")),
            "env": {
                "name": "textworld_express",
                "games": ["coin"],
                "params": args.params,
                "train_tasks": 2 if args.fast else 8,
                "max_steps": 3 if args.fast else 15,
                "pool_size": 2,
            },
            "policy": {
                "backend": "hf" if local else "litellm",
                "model": args.policy,
                "api_base": args.api_base,
                "prompt": "none" if local else "full",
                "max_tokens": 16 if local else 128,
                "max_turns_in_prompt": args.max_turns,
                "device": "cpu",
            },
            "explore": {"width": 2, "max_depth": 1 if args.fast else 4, "min_prune_depth": 1},
        }
    )
    print(f"store: {config.store_url}")
    asyncio.run(main_async(config, args.stop_after))


if __name__ == "__main__":
    main()
