"""Build and run the Go helper that renders an Ollama TEMPLATE with Ollama's data model.

Verification tooling: the parity tests use it to prove a family's Go TEMPLATE renders
conversations exactly as the model's Jinja chat template does. It needs Go (Debian's
``golang-go``), uses only Go's standard library, and is built on first use into
``<cache>/gotemplate/<key>/`` (never committed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from deploykit.core.errors import ConversionError
from deploykit.core.fsutil import atomic_dir
from deploykit.core.paths import cache_dir

SOURCE = Path(__file__).with_name("main.go")


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise ConversionError("Go is not installed", "install it: apt-get install golang-go")
    return go


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOCACHE=str(work / "gocache"),
        GOPATH=str(work / "gopath"),
        GO111MODULE="off",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="",
        CGO_ENABLED="0",
    )
    return env


def build(root: Path | None = None) -> Path:
    """The helper binary, built once per source and Go version under ``root`` (default: cache)."""
    go = _go()
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:12]
    final = (root or cache_dir() / "gotemplate") / key
    binary = final / "gotemplate"
    if os.access(binary, os.X_OK):
        return binary
    with atomic_dir(final, replace=True) as tmp:
        shutil.copy2(SOURCE, tmp / "main.go")
        out = subprocess.run(
            [go, "build", "-o", str(tmp / "gotemplate"), str(tmp / "main.go")],
            capture_output=True,
            text=True,
            env=_go_env(tmp),
            cwd=tmp,
        )
        if out.returncode != 0:
            raise ConversionError(
                f"building the Go template helper failed: {out.stderr.strip()[:300]}",
                "check the Go installation (go version >= 1.18)",
            )
        for sub in ("gocache", "gopath", "main.go"):
            p = tmp / sub
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return binary


def render(binary: Path, template: str, cases: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Render ``template`` for each case (``messages``, ``tools``, ``think``, ``date``).

    Returns one ``{"output": str}`` or ``{"error": str}`` per case; a template that Go
    cannot parse raises ValueError with Go's message.
    """
    return _run(binary, template, cases)["results"]


def tool_tag(binary: Path, template: str) -> str:
    """The tag Ollama's tool-call parser looks for in output generated with ``template``."""
    return _run(binary, template, [])["tag"]


def think_tags(binary: Path, template: str) -> tuple[str, str]:
    """The opening and closing tags Ollama's thinking parser infers from ``template``
    (``("", "")`` when it finds none)."""
    opening, closing = _run(binary, template, [])["think_tags"]
    return opening, closing


def _run(binary: Path, template: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    proc = subprocess.run(
        [str(binary)],
        input=json.dumps({"template": template, "cases": cases}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip())
    return json.loads(proc.stdout)
