"""The fail-closed corpus for ship, convert, modelfile and the toolchain: bad inputs and faults
that need no built llama.cpp tool. Each row: exit code of its class, one error line with a
hint, no traceback, nothing outside deploykit's own outputs touched (tests/support/corpus.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.corpus import CWD, Case, run

HOSTILE_JINJA = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def base(demo_dirs) -> Path:
    return demo_dirs["qwen2"] / "base"


def _copy(src: Path, dest: Path, edit=None) -> None:
    shutil.copytree(src, dest)
    if edit is not None:
        edit(dest)


def _config(**changes):
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 3)


def _pickles_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _tiny_gguf(path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_chat_template(HOSTILE_JINJA)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _hostile_model(root: Path, base: Path) -> None:
    _copy(base, root / "model")
    (root / "model" / "chat_template.jinja").write_text(HOSTILE_JINJA)
    _tiny_gguf(root / "model.gguf")


def cases(base: Path) -> list[Case]:
    adapter = base.parent / "adapter"
    return [
        Case(
            "ship --name with a tag",
            ["ship", "--adapter", str(adapter), "--name", "acme:v1"],
            3,
            "has a tag, but ship makes the tags",
        ),
        Case(
            "ship --out above the adapter",
            ["ship", "--adapter", "{root}/project/lora", "--out", "{root}/project", "--force"],
            3,
            "is an input or holds one",
            setup=lambda r: _copy(adapter, r / "project" / "lora"),
        ),
        Case(
            "ship --out with someone else's manifest.json",
            ["ship", "--adapter", str(adapter), "--out", "{root}/dist"],
            3,
            "was not written by deploykit",
            setup=lambda r: (
                (r / "dist").mkdir(),
                (r / "dist" / "manifest.json").write_text('{"name": "mine"}'),
            ),
        ),
        Case(
            "convert onto an existing file without --force",
            ["convert", str(base), "--out", "{root}/cwd/model.gguf"],
            3,
            "already exists (hint: pass --force",
            setup=lambda r: (r / CWD / "model.gguf").write_text("the user's file"),
        ),
        Case(
            "convert a model whose config lies about its layers",
            ["convert", "{root}/model", "--out", "{root}/out/model.gguf"],
            3,
            "says num_hidden_layers = 1000000000, the weights have 2",
            setup=lambda r: _copy(base, r / "model", _config(num_hidden_layers=1_000_000_000)),
        ),
        Case(
            "convert a model whose config lies about its width",
            ["convert", "{root}/model", "--out", "{root}/out/model.gguf"],
            3,
            "says hidden_size = 4096, the weights have 256",
            setup=lambda r: _copy(base, r / "model", _config(hidden_size=4096)),
        ),
        Case(
            "convert truncated weights",
            ["convert", "{root}/model", "--out", "{root}/out/model.gguf"],
            3,
            "is a truncated or corrupt safetensors file",
            setup=lambda r: _copy(base, r / "model", _truncate),
        ),
        Case(
            "convert pickled weights without --allow-pickle",
            ["convert", "{root}/model", "--out", "{root}/out/model.gguf"],
            3,
            "has only pickled weights (pytorch_model.bin): loading them runs code",
            setup=lambda r: _copy(base, r / "model", _pickles_only),
        ),
        Case(
            "a chat template that loops forever",
            [
                "modelfile",
                "--gguf",
                "{root}/model.gguf",
                "--model-dir",
                "{root}/model",
                "--out",
                "{root}/out/Modelfile",
            ],  # fmt: skip
            3,
            "the chat template took longer than 1 s to render",
            setup=lambda r: _hostile_model(r, base),
            env={"DEPLOYKIT_TEMPLATE_TIMEOUT": "1"},
        ),
        Case(
            "a chat template read from the GGUF that loops forever",
            ["modelfile", "--gguf", "{root}/model.gguf", "--out", "{root}/out/Modelfile"],
            3,
            "the chat template took longer than 1 s to render",
            setup=lambda r: _hostile_model(r, base),
            env={"DEPLOYKIT_TEMPLATE_TIMEOUT": "1"},
        ),
    ]


CASE_IDS = [c.id for c in cases(Path("base"))]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_fails_closed(base, tmp_path, case_id):
    run(next(c for c in cases(base) if c.id == case_id), tmp_path)
