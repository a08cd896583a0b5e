"""The merge fused into the conversion writes the GGUF that merging, then converting writes:
the same file, byte for byte (so every tensor), for each kind of adapter the fused path takes;
others are merged to a temporary folder first, and say so."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
from peft import IA3Config, LoraConfig

from deploykit.core.errors import MergeError
from deploykit.gguf import convert
from deploykit.merge import merge
from deploykit.pipeline import fused
from tests.support.cli import one_error_line, run_cli
from tests.support.models import make_adapter, once

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _untied(base: Path, out: Path) -> Path:
    """``base`` (a tied demo) with its own output head: lm_head.weight, tie_word_embeddings
    false."""

    def build(tmp: Path) -> None:
        from safetensors.torch import load_file, save_file

        shutil.copytree(base, tmp)
        weights = load_file(base / "model.safetensors")
        emb = weights["model.embed_tokens.weight"]
        weights["lm_head.weight"] = (emb.float() * 0.5 + 0.01).to(emb.dtype)
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((base / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))

    return once(out, build)


#: (demo, untied?, vocabulary rows, adapter configs): one case per kind the fused path takes
CASES = {
    "lora-untied-head": (
        "llama",
        True,
        None,
        [LoraConfig(r=8, lora_alpha=16, target_modules=[*LINEAR, "lm_head"])],
    ),
    "rslora": (
        "llama",
        False,
        None,
        [LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=LINEAR)],
    ),
    "dora": ("qwen2", False, None, [LoraConfig(r=8, target_modules=LINEAR, use_dora=True)]),
    "two-adapters": (
        "llama",
        False,
        None,
        [
            LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR),
            LoraConfig(r=4, target_modules=["q_proj", "o_proj"], use_dora=True),
        ],
    ),
    "modules-to-save": (
        "llama",
        True,
        None,
        [LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"])],
    ),
    "resized-vocabulary": (
        "qwen2",
        False,
        152000,
        [LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"])],
    ),
    "head-untied-by-the-adapter": (
        "qwen2",
        False,
        None,
        [LoraConfig(r=4, target_modules=["v_proj"], modules_to_save=["lm_head"])],
    ),
    "lora-on-the-tied-embedding": (
        "llama",
        False,
        None,
        [LoraConfig(r=8, lora_alpha=16, target_modules=["embed_tokens", "lm_head", "q_proj"])],
    ),
}


def _adapters(demo_dirs, tmp_path, demo, untied, vocab, configs) -> tuple[Path, list[Path]]:
    base = demo_dirs[demo] / "base"
    if untied:
        base = _untied(base, tmp_path.parent / f"untied-{demo}")
    for c in configs:
        c.init_lora_weights = False
    ads = [
        make_adapter(base, c, tmp_path / f"a{i}", vocab=vocab, seed=i)
        for i, c in enumerate(configs)
    ]
    return base, ads


def _two_step(base: Path, ads: list[Path], out: Path, tmp: Path) -> Path:
    """What the fused path replaces: ``deploykit merge`` into ``merged/``, then convert."""
    merge.merge(ads, tmp / "two" / "merged", base=base, dtype="float16")
    convert.convert(tmp / "two" / "merged", out, outtype="f16", name="fine-tune")
    return out


def _fused(base: Path, ads: list[Path], out: Path, tmp: Path) -> dict:
    the_plan = merge.plan(ads, base, "float16")
    merge.write_overlay(the_plan, tmp / "overlay" / "merged")
    return fused.convert_adapters(
        ads, base, tmp / "overlay" / "merged", out, outtype="f16", name="fine-tune"
    )


def assert_same_gguf(a: Path, b: Path) -> None:
    """The same bytes; when not, which tensors differ (or that only the metadata does)."""
    if filecmp.cmp(a, b, shallow=False):
        return
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    assert list(ta) == list(tb), "the tensors differ in names or order"
    bad = [
        n
        for n in ta
        if ta[n].tensor_type != tb[n].tensor_type or not np.array_equal(ta[n].data, tb[n].data)
    ]
    assert not bad, f"{len(bad)} tensors differ: {bad[:5]}"
    pytest.fail("every tensor is the same, but the metadata differs")


@pytest.mark.parametrize("case", list(CASES))
def test_fused_gguf_is_merge_then_convert_byte_for_byte(demo_dirs, tmp_path, case):
    base, ads = _adapters(demo_dirs, tmp_path, *CASES[case])
    result = _fused(base, ads, tmp_path / "fused.gguf", tmp_path)
    assert result["merge"] == "fused" and result["fused_merge"] is True
    assert_same_gguf(tmp_path / "fused.gguf", _two_step(base, ads, tmp_path / "two.gguf", tmp_path))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".deploykit")]


def test_an_unproven_adapter_kind_merges_to_disk_first_and_says_so(demo_dirs, tmp_path):
    cfg = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    base, ads = _adapters(demo_dirs, tmp_path, "qwen2", False, None, [cfg])
    result = _fused(base, ads, tmp_path / "fused.gguf", tmp_path)
    assert result["merge"].startswith("two-step (") and "ia3" in result["merge"]
    assert result["fused_merge"] is False
    assert_same_gguf(tmp_path / "fused.gguf", _two_step(base, ads, tmp_path / "two.gguf", tmp_path))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".deploykit")]


def test_a_fused_merge_that_overflows_float16_fails_closed(demo_dirs, tmp_path):
    """The merge's error crosses the converter's process as itself: one MergeError, the
    tensor named, no GGUF left."""
    from safetensors.torch import load_file, save_file

    base, (ad,) = _adapters(
        demo_dirs, tmp_path, "qwen2", False, None, [LoraConfig(r=4, target_modules=["q_proj"])]
    )
    f = ad / "adapter_model.safetensors"
    save_file({k: v * 3e3 for k, v in load_file(f).items()}, f)
    with pytest.raises(MergeError, match=r"q_proj\.weight has \d+ values outside float16"):
        _fused(base, [ad], tmp_path / "fused.gguf", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0", "overlay"]


def test_convert_with_adapter_from_the_command_line(demo_dirs, tmp_path):
    base, ads = _adapters(demo_dirs, tmp_path, *CASES["rslora"])
    proc = run_cli(
        "convert", str(base), "--adapter", str(ads[0]), "--out", str(tmp_path / "x.gguf"), "--json"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["merge"] == "fused"
    # the overlay folder is named after the adapter, as the merged folder is here
    merge.merge(ads, tmp_path / "two" / ads[0].name, base=base, dtype="float16")
    convert.convert(tmp_path / "two" / ads[0].name, tmp_path / "two.gguf", name=ads[0].name)
    assert_same_gguf(tmp_path / "x.gguf", tmp_path / "two.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0", "two", "two.gguf", "x.gguf"]
    again = run_cli(
        "convert", str(base), "--adapter", str(ads[0]), "--out", str(tmp_path / "x.gguf")
    )
    assert "--force" in one_error_line(again, 3)


def test_the_overlay_is_the_reference_with_the_fine_tune_unmerged(demo_dirs, tmp_path):
    """--verify full on a fused GGUF: logits against the base with the adapter unmerged in
    peft (the overlay has no weights); a changed adapter is refused, not loaded."""
    from deploykit.core.errors import InputError
    from deploykit.gguf import verify

    d = demo_dirs["qwen2"]
    _fused(d / "base", [d / "adapter"], tmp_path / "fused.gguf", tmp_path)
    overlay = tmp_path / "overlay" / "merged"
    assert not list(overlay.glob("*.safetensors"))
    report = verify.verify(tmp_path / "fused.gguf", reference=overlay, probes=d / "probes.json")
    checks = {c.name: c for c in report.checks}
    assert report.ok, [c.detail for c in report.checks if c.status != "pass"]
    assert checks["logits_parity"].data["top1_agreement"] == 1.0
    assert checks["probes"].data["exact"] == 4

    moved = tmp_path / "moved"
    shutil.copytree(d / "adapter", moved)
    prov = json.loads((overlay / "deploykit_merge.json").read_text())
    prov["weights_from"]["adapters"] = [str(moved)]
    (overlay / "deploykit_merge.json").write_text(json.dumps(prov))
    with (moved / "adapter_model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\1")
    with pytest.raises(InputError, match="is gone or has changed"):
        verify.verify(tmp_path / "fused.gguf", reference=overlay)
