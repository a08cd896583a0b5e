"""Shared helpers for the benchmarks: peak memory of a command's process tree (per kind of
process), the disk it fills, free-space checks, BENCHMARKS.md sections."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


@dataclass
class Proc:
    """The peaks of one kind of process (``kind``) seen in a run, in bytes."""

    max_rss: int = 0  # VmHWM: the kernel's own high-water mark
    max_anon: int = 0  # RssAnon, sampled
    count: int = 0  # how many processes of the kind were seen


@dataclass
class Run:
    """One measured command: wall seconds, peak RSS (of the heaviest process of the tree, as
    ``time -v`` reports it) and peak anonymous memory (of the command itself), in bytes.

    ``procs``: the peaks of every process of the tree by kind; ``tree_anon``: the peak of their
    RssAnon summed; ``disk_peak``/``disk_final``: what ``disk`` paths held on disk (``measure``).
    """

    cmd: list[str]
    seconds: float
    max_rss: int
    max_anon: int
    returncode: int
    output: str
    procs: dict[str, Proc] = field(default_factory=dict)
    tree_anon: int = 0
    disk_peak: int = 0
    disk_final: int = 0


def _status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon of ``pid`` in KiB (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS|RssAnon):\s+(\d+) kB", text, re.M)}


def _anon_kib(pid: int) -> int:
    return _status(pid).get("RssAnon", 0)


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, parents before children (children of every thread)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            out += map(int, kids)
            todo += map(int, kids)
    return out


def kind(argv: list[str]) -> str:
    """What a process is, by its command line: ``python -m X`` is X, ``python script.py`` is
    ``script.py``, ``python -c ...`` is ``python -c``; anything else, its executable's name."""
    if not argv:
        return "?"
    exe = Path(argv[0]).name
    if not exe.startswith("python"):
        return exe
    args = argv[1:]
    for i, a in enumerate(args):
        if a == "-m" and i + 1 < len(args):
            return args[i + 1]
        if a == "-c":
            return "python -c"
        if not a.startswith("-"):
            return Path(a).name
    return exe


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _walk(paths: list[Path]):
    """``os.lstat`` of every path under ``paths`` (the paths themselves included)."""
    for top in paths:
        names = [str(top)]
        for dirpath, dirs, files in os.walk(top):
            names += (os.path.join(dirpath, n) for n in [*dirs, *files])
        for name in names:
            with contextlib.suppress(OSError):
                yield os.lstat(name)


def inodes(paths: list[Path]) -> set[tuple[int, int]]:
    """The inodes under ``paths``: what ``disk_usage(..., skip=)`` leaves out (inputs that a
    run hard-links to take no disk of their own)."""
    return {(st.st_dev, st.st_ino) for st in _walk(paths)}


def disk_usage(paths: list[Path], skip: set[tuple[int, int]] | None = None) -> int:
    """Bytes allocated on disk (st_blocks) under ``paths``, each inode counted once, those in
    ``skip`` not at all."""
    seen = set(skip or ())
    total = 0
    for st in _walk(paths):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _stop(proc: subprocess.Popen, pids: list[int]) -> None:
    """After an interrupt: give the tree 10 s to exit (a terminal's Ctrl-C reached it too),
    then SIGTERM every process of it, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        for pid in reversed(pids) if sig is not None else []:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pids = _descendants(proc.pid) or pids


class _Tree:
    """The peaks of a process tree, sampled: per process (by pid and kind), and summed."""

    def __init__(self, root: int) -> None:
        self.root, self.child, self.pids = root, None, []
        self.seen: dict[tuple[int, str], Proc] = {}
        self.last: dict[int, str] = {}  # a pid's kind once it exec'd (before: a parent's copy)
        self.anon = 0

    def sample(self) -> None:
        self.pids = _descendants(self.root)
        self.child = self.child or (self.pids[0] if self.pids else None)
        anon = 0
        for pid in self.pids:
            st = _status(pid)
            if not st:
                continue
            self.last[pid] = kind(_cmdline(pid))
            p = self.seen.setdefault((pid, self.last[pid]), Proc(count=1))
            p.max_rss = max(p.max_rss, st.get("VmHWM", 0) * 1024)
            p.max_anon = max(p.max_anon, st.get("RssAnon", 0) * 1024)
            anon += st.get("RssAnon", 0) * 1024
        self.anon = max(self.anon, anon)

    def procs(self) -> dict[str, Proc]:
        out: dict[str, Proc] = {}
        for (pid, k), p in self.seen.items():
            if self.last[pid] == k:
                agg = out.setdefault(k, Proc())
                agg.max_rss, agg.max_anon = (
                    max(agg.max_rss, p.max_rss),
                    max(agg.max_anon, p.max_anon),
                )
                agg.count += 1
        return out

    def child_anon(self) -> int:
        return max(
            (p.max_anon for (pid, _), p in self.seen.items() if pid == self.child), default=0
        )


def measure(
    cmd: list[str],
    env: dict[str, str] | None = None,
    poll: float = 0.05,
    disk: list[Path] | None = None,
    inputs: list[Path] | None = None,
) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v``; sample the VmHWM and RssAnon of every process of
    its tree from /proc while it runs, and what ``disk`` holds on disk (at most every 0.25 s;
    files hard-linked to ``inputs`` not counted)."""
    full = ["/usr/bin/time", "-v", *cmd]
    disk_peak, next_disk = 0, 0.0
    skip = inodes(inputs) if disk and inputs else None
    # the output goes to a file, not a pipe: a chatty command never blocks on a full pipe
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.monotonic()
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        tree = _Tree(proc.pid)
        try:
            while proc.poll() is None:
                tree.sample()
                if disk and time.monotonic() >= next_disk:
                    t = time.monotonic()
                    disk_peak = max(disk_peak, disk_usage(disk, skip))
                    next_disk = time.monotonic() + max(0.25, 10 * (time.monotonic() - t))
                time.sleep(poll)
        except BaseException:
            _stop(proc, tree.pids)
            raise
        seconds = time.monotonic() - start
        log.seek(0)
        out = log.read()
    disk_final = disk_usage(disk, skip) if disk else 0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    return Run(
        cmd,
        seconds,
        int(m.group(1)) * 1024 if m else 0,
        tree.child_anon(),
        proc.returncode,
        out,
        tree.procs(),
        tree.anon,
        max(disk_peak, disk_final),
        disk_final,
    )


def check_free(folder: Path, need: int, what: str = "") -> None:
    """Exit with one line when ``folder``'s file system has less than ``need`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"need {need / 1e9:.2f} GB free in {folder}{what}, {free / 1e9:.2f} GB free"
        )


def machine() -> str:
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
