"""`deploykit convert`: both demo families convert (bases and merged fine-tunes), the chat
template is always embedded, and every failure is one `error:` line with nothing left behind.

"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.core import fsutil
from deploykit.core.errors import ConversionError
from deploykit.gguf import convert
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.model.hf_dir import ModelDir
from tests.support.cli import invoke, one_error_line, run_cli
from tests.support.models import EXPECTED_PRE, variant

# --- conversions that work ----------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(EXPECTED_PRE))
def test_merged_demo_converts_with_metadata_and_template(arch, f16, merged):
    info = gguf_meta.read(f16[arch])
    assert info.arch == arch
    assert info.file_type == "F16"
    assert info.get("tokenizer.ggml.pre") == EXPECTED_PRE[arch]
    assert info.get("tokenizer.chat_template") == ModelDir(merged[arch]).chat_template
    assert info.get("tokenizer.ggml.eos_token_id") is not None
    assert not [p for p in f16[arch].parent.iterdir() if p.name.endswith(".partial")]


def _stale_template(folder: Path) -> None:
    """transformers 5 layout: the real template in chat_template.jinja, a stale one in
    tokenizer_config.json (which the converter prefers)."""
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "chat_template.jinja").write_text(cfg["chat_template"])
    cfg["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch", sorted(EXPECTED_PRE))
def test_demo_base_converts(arch, demo_dirs, work):
    base = demo_dirs[arch] / "base"
    if arch == "qwen2":
        base = variant(base, work / "base-qwen2-jinja", _stale_template)
    out = work / "bases" / f"{arch}-base-Q8_0.gguf"
    proc = run_cli(
        "convert",
        str(base),
        "--out",
        str(out),
        "--outtype",
        "q8_0",
        "--json",
        "--name",
        "demo base",
        "--metadata",
        "author=deploykit tests",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    info = gguf_meta.read(out)
    assert result["output"] == str(out) and result["bytes"] == out.stat().st_size
    assert info.file_type == "Q8_0" and info.get("general.name") == "demo base"
    assert info.get("general.author") == "deploykit tests"
    assert info.get("tokenizer.ggml.pre") == EXPECTED_PRE[arch]
    # the GGUF carries the template transformers would use (chat_template.jinja wins)
    assert info.get("tokenizer.chat_template") == ModelDir(base).chat_template
    assert result["chat_template"] == ("replaced" if arch == "qwen2" else "embedded")
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f"{arch}-")) == [
        out.name
    ]


# --- failures: one error line, nothing left behind -----------------------------------------


def test_unsupported_architecture_lists_close_matches(demo_dirs, tmp_path):
    def rename_arch(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["architectures"] = ["Qwen2ForCausalLMX"]
        (folder / "config.json").write_text(json.dumps(cfg))

    model = variant(demo_dirs["qwen2"] / "base", tmp_path / "odd", rename_arch)
    out = tmp_path / "out" / "odd.gguf"
    line = one_error_line(invoke("convert", str(model), "--out", str(out)), 6)
    assert "Qwen2ForCausalLMX is not supported" in line
    assert "close matches: Qwen2ForCausalLM" in line
    assert not out.parent.exists()  # refused before anything was written


def test_missing_tokenizer_files(demo_dirs, tmp_path):
    def drop_tokenizer(folder: Path) -> None:
        (folder / "tokenizer.json").unlink()

    model = variant(demo_dirs["llama"] / "base", tmp_path / "notok", drop_tokenizer)
    line = one_error_line(invoke("convert", str(model), "--out", str(tmp_path / "x.gguf")), 3)
    assert "no tokenizer files" in line and "hint:" in line
    assert not (tmp_path / "x.gguf").exists()


def test_unwritable_output(demo_dirs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "model.gguf"
    line = one_error_line(invoke("convert", str(demo_dirs["qwen2"] / "base"), "--out", str(out)), 3)
    assert "cannot create the output folder" in line


def test_not_enough_disk_is_caught_before_starting(demo_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "disk_free", lambda path: 1000)
    with pytest.raises(ConversionError) as exc:
        convert.convert(demo_dirs["qwen2"] / "base", tmp_path / "m.gguf")
    assert "not enough disk space" in exc.value.message
    assert "bytes)" in exc.value.message
    assert list(tmp_path.iterdir()) == []


def test_unrecognised_pre_tokenizer_shows_its_hash(demo_dirs, tmp_path):
    from deploykit.demo.tokenizer import LLAMA3_REGEX

    gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

    def break_regex(folder: Path) -> None:
        text = (folder / "tokenizer.json").read_text()
        old = json.dumps(LLAMA3_REGEX)[1:-1]
        assert old in text
        (folder / "tokenizer.json").write_text(text.replace(old, json.dumps(gpt2)[1:-1]))

    model = variant(demo_dirs["llama"] / "base", tmp_path / "badpre", break_regex)
    out = tmp_path / "out" / "m.gguf"
    line = one_error_line(invoke("convert", str(model), "--out", str(out)), 6)
    assert "pre-tokenizer is not recognised" in line
    assert "chkhsh " in line and "differently from every known tokenizer" in line
    assert list(out.parent.iterdir()) == []
