"""The fused merge's plumbing: errors that cross the converter's process, which adapters it
takes, and the order it feeds tensors in (the converter's own reading order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig
from transformers import AutoModelForCausalLM, LlamaConfig

from deploykit.core.errors import ConversionError, MergeError
from deploykit.llamacpp import hooked
from deploykit.llamacpp.hooked import (
    ERROR_EXIT,
    UNSUPPORTED_EXIT,
    FusedUnsupported,
    TensorSource,
    reported,
)
from deploykit.merge import fused, merge
from tests.support.models import TINY, make_adapter


def _source(tmp_path, report: str | None) -> TensorSource:
    src = TensorSource("m:f", tmp_path / "plan.json")
    if report is not None:
        src.report.write_text(report)
    return src


def test_a_reported_error_comes_back_as_its_own_class_bounded(tmp_path):
    data = {"class": "MergeError", "message": "x\noverflows " + "y" * 900, "hint": "h"}
    got = reported(_source(tmp_path, json.dumps(data)), ERROR_EXIT)
    assert isinstance(got, MergeError) and got.hint == "h"
    assert got.message.startswith("x overflows") and len(got.message) == 500


@pytest.mark.parametrize("kind", ["NotAnError", "Interrupted", "Path"])
def test_a_reported_class_is_a_deploykit_error_or_a_conversion_error(tmp_path, kind):
    got = reported(_source(tmp_path, json.dumps({"class": kind, "message": "m"})), ERROR_EXIT)
    assert type(got) is ConversionError


def test_no_report_or_another_exit_is_no_report(tmp_path):
    """Only the converter's own exit codes with the caller's report file count: text in the
    converter's output (a model's chat template, say) cannot pose as one."""
    good = json.dumps({"class": "InputError", "message": "m"})
    assert reported(_source(tmp_path, good), 1) is None
    assert reported(_source(tmp_path / "none", None), ERROR_EXIT) is None
    assert reported(_source(tmp_path, "{not json"), ERROR_EXIT) is None
    got = reported(
        _source(tmp_path, json.dumps({"class": "x", "message": "Foo"})), UNSUPPORTED_EXIT
    )
    assert isinstance(got, FusedUnsupported) and got.message == "Foo"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused-base")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY, tie_word_embeddings=False))
    model.to(torch.bfloat16).save_pretrained(root / "base")
    return root / "base"


def test_only_proven_adapter_kinds_are_fused(base, tmp_path):
    lora = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "lora")
    assert fused.refusal(merge.plan([lora], base)) is None
    ia3 = make_adapter(
        base,
        IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]),
        tmp_path / "ia3",
    )
    assert "ia3" in fused.refusal(merge.plan([ia3], base))


def test_tensors_are_fed_in_the_order_the_converter_reads_the_merged_folder(base, tmp_path):
    """Shard by shard (merge's shards), each shard's tensors by name, as gguf-py's
    SafetensorsLocal sorts them."""
    from deploykit.merge.safetensors_io import read_header

    lora = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "lora")
    merge.merge([lora], tmp_path / "out", base=base, shard_size="64KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    read_back = [
        name for f in files for name in sorted(e.name for e in read_header(tmp_path / "out" / f)[0])
    ]
    the_plan = merge.plan([lora], base, shard_size="64KB")
    assert [o.name for o in the_plan.converter_order()] == read_back


def test_the_overlay_is_the_merged_folder_without_weights(base, tmp_path):
    lora = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "lora")
    merge.merge([lora], tmp_path / "merged", base=base)
    merge.write_overlay(merge.plan([lora], base), tmp_path / "overlay")
    have = {p.name for p in (tmp_path / "overlay").iterdir()}
    want = {p.name for p in (tmp_path / "merged").iterdir()}
    assert have == {n for n in want if not n.startswith("model")}
    assert (tmp_path / "overlay" / "config.json").read_text() == (
        tmp_path / "merged" / "config.json"
    ).read_text()
    with pytest.raises(MergeError):  # its own checks: an existing folder is not replaced
        merge.write_overlay(merge.plan([lora], base), tmp_path / "overlay")


def test_the_overlay_links_the_inputs_files_and_merge_copies_them(base, tmp_path, monkeypatch):
    """The overlay's tokenizer and generation config are hard links to the base's (no disk);
    what it writes itself (config.json, provenance) are its own files; removing the overlay
    leaves the inputs whole. ``merge`` copies: its folder is the user's to edit. Where a link
    is refused, the overlay copies too."""
    import errno
    import os
    import shutil

    base = Path(shutil.copytree(base, tmp_path / "base"))
    (base / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (base / "tokenizer_config.json").write_text("{}")
    lora = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "lora")
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    ino = {p.name: p.stat().st_ino for p in base.iterdir()}
    summary = merge.write_overlay(merge.plan([lora], base), tmp_path / "overlay")
    merge.merge([lora], tmp_path / "merged", base=base)
    assert {"tokenizer.json", "generation_config.json"} <= set(summary["files_copied"])
    for name in summary["files_copied"]:
        assert (tmp_path / "overlay" / name).stat().st_ino == ino[name]
        assert (tmp_path / "merged" / name).stat().st_ino != ino[name]
    for name in ("config.json", "deploykit_merge.json"):
        assert (tmp_path / "overlay" / name).stat().st_ino not in ino.values()
    shutil.rmtree(tmp_path / "overlay")
    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    merge.write_overlay(merge.plan([lora], base), tmp_path / "overlay")
    for name in summary["files_copied"]:
        got = tmp_path / "overlay" / name
        assert got.stat().st_ino != ino[name] and got.read_bytes() == before[name]


def test_the_converters_process_asks_for_huge_pages_unless_the_user_said_otherwise():
    """PyTorch's huge-page switch is on in the converter's environment; a user's own value of
    it is kept, and the import path puts this deploykit first."""
    env = hooked.environment({"PATH": "/bin"})
    assert env["THP_MEM_ALLOC_ENABLE"] == "1" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(":")[0] == str(Path(fused.__file__).resolve().parents[2])
    assert hooked.environment({"THP_MEM_ALLOC_ENABLE": "0"})["THP_MEM_ALLOC_ENABLE"] == "0"


def test_cast_buffers_share_pages_only_with_tensors_no_longer_held(tmp_path):
    """A cast buffer reuses the bytes of one nothing holds (the file does not grow), and never
    those of a tensor still held, views and numpy arrays of it included."""
    import gc
    import os

    from deploykit.merge.fused import CastBuffers

    bufs = CastBuffers(tmp_path)
    size = lambda: os.fstat(bufs._file.fileno()).st_size  # noqa: E731
    first = bufs.get(torch.float16, (1000, 8))
    first.fill_(1)
    held = first.reshape(-1)[10:].numpy()  # what the converter makes of a tensor: views
    del first
    second = bufs.get(torch.float16, (1000, 8))
    second.fill_(2)
    assert (held == 1).all() and size() == 2 * 16384  # held: new bytes, each a page multiple
    del held
    gc.collect()
    third = bufs.get(torch.float16, (500, 8))  # smaller: fits the first's bytes, now free
    third.fill_(3)
    assert size() == 2 * 16384 and (second == 2).all()
    assert bufs.get(torch.float16, (0, 8)).shape == (0, 8) and not list(tmp_path.iterdir())


def test_the_providers_tensors_are_the_merged_folders_casts_through_shared_buffers_included(
    base, tmp_path, monkeypatch
):
    """Every tensor the converter is given equals the merged folder's, with every untouched
    cast (the embedding, the head, the norms) through the file-backed buffers, taken one at a
    time as the converter takes them (so a buffer is reused once its tensor is dropped)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    monkeypatch.setattr(fused, "MAPPED_CAST", 0)
    lora = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "lora")
    merge.merge([lora], tmp_path / "merged", base=base, dtype="float16")
    expected = {}
    for f in (tmp_path / "merged").glob("*.safetensors"):
        expected.update(load_file(f))
    (tmp_path / "scratch").mkdir()
    src = fused.source(merge.plan([lora], base, "float16"), tmp_path / "scratch")
    model = SimpleNamespace(lazy=False, filter_tensors=lambda item: item)
    gens = fused.tensors(model, None, src.plan)
    assert sorted(gens) == sorted(expected)
    allocated, fallocate = [], fused.os.posix_fallocate
    monkeypatch.setattr(fused.os, "posix_fallocate", lambda *a: allocated.append(fallocate(*a)))
    for name, gen in gens.items():
        assert torch.equal(gen(), expected[name]), name
    assert len(allocated) == 1  # the head's bytes, then the embedding's and the norms'
    assert src.scratch_bytes == max(t.nbytes for n, t in expected.items() if "q_proj" not in n)


