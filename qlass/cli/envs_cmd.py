"""``qlass envs``: list environments and tasks, play a task, export expert trajectories."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qlass.envs.base import InvalidActionError, require_action
from qlass.envs.registry import create_env, env_names, get_family, list_tasks
from qlass.errors import MissingDataError, QlassError, UserError
from qlass.types import TaskSpec

_SPLIT_HELP = "Split: train, dev or test (ScienceWorld/ALFWorld also accept seen/unseen)."
_PARAMS_HELP = (
    "Game parameters (TextWorldExpress, e.g. 'numLocations=5,includeDoors=0') or "
    "simplifications (ScienceWorld, default 'easy'). Default: the env's own."
)
_SOURCE_HELP = "ScienceWorld split source: 'paper' (QLASS/ETO lists) or 'simulator'."

EnvArg = Annotated[str, typer.Argument(help="Env name: " + ", ".join(env_names()) + ".")]
GamesOpt = Annotated[
    list[str] | None,
    typer.Option("--games", "-g", help="Games / task types to include (repeatable). Default: all."),
]
ParamsOpt = Annotated[str | None, typer.Option("--params", help=_PARAMS_HELP)]
SourceOpt = Annotated[str | None, typer.Option("--source", help=_SOURCE_HELP)]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="WebShop env server URL (AgentGym interface).")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="ALFWorld data directory (default: $ALFWORLD_DATA)."),
]


def _task_options(source: str | None, data_dir: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if source is not None:
        options["source"] = source
    if data_dir is not None:
        options["data_dir"] = data_dir
    return options


def _env_options(url: str | None, data_dir: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if url is not None:
        options["url"] = url
    if data_dir is not None:
        options["data_dir"] = data_dir
    return options


def _list_table(console: Console) -> None:
    table = Table(title="qlass environments (tasks per split)")
    table.add_column("env", style="bold", no_wrap=True)
    table.add_column("games / tasks")
    table.add_column("train", justify="right")
    table.add_column("dev/seen", justify="right")
    table.add_column("test/unseen", justify="right")
    table.add_column("notes")
    for name in env_names():
        family = get_family(name)
        games = family.games()
        shown = ", ".join(games[:3]) + (f" (+{len(games) - 3})" if len(games) > 3 else "")
        try:
            sizes = family.split_sizes()
            counts = [str(sizes[s]) for s in ("train", "dev", "test")]
            note = _NOTES.get(name, "")
            if name == "scienceworld":
                sim = family.split_sizes(source="simulator")
                note += f" (simulator's: {sim['train']}/{sim['dev']}/{sim['test']})"
        except MissingDataError:
            counts = ["-", "-", "-"]
            note = "needs local data: run alfworld-download, set ALFWORLD_DATA"
        except QlassError as exc:
            counts = ["-", "-", "-"]
            note = str(exc).split(". ")[0]
        table.add_row(name, escape(shown), *counts, escape(note))
    console.print(table)


_NOTES = {
    "textworld_express": "per game and parameter setting; about 1 ms a step",
    "scienceworld": "the paper's splits",
    "webshop": "goal indices; needs a WebShop env server (--url)",
}


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Text environments: list them, play a task, export expert trajectories.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="envs")

    @group.command("list")
    def list_cmd() -> None:
        """Show every environment with its games and the number of tasks per split."""
        _list_table(Console())

    @group.command("tasks")
    def tasks_cmd(
        env: EnvArg,
        split: Annotated[str, typer.Option("--split", "-s", help=_SPLIT_HELP)] = "train",
        games: GamesOpt = None,
        params: ParamsOpt = None,
        limit: Annotated[int, typer.Option("--limit", "-n", help="Tasks to show at most.")] = 20,
        source: SourceOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Print the task keys of a split, in the order runs use them."""
        tasks = list_tasks(
            env,
            split,
            games=games,
            params=params,
            limit=limit,
            **_task_options(source, data_dir),
        )
        for task in tasks:
            typer.echo(task.key)

    @group.command("play")
    def play_cmd(
        env: EnvArg,
        task: Annotated[str, typer.Argument(help="Game or task name, e.g. coin or boil.")],
        variation: Annotated[
            int | None,
            typer.Option("--variation", "-v", help="Seed / variation. Default: first of split."),
        ] = None,
        split: Annotated[str, typer.Option("--split", "-s", help=_SPLIT_HELP)] = "train",
        params: ParamsOpt = None,
        valid: Annotated[
            bool, typer.Option("--valid/--no-valid", help="Show the valid actions each turn.")
        ] = False,
        source: SourceOpt = None,
        url: UrlOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Play a task in the terminal: type actions; 'quit' or Ctrl-D ends."""
        spec = _resolve_task(env, task, split, variation, params, _task_options(source, data_dir))
        options = _env_options(url, data_dir)
        if valid and spec.env == "scienceworld":
            options["valid_actions"] = True
        asyncio.run(_play(spec, options, show_valid=valid))

    @group.command("gold")
    def gold_cmd(
        env: EnvArg,
        out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
        split: Annotated[str, typer.Option("--split", "-s", help=_SPLIT_HELP)] = "train",
        games: GamesOpt = None,
        params: ParamsOpt = None,
        limit: Annotated[
            int | None, typer.Option("--limit", "-n", help="Tasks at most (default: all).")
        ] = None,
        workers: Annotated[
            int, typer.Option("--workers", "-w", min=1, help="Simulators run at once.")
        ] = 2,
        tries: Annotated[
            int,
            typer.Option(
                "--tries",
                min=1,
                help="Ask a simulator's own gold agent this many times and keep the shortest "
                "winning path; matters only where that agent is random (none of the built-in "
                "envs: TextWorldExpress's random ones are replaced by qlass's search).",
            ),
        ] = 1,
        source: SourceOpt = None,
        data_dir: DataDirOpt = None,
        with_example: Annotated[
            bool,
            typer.Option(
                "--with-example/--no-example",
                help="Put the in-context example into each system prompt.",
            ),
        ] = False,
    ) -> None:
        """Write expert trajectories (expert paths replayed to full score) as JSONL for BC."""
        from qlass.envs.gold import export_gold

        tasks = list_tasks(
            env, split, games=games, params=params, limit=limit, **_task_options(source, data_dir)
        )
        if not tasks:
            raise UserError(f"no {env} tasks in split {split!r} for games {games or 'all'}")
        start = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]gold {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("skipped {task.fields[skipped]}"),
            TimeElapsedColumn(),
        )
        with progress:
            bar = progress.add_task(f"{tasks[0].env}/{split}", total=len(tasks), skipped=0)
            skipped = 0

            def tick(_task: TaskSpec, written: bool) -> None:
                nonlocal skipped
                skipped += 0 if written else 1
                progress.update(bar, advance=1, skipped=skipped)

            report = asyncio.run(
                export_gold(
                    tasks[0].env,
                    tasks,
                    out,
                    workers=workers,
                    tries=tries,
                    with_example=with_example,
                    env_options=_env_options(None, data_dir),
                    on_task=tick,
                )
            )
        elapsed = time.perf_counter() - start
        typer.echo(
            f"wrote {report.written} of {report.total} trajectories ({report.steps} steps) to "
            f"{report.path} in {elapsed:.1f} s; skipped {len(report.skipped)}"
        )
        for key, reason in report.skipped[:10]:
            typer.echo(f"  skipped {key}: {reason}")


def _resolve_task(
    env: str,
    name: str,
    split: str,
    variation: int | None,
    params: str | None,
    options: dict[str, Any],
) -> TaskSpec:
    """The listed task of ``split`` (its first, or the one with ``variation``); a variation
    outside the split's list keeps the listed task's name, split and params."""
    listed = list_tasks(env, split, games=[name], params=params, **options)
    if not listed:
        hint = (
            " (ScienceWorld: try --source simulator)"
            if get_family(env).name == "scienceworld"
            else ""
        )
        raise UserError(f"no {env} task {name!r} in split {split!r}{hint}")
    if variation is None:
        return listed[0]
    for task in listed:
        if task.variation == variation:
            return task
    base = listed[0]
    return TaskSpec(base.env, base.name, variation, base.split, base.params)


def _read_line(prompt: str) -> str | None:
    """One line of input (None at its end). Bytes that are not UTF-8 are kept as lone
    surrogates (``surrogateescape``) for the caller to reject, so reading never fails
    and nothing after them is lost."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    raw = sys.stdin.buffer.readline()
    if not raw:
        return None
    return raw.decode("utf-8", errors="surrogateescape")


async def _play(spec: TaskSpec, options: dict[str, Any], *, show_valid: bool) -> None:
    console = Console()
    env = create_env(spec.env, **options)
    try:
        first = await env.reset(spec)
        console.print(f"[bold]{spec.key}[/bold]\n[cyan]{first.instruction}[/cyan]\n{first.text}")
        valid = first.valid_actions
        steps = 0
        while True:
            if show_valid and valid:
                console.print("[dim]valid: " + " | ".join(valid) + "[/dim]")
            line = await asyncio.to_thread(_read_line, "> ")
            if line is None:
                break
            action = line.strip()
            if action.lower() in {"quit", "exit"}:
                break
            if not action:
                continue
            try:
                require_action(action)
            except InvalidActionError:
                console.print("[red]that line is not valid UTF-8 text; type the action again[/red]")
                continue
            result = await env.step(action)
            steps += 1
            valid = result.valid_actions
            console.print(result.observation)
            console.print(f"[dim]step {steps}  score {result.score:.2f}[/dim]")
            if result.done:
                outcome = "success" if result.success else "episode over"
                console.print(f"[bold]{outcome}[/bold]: final score {result.score:.2f}")
                break
    finally:
        await env.close()
