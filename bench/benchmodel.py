"""Random-weight models with the real shape of Qwen2.5-1.5B (or Qwen2.5-7B's widths), and a LoRA
adapter for them.

Shared by the benchmarks. Weights are written shard by shard straight to safetensors (no model
is instantiated), so building a 3 GB model needs about one shard of memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from deploykit.demo.tokenizer import tokenizer_dir
from deploykit.llamacpp.tree import locate_tree

#: Qwen2.5-1.5B: hidden 1536, 28 layers, intermediate 8960, 12 heads, 2 KV heads, tied embeddings.
QWEN25_15B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}

#: Qwen2.5-7B's widths: hidden 3584, intermediate 18944, 28 heads, 4 KV heads, untied lm_head.
QWEN25_7B = {
    **QWEN25_15B,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
}
SHAPES = {"qwen2.5-1.5b": QWEN25_15B, "qwen2.5-7b": QWEN25_7B}

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _layer_shapes(cfg: dict, i: int) -> dict[str, tuple[int, ...]]:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (h, h),
        p + "self_attn.q_proj.bias": (h,),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.k_proj.bias": (kv,),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.v_proj.bias": (kv,),
        p + "self_attn.o_proj.weight": (h, h),
        p + "mlp.gate_proj.weight": (inter, h),
        p + "mlp.up_proj.weight": (inter, h),
        p + "mlp.down_proj.weight": (h, inter),
    }


def _shapes(layers: int, shape: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``layers``-layer model of ``shape``, by name."""
    cfg = {**SHAPES[shape], "num_hidden_layers": layers}
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"])}
    for i in range(layers):
        shapes.update(_layer_shapes(cfg, i))
    shapes["model.norm.weight"] = (cfg["hidden_size"],)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], cfg["hidden_size"])
    return shapes


def model_bytes(layers: int, shape: str = "qwen2.5-1.5b") -> int:
    """The size of the weights ``make_base`` writes (bf16) for ``layers`` layers of ``shape``."""
    return sum(2 * int(torch.tensor(s).prod()) for s in _shapes(layers, shape).values())


def _rand(shape: tuple[int, ...], gen: torch.Generator, dtype=torch.bfloat16) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, generator=gen) * 0.02).to(dtype)


def make_base(
    out: Path,
    layers: int = 28,
    shard_bytes: int = 1 << 30,
    seed: int = 0,
    shape: str = "qwen2.5-1.5b",
) -> Path:
    """Write a bf16 model of ``shape`` (``SHAPES``; tokenizer included) into ``out``."""
    out = Path(out)
    if (out / "model.safetensors.index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**SHAPES[shape], "num_hidden_layers": layers}
    shapes = _shapes(layers, shape)
    gen = torch.Generator().manual_seed(seed)
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        n = 2 * int(torch.tensor(shape).prod())
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    weight_map, total = {}, 0
    for k, names in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: _rand(shapes[name], gen) for name in names}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, out / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, fname))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    gen_cfg = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    tok = tokenizer_dir("qwen2", locate_tree().path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok / name, out / name)
    return out


def make_lora(base: Path, out: Path, rank: int = 16, alpha: int = 32, seed: int = 1) -> Path:
    """Write a rank-``rank`` LoRA adapter on every linear projection of ``base``."""
    from peft import LoraConfig

    out = Path(out)
    if (out / "adapter_model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((Path(base) / "config.json").read_text())
    index = json.loads((Path(base) / "model.safetensors.index.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in index["weight_map"]:
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in LINEAR:
            continue
        i = int(name.split(".")[2])
        shape = _layer_shapes(cfg, i)[name]
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = torch.randn((rank, shape[1]), generator=gen) * 0.02
        tensors[f"{key}.lora_B.weight"] = torch.randn((shape[0], rank), generator=gen) * 0.02
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(LINEAR),
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(Path(base).resolve()),
    ).save_pretrained(out)
    return out
