"""Running deploykit as a user would (a subprocess) or in-process (Click's CliRunner)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run ``deploykit ARGS`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@dataclass
class Result:
    """What ``invoke`` returns: the same fields as a finished subprocess."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``deploykit ARGS`` in this process (Click's CliRunner): exit code, stdout, stderr.

    For commands whose behaviour does not depend on being a separate process; ``main``'s
    error handling (one ``error:`` line, the exit code) runs as in a subprocess.
    """
    from click.testing import CliRunner

    from deploykit.cli.main import main

    with CliRunner().isolation(env=env) as streams:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = (s.getvalue().decode("utf-8", "replace") for s in streams[:2])
    return Result(code, out, err)


def one_error_line(proc, code: int) -> str:
    """The single ``error:`` line of a failed run with exit ``code`` (and no traceback)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]
