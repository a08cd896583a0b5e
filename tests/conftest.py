"""Every shared fixture: the llama.cpp tree, the demo models, merged models and GGUFs built once
per session, and the Ollama-compatible test server."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


class Lazy(Mapping):
    """``{arch: value}`` over ``keys``, each built by ``build(arch)`` the first time a test
    asks for it: a session pays only for the demo architectures its tests use."""

    def __init__(self, keys, build):
        self._keys, self._build, self._done = list(keys), build, {}

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._done:
            self._done[key] = self._build(key)
        return self._done[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory, tree) -> Mapping[str, Path]:
    """``{arch: DIR}`` with DIR/base, DIR/adapter, DIR/probes.json (cached across runs)."""

    def build(arch: str) -> Path:
        d = tmp_path_factory.mktemp(f"demo-{arch}")
        models.init(d, arch, tree.path)
        return d

    return Lazy(models.ARCHS, build)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """One folder for the session's merged models and GGUFs."""
    root = tmp_path_factory.getbasetemp() / "gguf-work"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def merged(work, demo_dirs) -> Mapping[str, Path]:
    """Each demo fine-tune merged by peft (the reference merge)."""
    return Lazy(models.ARCHS, lambda arch: built.merged_model(work, demo_dirs[arch], arch))


@pytest.fixture(scope="session")
def f16(work, merged) -> Mapping[str, Path]:
    """Each merged demo converted to ``<arch>-F16.gguf``."""
    return Lazy(models.ARCHS, lambda arch: built.gguf(work, merged[arch], f"{arch}-F16.gguf"))


@pytest.fixture(scope="session")
def quants(work, f16) -> Mapping[str, dict[str, Path]]:
    """``{arch: {"Q8_0": path, "Q4_K_M": path}}`` of the merged demos."""
    return Lazy(models.ARCHS, lambda arch: built.quantized(work, f16[arch]))


@pytest.fixture(scope="module")
def ollama_server():
    """The Ollama-compatible test server as its own process; its URL."""
    with ollama_process() as url:
        yield url
