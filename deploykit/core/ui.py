"""Human output on stderr (messages, warnings, progress); machine output is the CLI's business."""

from __future__ import annotations

import contextlib
import warnings
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


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (the one way deploykit warns)."""
    info(f"warning: {message}")


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator[Progress]:
    """A progress bar on stderr (``unit="bytes"`` shows sizes); its task is ``task_ids[0]``."""
    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), count]
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        progress.add_task(description, total=total)
        yield progress


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No weight-loading bars or deprecation warnings from transformers/peft on stderr."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
