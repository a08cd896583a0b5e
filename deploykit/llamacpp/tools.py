"""Every run of a llama.cpp tool (and of the tree's Python scripts) goes through :func:`run`.

One way to start a tool, feed its progress lines to a bar, find its last error line and keep
its full output in a log the error hint names. A tool killed by a signal (a crash, or the
kernel's OOM killer) is always a :class:`ToolchainError` (exit 6), wherever it happens; what a
clean non-zero exit means is the caller's call (``ToolRun.check``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import ConversionError, DeploykitError, ToolchainError
from deploykit.llamacpp.build import bin_dir
from deploykit.llamacpp.tree import Tree, locate_tree

REBUILD_HINT = "run `make toolchain` (or `deploykit toolchain build`)"
CRASH_HINT = "if it keeps crashing, rebuild the tools: `deploykit toolchain build --force`"

#: llama-imatrix and llama-perplexity cut text into chunks of the context size and need at
#: least two: calibration text must give this many tokens (two contexts of 32).
MIN_CALIBRATION_TOKENS = 64

#: A progress parser: one output line -> the bar's new state (``completed``, ``total``,
#: ``description``), or None when the line says nothing about progress.
Progress = Callable[[str], "dict[str, Any] | None"]


def default_threads() -> int:
    """Threads for llama.cpp's compute tools: half the cores.

    ggml's worker threads meet at a spinning barrier after every op; with one thread per core,
    any other busy process (a shared CI runner) stalls every op — measured 70x slower
    generation on 2 busy cores. Half the cores keeps them clear of that.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def batch_threads() -> int:
    """Threads for llama.cpp's batch tools (llama-perplexity, llama-imatrix): every core.

    They evaluate 512 tokens per op, so a descheduled worker costs a small share of each op
    rather than stalling it as in generation: on 2 cores, one chunk of the 1.5B benchmark's f16
    took 12.4 s with 2 threads against 21.7 s with 1, and 18.1 s against 21.7 s with another
    process keeping one core busy.
    """
    return max(1, os.cpu_count() or 1)


