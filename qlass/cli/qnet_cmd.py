"""``qlass train-qnet`` and ``qlass serve-qnet``: train the value model, serve it over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from qlass.cli._common import ConfigOption, DbOption, SetOption, resolve_config
from qlass.errors import MissingDataError, UserError

if TYPE_CHECKING:
    from qlass.config import RunConfig
    from qlass.qnet.train import TrainResult, TrainSettings
    from qlass.storage import CheckpointRecord
    from qlass.types import LabelledStep


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


async def _train(
    triples: list[LabelledStep] | None,
    store_source: tuple[str, str, int | None] | None,
    init: Path,
    settings: TrainSettings,
    config: RunConfig,
    on_progress: Callable[[int, int, float | None], None],
    announce: Callable[[int], None],
) -> tuple[TrainResult, CheckpointRecord | None]:
    """Train through the train_qnet stage's :func:`train_and_record`, on ``triples`` or on
    the triples of a stored label set (``store_source``: URL, run, label set id), recording
    the checkpoint in that store on the main process."""
    from qlass.runtime.stages.train_qnet import train_and_record, training_triples
    from qlass.storage import TreeStore

    if store_source is None:
        assert triples is not None
        announce(len(triples))
        return await train_and_record(triples, init, settings, on_progress=on_progress)
    url, run, label_set = store_source
    async with await TreeStore.open(url) as store:
        if label_set is not None:
            labels = await store.labels.get_set(label_set)
        else:
            run_record = await store.runs.get(run)
            sets = await store.labels.sets(run_record.id)
            if not sets:
                raise MissingDataError(f"run {run_record.name!r} has no Q-label sets yet")
            labels = sets[-1]
        stored = await training_triples(store, labels, config)
        if not stored:
            raise MissingDataError("no labelled triples to train on (explore and label first)")
        announce(len(stored))
        record_in = (store, labels) if _is_main_process() else None
        return await train_and_record(
            stored, init, settings, record_in=record_in, on_progress=on_progress
        )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(result: TrainResult, recorded: int | None) -> Table:
    table = Table(title="QNet training", show_header=False)
    table.add_row("checkpoint", str(result.checkpoint_dir))
    table.add_row("examples (train / dev)", f"{result.train_examples} / {result.dev_examples}")
    table.add_row("tasks (train / dev)", f"{result.train_tasks} / {result.dev_tasks}")
    table.add_row("optimizer steps", str(result.steps))
    if result.train_losses:
        table.add_row(
            "train loss (first -> last)",
            f"{result.train_losses[0]:.4f} -> {result.train_losses[-1]:.4f}",
        )
    table.add_row(
        "dev MSE (before -> after)", f"{_fmt(result.dev_mse_before)} -> {_fmt(result.dev_mse)}"
    )
    table.add_row("dev MSE of predicting the mean", _fmt(result.dev_mse_mean_baseline))
    table.add_row("dev Spearman", _fmt(result.dev_spearman, 3))
    table.add_row(
        "dev sibling order right (what search needs)", _fmt(result.dev_sibling_accuracy, 3)
    )
    table.add_row(
        "dev sibling gaps kept (predicted / labelled; ~0: blind to the action)",
        _fmt(result.dev_sibling_spread, 3),
    )
    table.add_row("train time", f"{result.train_seconds:.1f} s")
    if recorded is not None:
        table.add_row("recorded in the store", f"checkpoint id {recorded}")
    return table


def register(app: typer.Typer) -> None:
    @app.command("train-qnet")
    def train_qnet_cmd(
        config: ConfigOption = None,
        set_: SetOption = None,
        db: DbOption = None,
        run: Annotated[
            str | None,
            typer.Option(
                help="Run (name or id) whose newest Q-label set is used (default: the "
                "config's run name)."
            ),
        ] = None,
        label_set: Annotated[
            int | None, typer.Option(help="Q-label set id to train on (instead of --run).")
        ] = None,
        triples: Annotated[
            Path | None,
            typer.Option(
                help="Train on a JSONL file of labelled steps instead of the tree store "
                "(see docs/qnet.md for the format).",
                dir_okay=False,
            ),
        ] = None,
        base_model: Annotated[
            Path | None,
            typer.Option(
                help="Model dir to initialise from (a policy checkpoint, or a QNet "
                "checkpoint to continue). Default: qnet.base_model, else the run's BC policy.",
                file_okay=False,
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output",
                "-o",
                help="Checkpoint dir (default: qnet.output_dir, else RUN_DIR/qnet).",
            ),
        ] = None,
        max_steps: Annotated[
            int | None,
            typer.Option(min=1, help="Stop after this many optimizer steps (overrides epochs)."),
        ] = None,
        gradient_checkpointing: Annotated[
            bool, typer.Option(help="Recompute activations to save memory (long sequences).")
        ] = False,
        save_steps: Annotated[
            int | None,
            typer.Option(min=1, help="Also write resumable Trainer checkpoints every N steps."),
        ] = None,
        cpu: Annotated[
            bool, typer.Option(help="Train on the CPU even if a GPU is present.")
        ] = False,
    ) -> None:
        """Train the QNet on Bellman Q labels (MSE at the last token), split by task.

        Reads training triples of the train split from the tree store (--db with --run or
        --label-set) or from a JSONL file (--triples), trains with the paper's settings
        (qnet.* in the config: batch 64, 3 epochs, lr 1e-5 cosine, warmup 0.03, max length
        4096), reports dev MSE and Spearman correlation, saves the checkpoint and records it
        in the store. Runs unchanged under `accelerate launch` or `torchrun` on many GPUs.
        """
        from qlass.qnet._wire import read_triples_jsonl
        from qlass.qnet.train import qnet_train_settings

        cfg = resolve_config(config, set_, db)
        console = Console(stderr=True)
        steps: list[LabelledStep] | None = None
        source: tuple[str, str, int | None] | None = None
        if triples is not None:
            if run is not None or label_set is not None:
                raise UserError("--triples and --run/--label-set are alternatives; pass one")
            steps = read_triples_jsonl(triples)
            if not steps:
                raise MissingDataError("no labelled triples to train on (explore and label first)")
        else:
            source = (cfg.store_url, run or cfg.name, label_set)
        init = base_model or Path(cfg.qnet.base_model or cfg.policy_dir)
        settings = qnet_train_settings(
            cfg,
            output_dir=output or cfg.qnet_dir,
            max_steps=max_steps,
            gradient_checkpointing=gradient_checkpointing,
            save_steps=save_steps,
            use_cpu=cpu,
        )

        def announce(count: int) -> None:
            if _is_main_process():
                console.print(f"training on {count} triples from {init}")

        with Progress(
            TextColumn("[bold]QNet"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not _is_main_process(),
        ) as bar:
            task = bar.add_task("train", total=None, loss="-")

            def on_progress(step: int, total: int, loss: float | None) -> None:
                bar.update(task, completed=step, total=total, loss=_fmt(loss))

            result, recorded = asyncio.run(
                _train(steps, source, init, settings, cfg, on_progress, announce)
            )
        if _is_main_process():
            Console().print(_summary(result, None if recorded is None else recorded.id))

    @app.command("serve-qnet")
    def serve_qnet_cmd(
        checkpoint: Annotated[
            Path,
            typer.Argument(help="A QNet checkpoint dir written by train-qnet.", file_okay=False),
        ],
        host: Annotated[
            str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
        device: Annotated[
            str, typer.Option(help="'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA if available).")
        ] = "auto",
        max_batch: Annotated[
            int, typer.Option(min=1, help="Most queries scored in one forward pass.")
        ] = 32,
        token_budget: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Most padded tokens in one forward pass (default: 4096 on CPU, 32768 "
                "on CUDA).",
            ),
        ] = None,
        max_wait_ms: Annotated[
            float,
            typer.Option(min=0, help="How long a query waits for others to join its batch."),
        ] = 5.0,
        cache_size: Annotated[
            int, typer.Option(min=0, help="Scored queries remembered (0: no cache).")
        ] = 100_000,
    ) -> None:
        """Serve a QNet over HTTP: POST /v1/score, GET /health. Stop with Ctrl-C.

        Concurrent requests are micro-batched into shared forward passes. Guide an agent
        elsewhere with value model 'qnet-server' and the URL http://HOST:PORT.
        """
        from qlass.qnet.server import serve

        if not (checkpoint / "qnet_config.json").is_file():
            raise MissingDataError(f"{checkpoint} is not a QNet checkpoint (no qnet_config.json)")
        typer.echo(
            json.dumps({"url": f"http://{host}:{port}", "checkpoint": str(checkpoint)}), err=True
        )
        serve(
            checkpoint,
            host=host,
            port=port,
            device=device,
            max_batch=max_batch,
            token_budget=token_budget,
            max_wait_s=max_wait_ms / 1000.0,
            cache_size=cache_size,
        )
