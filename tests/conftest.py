"""Every shared fixture: the llama.cpp tree, the demo models, merged models and GGUFs built once
per session, and the Ollama-compatible test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploykit.demo import models
from deploykit.llamacpp import tree as llamacpp
from tests.support import models as built
from tests.support.ollama_server import process as ollama_process

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ needs the built llama.cpp tools."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.toolchain)


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


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """One folder for the session's merged models and GGUFs."""
    root = tmp_path_factory.getbasetemp() / "gguf-work"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def merged(work, demo_dirs) -> dict[str, Path]:
    """Each demo fine-tune merged by peft (the reference merge)."""
    return {arch: built.merged_model(work, demo_dirs[arch], arch) for arch in built.EXPECTED_PRE}


@pytest.fixture(scope="session")
def f16(work, merged) -> dict[str, Path]:
    """Each merged demo converted to ``<arch>-F16.gguf``."""
    return {arch: built.gguf(work, merged[arch], f"{arch}-F16.gguf") for arch in merged}


@pytest.fixture(scope="session")
def quants(work, f16) -> dict[str, dict[str, Path]]:
    """``{arch: {"Q8_0": path, "Q4_K_M": path}}`` of the merged demos."""
    return {arch: built.quantized(work, f16[arch]) for arch in f16}


@pytest.fixture(scope="module")
def ollama_server():
    """The Ollama-compatible test server as its own process; its URL."""
    with ollama_process() as url:
        yield url