def chunk_ctx(n_tokens: int) -> int:
    """The context size that cuts ``n_tokens`` into at least two chunks (at most 512)."""
    return min(512, 2 ** int(math.log2(n_tokens // 2)))


def tool(name: str, tree: Tree | None = None) -> Path:
    """Path of a built llama.cpp tool, or a ToolchainError naming the command that builds it."""
    tree = tree or locate_tree()
    path = bin_dir(tree) / name
    if not os.access(path, os.X_OK):
        raise ToolchainError(
            f"llama.cpp tool {name} is not built (looked in {path.parent})", REBUILD_HINT
        )
    return path


def save_log(text: str, what: str) -> Path:
    """Keep a failed tool's full output in a temp file an error hint can point to."""
    fd, name = tempfile.mkstemp(prefix=f"deploykit-{what}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(name)


def describe_exit(returncode: int) -> str:
    """``-11`` -> ``killed by SIGSEGV``; ``2`` -> ``exit 2``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def last_error(text: str) -> str:
    """The line of a tool's output that best says what went wrong (the last error-ish line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.search(r"error|failed|invalid|exception", ln, re.I)]
    return (errs or lines or ["no output"])[-1][:300]


def crash_error(name: str, returncode: int, output: str, log: Path | None = None) -> ToolchainError:
    """The error for a tool that died of a signal."""
    log = log or save_log(output, _slug(name))
    return ToolchainError(
        f"{name} crashed ({describe_exit(returncode)}): {last_error(output)}",
        f"its full output is in {log}; {CRASH_HINT}",
    )


@dataclass
class ToolRun:
    """A finished tool run. ``output``: stdout and stderr as they interleaved (only stderr when
    stdout was kept apart, in ``stdout``)."""

    name: str
    cmd: list[str]
    returncode: int
    output: str = field(repr=False)
    stdout: str = field(default="", repr=False)
    _log: Path | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def crashed(self) -> bool:
        return self.returncode < 0

    def lines(self) -> list[str]:
        return self.output.splitlines()

    def last_error(self) -> str:
        return last_error(self.output)

    def log(self) -> Path:
        """The full output, saved once to a temp file."""
        if self._log is None:
            text = "$ " + " ".join(self.cmd) + "\n" + self.stdout + self.output
            self._log = save_log(text, _slug(self.name))
        return self._log

    def log_hint(self, hint: str | None = None) -> str:
        where = f"its full output is in {self.log()}"
        return f"{hint}; {where}" if hint else where

    def check(
        self, what: str | None = None, error: type[DeploykitError] = ToolchainError, hint=None
    ) -> ToolRun:
        """Raise unless the tool succeeded: a crash is a ToolchainError; a clean non-zero exit
        is ``error("<what>: <last error line>")`` (``what`` defaults to "NAME failed")."""
        if self.crashed:
            raise crash_error(self.name, self.returncode, self.stdout + self.output, self.log())
        if not self.ok:
            raise error(
                f"{what or self.name + ' failed'}: {self.last_error()}", self.log_hint(hint)
            )
        return self


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "tool"


def _stream(proc: subprocess.Popen, on_line: Callable[[str], None]) -> str:
    """Read ``proc``'s output to the end, calling ``on_line`` per line (split on \\r and \\n)."""
    assert proc.stdout is not None
    kept: list[str] = []
    pending = b""
    while chunk := proc.stdout.read1(65536):
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for raw in lines:
            if raw:
                line = raw.decode("utf-8", errors="replace")
                kept.append(line)
                on_line(line)
    if pending:
        kept.append(pending.decode("utf-8", errors="replace"))
    return "\n".join(kept) + "\n" if kept else ""


def run(
    cmd: Sequence[str | Path],
    *,
    name: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    bar: str | None = None,
    progress: Progress | None = None,
    keep_stdout: bool = False,
) -> ToolRun:
    """Run a llama.cpp tool to its end and return what it did (``ToolRun.check`` raises).

    ``bar``: show a progress bar with that label while it runs; ``progress`` parses the
    tool's output lines into bar updates (the output is then streamed; ``timeout`` applies to
    runs without ``progress``). ``keep_stdout``: keep stdout apart (for tools that print their
    result there). A tool that cannot start or does not finish in ``timeout`` seconds is a
    ToolchainError.
    """
    argv = [str(c) for c in cmd]
    name = name or Path(argv[0]).name
    stderr = subprocess.PIPE if keep_stdout else subprocess.STDOUT
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
    except OSError as exc:
        raise ToolchainError(f"cannot run {name}: {exc.strerror or exc}", REBUILD_HINT) from None
    try:
        with ui.progress_bar(bar, None) if bar else contextlib.nullcontext() as shown:

            def on_line(line: str) -> None:
                update = progress(line)  # type: ignore[misc]
                if shown is not None and update:
                    shown.update(shown.task_ids[0], **update)

            if progress is not None and not keep_stdout:
                out, err = _stream(proc, on_line), ""
                proc.wait()
            else:
                raw_out, raw_err = proc.communicate(timeout=timeout)
                out = raw_out.decode("utf-8", errors="replace")
                err = (raw_err or b"").decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        raw_out, raw_err = proc.communicate()
        text = (raw_out + (raw_err or b"")).decode("utf-8", errors="replace")
        raise ToolchainError(
            f"{name} did not finish in {timeout:.0f}s",
            f"its output so far is in {save_log(text, _slug(name))}",
        ) from None
    except BaseException:
        proc.kill()  # interrupted: never leave the tool running
        proc.wait()
        raise
    if keep_stdout:
        return ToolRun(name, argv, proc.returncode, err, out)
    return ToolRun(name, argv, proc.returncode, out)


# --- the tools' own questions ------------------------------------------------------------


def tool_version(path: Path) -> str | None:
    """``version: N (commit)`` as the tool prints it, or None."""
    try:
        r = run([path, "--version"], timeout=30)
    except ToolchainError:
        return None
    m = re.search(r"version: .*", r.output)
    return m.group(0).strip() if m else None


_QUANT_LINE = re.compile(r"^\s*(?:(\d+)\s+or\s+)?([A-Z][A-Z0-9_]*)\s+:\s*(.*)$")


def quant_types(tree: Tree | None = None) -> dict[str, str]:
    """The quantization types ``llama-quantize`` itself accepts: NAME -> its description.

    Parsed from the tool's ``--help`` ("allowed quantization types"), so the list always
    matches the pinned build.
    """
    exe = tool("llama-quantize", tree)
    r = run([exe, "--help"], timeout=60)  # usage exits non-zero; the text is what counts
    if "allowed quantization types" not in r.output:
        if r.crashed:
            r.check()
        raise ToolchainError(
            f"could not read the quantization types from {exe} --help", REBUILD_HINT
        )
    types: dict[str, str] = {}
    for line in r.output.split("allowed quantization types", 1)[1].splitlines():
        if m := _QUANT_LINE.match(line):
            types[m.group(2)] = m.group(3).strip()
    return types


def tokenize_file(
    model: Path,
    text_file: Path,
    special: bool,
    tree: Tree | None = None,
    error: type[DeploykitError] = ConversionError,
) -> list[int]:
    """``llama-tokenize`` on a text file with ``model``'s vocabulary (no BOS added); special
    tokens are parsed when ``special``. A clean failure is ``error`` (a crash: ToolchainError)."""
    cmd = [tool("llama-tokenize", tree), "-m", model, "-f", text_file, "--ids", "--no-bos"]
    cmd += ["--no-escape", "--log-disable"] + ([] if special else ["--no-parse-special"])
    r = run(cmd, timeout=600, keep_stdout=True)
    r.check(f"llama-tokenize failed on {Path(model).name}", error)
    try:
        ids = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise error(
            f"llama-tokenize printed no token ids for {Path(model).name}", r.log_hint()
        ) from None
    return ids


def tokenize(
    model: Path,
    text: str,
    special: bool,
    tree: Tree | None = None,
    error: type[DeploykitError] = ConversionError,
) -> list[int]:
    """:func:`tokenize_file` on ``text``."""
    fd, name = tempfile.mkstemp(prefix="deploykit-tok-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return tokenize_file(model, Path(name), special, tree, error)
    finally:
        os.unlink(name)