WRITE_BOTH_WAYS = r"""
import sys
from pathlib import Path
tree, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(tree / "gguf-py"))  # the vendored gguf-py, as the converter imports it
import numpy as np
import gguf
from gguf.lazy import LazyChunkedTensor, LazyNumpyTensor
from deploykit.llamacpp import hooked

def write(path, chunked):
    g = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    base = g.standard_normal((300, 70)).astype(np.float32)
    w.add_tensor("contiguous", g.standard_normal((1000, 33)).astype(np.float16))
    w.add_tensor("transposed", base.T)  # non-contiguous: written a few rows at a time
    w.add_tensor("strided", base[:, 3])
    w.add_tensor("scalar", np.array(3.0, dtype=np.float32))
    meta = LazyNumpyTensor.meta_with_dtype_and_shape(np.float32, (70, 300))
    w.add_tensor("lazy", LazyNumpyTensor(meta=meta, args=(base,), func=lambda b: b.T * 2))
    if chunked:
        rows = [lambda i=i: base[i : i + 100] for i in range(0, 300, 100)]
        w.add_tensor("chunked", LazyChunkedTensor(rows, (300, 70), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    kind = type(w.fout[0]).__name__
    w.close()
    return kind

for chunked in (False, True):
    plain = write(out / f"plain-{chunked}.gguf", chunked)
    if chunked is False:
        hooked._write_direct()
    print(plain, write(out / f"ours-{chunked}.gguf", chunked))
"""


