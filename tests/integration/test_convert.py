"""The vendored converter turns every demo base into a GGUF with the right pre-tokenizer."""

from __future__ import annotations

import subprocess

import pytest
from gguf import GGUFReader

from deploykit.llamacpp import tree as llamacpp
from tests.support.models import DEMO_GGUF


def _field(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value[0]


@pytest.fixture(scope="module", params=sorted(DEMO_GGUF))
def converted(request, demo_dirs, tree, tmp_path_factory):
    arch = request.param
    out = tmp_path_factory.mktemp(f"gguf-{arch}") / "model-F16.gguf"
    cmd = llamacpp.converter_cmd(
        tree, str(demo_dirs[arch] / "base"), "--outtype", "f16", "--outfile", str(out)
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=llamacpp.converter_env(tree))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return arch, GGUFReader(out), demo_dirs[arch]


def test_pre_tokenizer_is_recognised(converted):
    arch, reader, _ = converted
    keys = ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre")
    assert tuple(_field(reader, k) for k in keys) == DEMO_GGUF[arch]


def test_gguf_carries_the_models_chat_template(converted):
    import json

    _, reader, d = converted
    cfg = json.loads((d / "base" / "tokenizer_config.json").read_text())
    assert _field(reader, "tokenizer.chat_template") == cfg["chat_template"]


def test_converter_uses_bundled_gguf_py(tree, monkeypatch):
    monkeypatch.setenv("NO_LOCAL_GGUF", "1")
    env = llamacpp.converter_env(tree)
    assert "NO_LOCAL_GGUF" not in env
    assert env["PYTHONPATH"].split(":")[0] == str(tree.gguf_py)
