"""Run the vendored ``llama-server`` on a GGUF for a while: generate, tokenize, read log-probs.

One server per check session loads the model once; requests go over loopback HTTP. A server
that dies, stops answering or answers with an HTTP error is a ToolchainError (exit 6) for
every caller (verify, eval, the test Ollama server); only a GGUF that llama.cpp refuses to
load (a clean non-zero exit while starting) is a VerificationError: the file is at fault.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from deploykit.core.errors import ToolchainError, VerificationError
from deploykit.llamacpp.tools import (
    REBUILD_HINT,
    crash_error,
    default_threads,
    describe_exit,
    save_log,
    tool,
)
from deploykit.llamacpp.tree import Tree


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A started llama-server: ``post(path, body)`` returns the JSON answer."""

    def __init__(self, url: str, proc: subprocess.Popen, log: IO[bytes]) -> None:
        self.url = url
        self.proc = proc
        self.log = log  # an anonymous temp file: nothing to clean up, even if we are killed
        self.client = httpx.Client(base_url=url, timeout=300)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            resp = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self.failure(f"stopped answering {path} ({exc})") from None
        if 400 <= resp.status_code < 500:  # a request it refuses (too long a prompt, ...)
            raise VerificationError(
                f"llama-server refused {path} (HTTP {resp.status_code}): {resp.text[:300]}",
                "the request does not fit the model (e.g. a prompt longer than its context)",
            )
        if resp.status_code != 200:
            raise self.failure(f"answered {path} with HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def failure(self, what: str) -> ToolchainError:
        """The error for a server that misbehaved: a crash when it died, else ``what``."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)  # a dying server: let it finish dying
        rc = self.proc.poll()
        if rc is not None and rc < 0:
            return crash_error("llama-server", rc, self.text(), self.save_log())
        if rc is not None:
            what = f"exited ({describe_exit(rc)}) instead of answering"
        return ToolchainError(
            f"llama-server {what}", f"its log ends: {self.tail()}; full log: {self.save_log()}"
        )

    def tokenize(self, text: str, special: bool) -> list[int]:
        """llama.cpp's tokenization (no BOS added; special tokens parsed when ``special``)."""
        body = {"content": text, "add_special": False, "parse_special": special}
        return self.post("/tokenize", body)["tokens"]

    def text(self, limit: int = 1 << 20) -> str:
        """The end of the server's log (up to ``limit`` bytes)."""
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            raw = os.pread(fd, limit, max(0, size - limit))  # pread: the child's offset stays
        except (OSError, ValueError):
            return ""
        return raw.decode(errors="replace")

    def tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, on one line."""
        return " | ".join(self.text(65536).strip().splitlines()[-lines:]) or "?"

    def save_log(self) -> Path:
        """The server's log, kept in a file an error hint can name."""
        return save_log(self.text(), "llama-server")


def _wait_ready(server: Server, model: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rc = server.proc.poll()
        if rc is not None and rc < 0:
            raise crash_error("llama-server", rc, server.text(), server.save_log())
        if rc is not None:  # a clean refusal: llama.cpp cannot use this file
            raise VerificationError(
                f"llama.cpp could not load {model} (llama-server exit {rc}): {server.tail()}",
                "the GGUF is broken or needs a newer llama.cpp; reconvert it",
            )
        with contextlib.suppress(httpx.HTTPError):
            if server.client.get("/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ToolchainError(
                f"llama-server did not become ready in {timeout:.0f}s",
                f"its log ends: {server.tail()}; full log: {server.save_log()}",
            )
        time.sleep(0.1)


@contextlib.contextmanager
def serve(
    model: Path,
    tree: Tree | None = None,
    ctx_size: int = 4096,
    threads: int | None = None,
    startup_timeout: float = 300.0,
) -> Iterator[Server]:
    """Start llama-server on ``model`` (loopback, a free port); stop it on exit."""
    exe = tool("llama-server", tree)
    port = free_port()
    cmd = [
        str(exe),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(ctx_size),
        "-np",
        "1",
        "--jinja",
        "--no-webui",
        "-t",
        str(threads or default_threads()),
    ]
    with tempfile.TemporaryFile(prefix="deploykit-llama-server-") as log:
        try:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ToolchainError(
                f"cannot run llama-server: {exc.strerror or exc}", REBUILD_HINT
            ) from None
        server = Server(f"http://127.0.0.1:{port}", proc, log)
        try:
            _wait_ready(server, model, startup_timeout)
            yield server
        finally:
            server.client.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
