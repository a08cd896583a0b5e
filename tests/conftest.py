"""Session-wide fixtures: the llama.cpp tree and the demo models, built once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit import llamacpp
from deploykit.demo import models

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tree() -> llamacpp.Tree:
    """The llama.cpp tree under test (`make vendor` puts it in place)."""
    return llamacpp.locate_tree()


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory, tree) -> dict[str, Path]:
    """``{arch: DIR}`` with DIR/base, DIR/adapter, DIR/probes.json (cached across runs)."""
    out = {}
    for arch in models.ARCHS:
        d = tmp_path_factory.mktemp(f"demo-{arch}")
        models.init(d, arch, tree.path)
        out[arch] = d
    return out


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run ``deploykit ARGS`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
