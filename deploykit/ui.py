"""Human output on stderr (messages, progress bars); machine output is the CLI's business."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """One progress line on stderr."""
    console.print(message, markup=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator[Progress]:
    """A progress bar on stderr (``unit="bytes"`` shows sizes); its task is ``task_ids[0]``."""
    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), count]
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        progress.add_task(description, total=total)
        yield progress
