"""Merged demo models and GGUFs built once per test session (under pytest's base temp folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.cli import run_cli

EXPECTED_PRE = {"qwen2": "qwen2", "llama": "llama-bpe"}
#: Every demo as the converter writes it: (general.architecture, tokenizer.ggml.model,
#: tokenizer.ggml.pre). Qwen3.5's vocabulary file is Qwen2's with Qwen3.5's regex, which splits
#: the converter's check text exactly as Qwen2's does: its hash names `qwen2` (and llama.cpp's
#: qwen35 test vectors tokenize the same either way). Gemma 4 has no pre-tokenizer entry: its
#: tokenizer model `gemma4` implies one.
DEMO_GGUF = {
    "qwen2": ("qwen2", "gpt2", "qwen2"),
    "llama": ("llama", "gpt2", "llama-bpe"),
    "qwen3.5": ("qwen35", "gpt2", "qwen2"),
    "gemma4": ("gemma4", "gemma4", None),
}
#: The shape of the tiny random models the merge and hub tests build (a few hundred KB).
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=320,
    max_position_embeddings=128,
)


def load_base(base: Path, vocab: int | None = None, dtype="auto"):
    """``base`` in transformers, its vocabulary resized to ``vocab`` rows when given."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if vocab:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return model


def make_adapter(
    base: Path, config, out: Path, vocab: int | None = None, seed: int = 1, dtype="auto", **save
) -> Path:
    """A peft adapter whose every trainable parameter is perturbed (nothing left at init)."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_base(base, vocab, dtype), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out, **save)
    return out


def once(path: Path, build) -> Path:
    """``build(tmp)`` into a temp path, renamed to ``path``; reused when it already exists."""
    if not path.exists():
        tmp = path.with_name(path.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            tmp.unlink()
        build(tmp)
        tmp.rename(path)
    return path


def merged_model(root: Path, demo_dir: Path, arch: str) -> Path:
    """The demo fine-tune merged into its base with peft (bf16, tokenizer files copied)."""

    def build(out: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(demo_dir / "base", dtype=torch.float32)
        model = PeftModel.from_pretrained(base, demo_dir / "adapter").merge_and_unload()
        model.to(torch.bfloat16).save_pretrained(out)
        _carry_unloaded(demo_dir / "base", out)
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copyfile(demo_dir / "base" / name, out / name)

    return once(root / f"merged-{arch}", build)


def _carry_unloaded(base: Path, out: Path) -> None:
    """Copy the base's tensors transformers does not load (Qwen3.5's ``mtp.*`` block) into the
    merged ``model.safetensors`` unchanged, as merging the whole checkpoint would."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    merged = load_file(out / "model.safetensors")
    with safe_open(base / "model.safetensors", "pt") as f:
        extra = {k: f.get_tensor(k) for k in f.keys() if k not in merged}  # noqa: SIM118
    if extra:
        save_file({**merged, **extra}, out / "model.safetensors", metadata={"format": "pt"})
        shutil.copyfile(base / "config.json", out / "config.json")  # it declares the block


def variant(src: Path, out: Path, edit) -> Path:
    """A copy of model folder ``src`` (weights symlinked) changed by ``edit(folder)``."""

    def build(tmp: Path) -> None:
        tmp.mkdir()
        for f in src.iterdir():
            if f.suffix == ".safetensors":
                (tmp / f.name).symlink_to(f)
            else:
                shutil.copyfile(f, tmp / f.name)
        edit(tmp)

    return once(out, build)


def gguf(root: Path, model: Path, name: str, *extra: str) -> Path:
    """``deploykit convert MODEL --out root/NAME`` through the CLI, once per session."""

    def build(tmp: Path) -> None:
        proc = run_cli("convert", str(model), "--out", str(tmp), "--json", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]

    return once(root / name, build)


def quantized(root: Path, f16_file: Path) -> dict[str, Path]:
    """Q8_0 and Q4_K_M of ``f16_file`` in one call, once per session."""
    outs = {t: root / f16_file.name.replace("-F16", f"-{t}") for t in ("Q8_0", "Q4_K_M")}
    if not all(p.exists() for p in outs.values()):
        proc = run_cli("quantize", str(f16_file), "--quant", "q8_0,Q4_K_M", "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert [o["type"] for o in result["outputs"]] == ["Q8_0", "Q4_K_M"]
        assert [o["output"] for o in result["outputs"]] == [str(p) for p in outs.values()]
    return outs
