"""Shared pieces of the command line: the console, one-line errors, the extraction progress bar."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """A clear one-line error instead of a traceback."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def stopped(message: str, code: int = 130, say: bool = True) -> NoReturn:
    """A graceful stop (SIGINT / SIGTERM): one line saying what was kept (``say``: this rank reports), then
    exit ``code`` (130 / 143)."""
    if say:
        console.print(f"[bold yellow]stopped:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


class ExtractProgress:
    """A rich bar with videos/s, clips/s and ETA, fed by vcache.extract's progress callback."""

    def __init__(self, quiet: bool, clips_per_video: int):
        self.quiet = quiet
        self.k = clips_per_video
        self.progress = Progress(
            TextColumn("[bold]extract"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rates]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        )
        self.task = None
        self.clips = 0
        self.videos = 0
        self.failed = 0

    def __enter__(self) -> ExtractProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.task = self.progress.add_task(
                "extract", total=info["total"], completed=info["done"], rates=""
            )
            self._t0 = self.progress.get_time()
        elif event == "video" and self.task is not None:
            self.videos += 1
            self.clips += info["clips"]
            self.failed += info["clips"] == 0
            dt = max(1e-9, self.progress.get_time() - self._t0)
            rates = f"{self.videos / dt:.2f} videos/s {self.clips / dt:.1f} clips/s"
            if self.failed:
                rates += f" [red]{self.failed} failed[/]"
            self.progress.update(self.task, advance=1, rates=rates)


def print_warnings(rows: list, title: str, total: int | None = None) -> None:
    """(path, warning) or (path, errors, warning) rows: done videos that decoded with damage."""
    if not rows:
        return
    table = Table(title=title, show_lines=False)
    table.add_column("video")
    table.add_column("warning")
    for row in rows[:20]:
        table.add_row(row[0], row[-1] or f"{row[1]} decoder messages")
    more = (total if total is not None else len(rows)) - min(20, len(rows))
    if more > 0:
        table.add_row(f"... {more} more", "(vcache inspect --json lists 10; videos/warnings holds all)")
    console.print(table)
