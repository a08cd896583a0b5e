"""`llamacpp.tools.run`: every llama.cpp tool run shares one failure handling. A tool killed by
a signal is a toolchain error (exit 6) whatever the caller would make of a clean failure; a
clean failure names its last error line and a log with the full output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploykit.core.errors import ToolchainError, VerificationError
from deploykit.llamacpp import tools


def test_a_tool_killed_by_a_signal_is_a_toolchain_error():
    script = "import os, signal; print('loading model ...', flush=True); os.kill(os.getpid(), 11)"
    run = tools.run([sys.executable, "-c", script], name="llama-fake")
    assert run.crashed and not run.ok
    with pytest.raises(ToolchainError) as exc:
        run.check("llama-fake failed", VerificationError)  # a crash is never the caller's class
    err = exc.value
    assert err.exit_code == 6
    assert "llama-fake crashed (killed by SIGSEGV)" in err.message
    log = err.hint.split("its full output is in ", 1)[1].split(";", 1)[0]
    assert "loading model ..." in Path(log).read_text()


def test_a_clean_failure_is_the_callers_error_with_the_last_error_line():
    script = (
        "import sys; print('step 1'); print('error: cannot open model.gguf', file=sys.stderr);"
        " print('bye'); sys.exit(2)"
    )
    run = tools.run([sys.executable, "-c", script], name="llama-fake")
    assert run.returncode == 2 and not run.crashed
    with pytest.raises(VerificationError) as exc:
        run.check("llama-fake failed on x.gguf", VerificationError, "reconvert it")
    assert exc.value.message == "llama-fake failed on x.gguf: error: cannot open model.gguf"
    assert exc.value.hint.startswith("reconvert it; its full output is in ")


def test_progress_lines_split_on_carriage_returns():
    seen = []
    script = r"import sys; sys.stdout.write('Writing: 10%\rWriting: 55%\rdone\n')"
    run = tools.run(
        [sys.executable, "-c", script],
        progress=lambda line: seen.append(line) or None,
    )
    assert run.ok and seen == ["Writing: 10%", "Writing: 55%", "done"]


def test_kept_stdout_timeouts_and_missing_programs():
    script = "import sys; print('[1, 2]'); print('log line', file=sys.stderr)"
    run = tools.run([sys.executable, "-c", script], keep_stdout=True)
    assert run.stdout == "[1, 2]\n" and run.output == "log line\n"
    with pytest.raises(ToolchainError, match=r"llama-slow did not finish in 1s"):
        tools.run(
            [sys.executable, "-c", "import time; time.sleep(30)"], name="llama-slow", timeout=1
        )
    with pytest.raises(ToolchainError, match="cannot run llama-nothing"):
        tools.run(["/nonexistent/llama-nothing"])


def test_chunk_context_gives_two_chunks():
    assert tools.chunk_ctx(tools.MIN_CALIBRATION_TOKENS) == 32
    assert tools.chunk_ctx(1000) == 256 and tools.chunk_ctx(100_000) == 512
