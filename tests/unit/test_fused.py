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


def test_the_converters_process_asks_for_huge_pages_unless_the_user_said_otherwise():
    """PyTorch's huge-page switch is on in the converter's environment; a user's own value of
    it is kept, and the import path puts this deploykit first."""
    env = hooked.environment({"PATH": "/bin"})
    assert env["THP_MEM_ALLOC_ENABLE"] == "1" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(":")[0] == str(Path(fused.__file__).resolve().parents[2])
    assert hooked.environment({"THP_MEM_ALLOC_ENABLE": "0"})["THP_MEM_ALLOC_ENABLE"] == "0"
