"""Progress reporting for long stages: rich bars on a terminal, nothing when embedded.

Stages talk to a :class:`Progress` (one bar per stage, with live counters such as nodes,
tokens and reward so far); the CLI passes :class:`RichProgress`, library users get
:class:`NullProgress` unless they pass their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichProgress

__all__ = ["NullProgress", "Progress", "ProgressBar", "RichProgress"]


class ProgressBar(Protocol):
    def advance(self, amount: float = 1, **fields: Any) -> None: ...

    def update(
        self, *, total: float | None = None, completed: float | None = None, **fields: Any
    ) -> None: ...


class Progress(Protocol):
    def bar(self, description: str, total: float | None) -> ProgressBar:
        """Start a bar (``total`` None: unknown length)."""
        ...

    def log(self, message: str) -> None:
        """Print a line above the bars."""
        ...


class _NullBar:
    def advance(self, amount: float = 1, **fields: Any) -> None:
        return None

    def update(
        self, *, total: float | None = None, completed: float | None = None, **fields: Any
    ) -> None:
        return None


class NullProgress:
    """Reports nothing (the default for library use and tests)."""

    def bar(self, description: str, total: float | None) -> ProgressBar:
        return _NullBar()

    def log(self, message: str) -> None:
        return None


def _format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class _RichBar:
    def __init__(self, progress: _RichProgress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._fields: dict[str, Any] = {}

    def advance(self, amount: float = 1, **fields: Any) -> None:
        self._fields.update(fields)
        self._progress.update(self._task, advance=amount, stats=_format_fields(self._fields))

    def update(
        self, *, total: float | None = None, completed: float | None = None, **fields: Any
    ) -> None:
        self._fields.update(fields)
        self._progress.update(
            self._task, total=total, completed=completed, stats=_format_fields(self._fields)
        )


class RichProgress:
    """Rich progress bars on stderr; use as a context manager around the work."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = _RichProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=False,
        )

    @contextmanager
    def running(self) -> Iterator[RichProgress]:
        with self._progress:
            yield self

    def bar(self, description: str, total: float | None) -> ProgressBar:
        task = self._progress.add_task(description, total=total, stats="")
        return _RichBar(self._progress, task)

    def log(self, message: str) -> None:
        self._progress.console.print(message)
