"""Run the vendored ``llama-server`` on a GGUF for a while: generate, tokenize, read log-probs.

One server per check session loads the model once; requests go over loopback HTTP.
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

from deploykit.core.errors import VerificationError
from deploykit.llamacpp import tree as llamacpp


def default_threads() -> int:
    """Threads for llama.cpp's compute tools: half the cores.

    ggml's worker threads meet at a spinning barrier after every op; with one thread per core,
    any other busy process (a shared CI runner) stalls every op — measured 70x slower
    generation on 2 busy cores. Half the cores keeps them clear of that.
    """
    return max(1, (os.cpu_count() or 2) // 2)


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
            raise VerificationError(
                f"llama-server stopped answering ({exc})", f"its log ends: {self.tail()}"
            ) from None
        if resp.status_code != 200:
            raise VerificationError(
                f"llama-server {path} answered HTTP {resp.status_code}: {resp.text[:300]}",
                "the GGUF may be unusable by llama.cpp",
            )
        return resp.json()

    def tokenize(self, text: str, special: bool) -> list[int]:
        """llama.cpp's tokenization (no BOS added; special tokens parsed when ``special``)."""
        body = {"content": text, "add_special": False, "parse_special": special}
        return self.post("/tokenize", body)["tokens"]

    def tail(self, lines: int = 3) -> str:
        """The last lines of the server's log."""
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            raw = os.pread(fd, 65536, max(0, size - 65536))  # pread: the child's offset stays
        except (OSError, ValueError):
            return "?"
        return " | ".join(raw.decode(errors="replace").strip().splitlines()[-lines:])


def _wait_ready(server: Server, model: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise VerificationError(
                f"llama.cpp could not load {model} (llama-server exit {server.proc.returncode}): "
                f"{server.tail()}",
                "the GGUF is broken or needs a newer llama.cpp; reconvert it",
            )
        with contextlib.suppress(httpx.HTTPError):
            if server.client.get("/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise VerificationError(
                f"llama-server did not become ready in {timeout:.0f}s",
                f"its log ends: {server.tail()}",
            )
        time.sleep(0.1)


@contextlib.contextmanager
def serve(
    model: Path,
    tree: llamacpp.Tree | None = None,
    ctx_size: int = 4096,
    threads: int | None = None,
    startup_timeout: float = 300.0,
) -> Iterator[Server]:
    """Start llama-server on ``model`` (loopback, a free port); stop it on exit."""
    exe = llamacpp.tool("llama-server", tree)
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
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
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
