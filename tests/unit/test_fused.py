"""The fused merge's plumbing: errors that cross the converter's process, which adapters it
takes, and the order it feeds tensors in (the converter's own reading order)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import IA3Config, LoraConfig
from transformers import AutoModelForCausalLM, LlamaConfig

from deploykit.core.errors import ConversionError, MergeError
from deploykit.llamacpp.hooked import ERROR, UNSUPPORTED, FusedUnsupported, error_from
from deploykit.merge import fused, merge
from tests.support.models import TINY, make_adapter


def test_a_reported_error_comes_back_as_its_own_class_after_a_progress_bar():
    line = ERROR + json.dumps({"class": "MergeError", "message": "x overflows", "hint": "h"})
    got = error_from(f"INFO: a\nWriting:  97%|###  | 77.8M/80.2M\r{line}\nWriting:  98%\n")
    assert isinstance(got, MergeError) and (got.message, got.hint) == ("x overflows", "h")


@pytest.mark.parametrize(
    "payload, cls",
    [
        ({"class": "NotAnError", "message": "m"}, ConversionError),
        ({"class": "InputError", "message": "m" * 2000}, None),
    ],
)
def test_a_reported_error_is_bounded_and_only_a_deploykit_error(payload, cls):
    got = error_from(ERROR + json.dumps(payload))
    assert got is not None and len(got.message) <= 500
    if cls is not None:
        assert type(got) is cls


def test_garbage_and_unsupported_lines():
    assert error_from(ERROR + "{not json") is None
    assert error_from("plain failure\n") is None
    got = error_from(f"x\n{UNSUPPORTED}the converter's Foo reads its tensors its own way\n")
    assert isinstance(got, FusedUnsupported) and "Foo" in got.message


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
