"""Shared helpers for the benchmarks: peak memory of a child process, BENCHMARKS.md sections."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


@dataclass
class Run:
    """One measured command: wall seconds, peak RSS and peak anonymous memory (bytes)."""

    cmd: list[str]
    seconds: float
    max_rss: int
    max_anon: int
    returncode: int
    output: str


def _anon_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"RssAnon:\s+(\d+) kB", text)
    return int(m.group(1)) if m else 0


def measure(cmd: list[str], env: dict[str, str] | None = None, poll: float = 0.05) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v``; sample its RssAnon from /proc while it runs."""
    full = ["/usr/bin/time", "-v", *cmd]
    start = time.monotonic()
    proc = subprocess.Popen(
        full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    peak_anon = 0
    child = None
    while proc.poll() is None:
        if child is None:
            try:
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                child = int(kids[0]) if kids else None
            except OSError:
                child = None
        if child is not None:
            peak_anon = max(peak_anon, _anon_kib(child))
        time.sleep(poll)
    out = proc.stdout.read() if proc.stdout else ""
    seconds = time.monotonic() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    return Run(
        cmd, seconds, int(m.group(1)) * 1024 if m else 0, peak_anon * 1024, proc.returncode, out
    )


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def write_section(name: str, body: str) -> None:
    """Replace the ``<!-- bench:NAME -->`` section of BENCHMARKS.md (appending it if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