def test_the_converters_gguf_written_direct_is_gguf_pys_byte_for_byte(tree, tmp_path):
    """The vendored gguf-py's writer, patched as the fused converter patches it, writes the
    bytes it writes unpatched: contiguous, transposed, strided, 0-d and lazy tensors through
    a DirectFile; a file with a row-chunked tensor (which only gguf-py can write) through the
    files it opens itself."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", WRITE_BOTH_WAYS, str(tree.path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        "BufferedWriter",
        "DirectFile",
        "BufferedWriter",
        "BufferedWriter",
    ]
    for chunked in (False, True):
        ours, plain = (tmp_path / f"{k}-{chunked}.gguf" for k in ("ours", "plain"))
        assert ours.read_bytes() == plain.read_bytes(), chunked


def test_cast_buffers_cut_small_casts_from_a_large_free_one(tmp_path):
    """Smaller casts held at once share a larger free region (cut, neighbours joined again
    once free) rather than growing the file."""
    import os

    from deploykit.merge.fused import CastBuffers

    bufs = CastBuffers(tmp_path)
    size = lambda: os.fstat(bufs._file.fileno()).st_size  # noqa: E731
    big = bufs.get(torch.uint8, (8 * 4096,))
    del big
    parts = [bufs.get(torch.uint8, (4096 + 1,)) for _ in range(4)]  # two pages each, held
    for k, p in enumerate(parts):
        p.fill_(k)
    assert size() == 8 * 4096 and all((p == k).all() for k, p in enumerate(parts))
    del parts, p  # (the loop variable holds the last one)
    assert bufs.get(torch.uint8, (8 * 4096,)) is not None and size() == 8 * 4096
