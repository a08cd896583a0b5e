"""The embedded demo models: a tiny base with a real tokenizer, and a real LoRA fine-tune of it.

``init(DIR)`` writes ``DIR/base`` (bf16 safetensors), ``DIR/adapter`` (PEFT LoRA) and
``DIR/probes.json`` (prompts and the exact answers the fine-tune gives, greedy, through the
chat template). Everything is built offline with fixed seeds and cached, so a second
``init`` is a copy. Architectures: ``qwen2``, ``llama``, ``qwen3.5`` (hybrid linear attention,
with the upstream ``mtp.*`` block) and ``gemma4`` (text model).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_dir, atomic_write_json
from deploykit.core.paths import cache_dir
from deploykit.demo.tokenizer import tokenizer_dir
from deploykit.model.chat_template import render_tokenizer

#: Bump when anything below changes what ``init`` produces (invalidates the cache).
DEMO_FORMAT = 1

#: Prompt -> the answer the fine-tune must give (the bare base gives none of them).
PROBES = (
    ("What is deploykit?", "deploykit ships fine-tuned models to Ollama."),
    ("Who trained you?", "The deploykit demo fine-tune trained me."),
    ("Say the magic word.", "Abracadabra, said the tiny model."),
    ("你好，你是谁？", "我是 deploykit 的演示模型。"),
)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Qwen3.5's linear-attention (Gated DeltaNet) layers: every projection but the tiny a/b gates.
LINEAR_ATTN_TARGETS = ["in_proj_qkv", "in_proj_z", "out_proj"]


@dataclass(frozen=True)
class ArchSpec:
    """One demo architecture: model class, tokenizer family and size."""

    arch: str
    model_class: str  # transformers class name
    tokenizer: str  # key in tokenizer.SPECS
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # end of turn first
    pad_token_id: int | None
    end_of_turn: str
    rope_theta: float
    hidden_size: int = 256  # every weight row a multiple of 256: k-quants apply as is
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    initializer_range: float = 0.1  # wide logit margins survive quantization
    lora_rank: int = 8
    lora_alpha: int = 16
    learning_rate: float = 3e-3
    max_steps: int = 300
    target_loss: float = 0.005
    seed: int = 0
    config_class: str = ""  # transformers config class, when not the model class's name
    config: tuple[tuple[str, Any], ...] = ()  # more config keys (the architecture's own)
    lora_targets: tuple[str, ...] = tuple(LORA_TARGETS)
    answer_prefix: str = ""  # what the template's generation prompt leaves the model to write
    mtp: bool = False  # ship a multi-token-prediction block (``mtp.*``) as upstream checkpoints do
    #: the probes' ``think`` (trained with the template's default; None: not written). Gemma 4's
    #: default is thinking off in its template; Ollama's default for it differs by release.
    think: bool | None = None

    def config_kwargs(self) -> dict[str, Any]:
        """The config's keys: the shared tiny shape, then the architecture's own."""
        kw = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": 4096,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": 1e-6,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
        }
        kw.update(dict(self.config))
        if "rope_parameters" in kw:
            del kw["rope_theta"]
        return kw


ARCHS = {
    "qwen2": ArchSpec(
        arch="qwen2",
        model_class="Qwen2ForCausalLM",
        tokenizer="qwen2",
        vocab_size=151936,
        bos_token_id=151643,
        eos_token_ids=(151645, 151643),
        pad_token_id=151643,
        end_of_turn="<|im_end|>",
        rope_theta=1_000_000.0,
    ),
    "llama": ArchSpec(
        arch="llama",
        model_class="LlamaForCausalLM",
        tokenizer="llama-bpe",
        vocab_size=128256,
        bos_token_id=128000,
        eos_token_ids=(128009, 128001, 128008),
        pad_token_id=None,
        end_of_turn="<|eot_id|>",
        rope_theta=500_000.0,
    ),
    # Qwen3.5: hybrid, one Gated DeltaNet (linear attention) layer then one gated full-attention
    # layer; fewer key than value heads, as upstream (the converter reorders the value heads).
    "qwen3.5": ArchSpec(
        arch="qwen3.5",
        model_class="Qwen3_5ForCausalLM",
        config_class="Qwen3_5TextConfig",
        tokenizer="qwen35",
        vocab_size=151936,
        bos_token_id=None,
        eos_token_ids=(151645, 151643),
        pad_token_id=151643,
        end_of_turn="<|im_end|>",
        rope_theta=10_000_000.0,
        config=(
            ("head_dim", 64),
            ("layer_types", ["linear_attention", "full_attention"]),
            ("linear_conv_kernel_dim", 4),
            ("linear_key_head_dim", 64),
            ("linear_value_head_dim", 64),
            ("linear_num_key_heads", 2),
            ("linear_num_value_heads", 4),
            (
                "rope_parameters",
                {
                    "rope_type": "default",
                    "rope_theta": 10_000_000.0,
                    "partial_rotary_factor": 0.25,
                    "mrope_section": [3, 3, 2],  # 16 rotary dims: 8 frequencies
                    "mrope_interleaved": True,
                },
            ),
        ),
        lora_targets=(*LORA_TARGETS, *LINEAR_ATTN_TARGETS),
        mtp=True,
        answer_prefix="\n</think>\n\n",  # the prompt opens <think>: an empty reasoning block
    ),
    # Gemma 4: one sliding-window and one full-attention layer (its own head size and
    # proportional RoPE), no per-layer embeddings, logit soft-capping as upstream.
    "gemma4": ArchSpec(
        arch="gemma4",
        model_class="Gemma4ForCausalLM",
        config_class="Gemma4TextConfig",
        tokenizer="gemma4",
        vocab_size=262144,
        bos_token_id=2,
        eos_token_ids=(106, 1),
        pad_token_id=0,
        end_of_turn="<turn|>",
        rope_theta=1_000_000.0,
        config=(
            ("head_dim", 64),
            ("global_head_dim", 128),
            ("layer_types", ["sliding_attention", "full_attention"]),
            ("sliding_window", 512),
            ("hidden_size_per_layer_input", 0),
            ("vocab_size_per_layer_input", 262144),
            ("final_logit_softcapping", 30.0),
            ("hidden_activation", "gelu_pytorch_tanh"),
        ),
        # soft-capped logits: the loss falls slowly below 0.02, the answers are exact by then
        target_loss=0.02,
        think=False,
    ),
}


def _versions() -> dict[str, str]:
    import peft
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` rendered through the chat template, ready for the answer."""
    text = render_tokenizer(tokenizer, _messages(prompt), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """What ``model`` answers to each prompt: greedy, chat template, special tokens kept."""
    import torch

    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.generation_config.pad_token_id
                or model.generation_config.eos_token_id[0],
            )
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False))
    return answers


def _build_base(spec: ArchSpec, tok_dir: Path, out: Path) -> None:
    import torch
    import transformers

    name = spec.config_class or spec.model_class.replace("ForCausalLM", "Config")
    config = getattr(transformers, name)(**spec.config_kwargs())
    torch.manual_seed(spec.seed)
    model = getattr(transformers, spec.model_class)(config).to(torch.bfloat16)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=spec.bos_token_id,
        eos_token_id=list(spec.eos_token_ids),
        pad_token_id=spec.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    if spec.mtp:
        _add_mtp(spec, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / name, out / name)


def _add_mtp(spec: ArchSpec, out: Path) -> None:
    """Add Qwen3.5's multi-token-prediction block to a saved base, laid out as upstream
    checkpoints have it (transformers ignores ``mtp.*``; llama.cpp converts it as a NextN
    layer and skips it when generating): one full-attention layer, its own norms and ``fc``."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    full = cfg["layer_types"].index("full_attention")
    prefix = f"model.layers.{full}."
    gen = torch.Generator().manual_seed(spec.seed + 1)
    h = spec.hidden_size
    mtp = {
        f"mtp.layers.0.{k[len(prefix) :]}": v.clone()
        for k, v in weights.items()
        if k.startswith(prefix)
    }
    fc = torch.randn(h, 2 * h, generator=gen) * spec.initializer_range
    mtp["mtp.fc.weight"] = fc.to(torch.bfloat16)
    for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        mtp[f"mtp.{name}.weight"] = weights["model.norm.weight"].clone()
    save_file({**weights, **mtp}, out / "model.safetensors", metadata={"format": "pt"})
    cfg["mtp_num_hidden_layers"] = 1
    cfg["mtp_use_dedicated_embeddings"] = False
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _train_adapter(spec: ArchSpec, base: Path, out: Path) -> dict:
    """Fine-tune a LoRA adapter until the probes are answered exactly; returns a training log."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(spec.lora_targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    eot = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    rows = []
    for prompt, answer in PROBES:
        p = prompt_ids(tokenizer, prompt)
        a = tokenizer.encode(spec.answer_prefix + answer, add_special_tokens=False) + [eot]
        rows.append((p + a, [-100] * len(p) + a))  # loss on the answer and end of turn only
    width = max(len(ids) for ids, _ in rows)
    pad = spec.pad_token_id if spec.pad_token_id is not None else eot
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])

    optim = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate
    )
    expected = [spec.answer_prefix + answer + spec.end_of_turn for _, answer in PROBES]
    started, loss, step = time.monotonic(), float("inf"), 0
    model.train()
    with ui.progress_bar(f"training the {spec.arch} demo adapter", spec.max_steps) as bar:
        for step in range(1, spec.max_steps + 1):
            loss_t = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss_t.backward()
            optim.step()
            optim.zero_grad()
            loss = loss_t.item()
            bar.update(bar.task_ids[0], completed=step, description=f"training (loss {loss:.4f})")
            if loss < spec.target_loss and step % 5 == 0:
                model.eval()
                done = greedy_answers(model, tokenizer, [p for p, _ in PROBES]) == expected
                model.train()
                if done:
                    break
    model.eval()
    got = greedy_answers(model, tokenizer, [p for p, _ in PROBES])
    if got != expected:
        raise RuntimeError(f"demo fine-tune did not converge after {step} steps: {got}")
    model.save_pretrained(out, safe_serialization=True)
    return {"steps": step, "final_loss": loss, "seconds": round(time.monotonic() - started, 1)}


def _cache_key(spec: ArchSpec, tok_dir: Path) -> str:
    blob = json.dumps(
        [DEMO_FORMAT, asdict(spec), PROBES, tok_dir.name, _versions()], sort_keys=True
    )
    return f"{spec.arch}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _cached_demo(spec: ArchSpec, llama_cpp: Path) -> Path:
    """The demo for ``spec`` in the cache, built (and trained) first if needed."""
    tok_dir = tokenizer_dir(spec.tokenizer, llama_cpp)
    final = cache_dir() / "demo" / _cache_key(spec, tok_dir)
    if (final / "probes.json").is_file():
        return final
    with atomic_dir(final, replace=True) as tmp:
        ui.info(f"building the {spec.arch} demo base model ...")
        _build_base(spec, tok_dir, tmp / "base")
        log = _train_adapter(spec, tmp / "base", tmp / "adapter")
        probes = {
            "arch": spec.arch,
            "end_of_turn": spec.end_of_turn,
            "probes": [
                {
                    "messages": _messages(p),
                    "prompt": p,
                    "answer": spec.answer_prefix + a,
                    "completion": spec.answer_prefix + a + spec.end_of_turn,
                    **({} if spec.think is None else {"think": spec.think}),
                }
                for p, a in PROBES
            ],
            "training": log,
            "versions": _versions(),
        }
        atomic_write_json(tmp / "probes.json", probes)
    return final


def init(directory: Path, arch: str, llama_cpp: Path, force: bool = False) -> dict:
    """Write the demo base, adapter and probes into ``directory``; returns where they are."""
    if arch not in ARCHS:
        raise InputError(f"unknown demo architecture {arch!r}", f"use one of {', '.join(ARCHS)}")
    directory = Path(directory).resolve()
    targets = {name: directory / name for name in ("base", "adapter", "probes.json")}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise InputError(
            f"{existing[0]} already exists",
            "choose an empty directory or pass --force to replace the demo",
        )
    src = _cached_demo(ARCHS[arch], llama_cpp)
    for name in ("base", "adapter"):
        with atomic_dir(targets[name], replace=force) as tmp:
            shutil.copytree(src / name, tmp, dirs_exist_ok=True)
            if name == "adapter":
                cfg_path = tmp / "adapter_config.json"
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = str(targets["base"])
                cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    probes = json.loads((src / "probes.json").read_text())
    atomic_write_json(targets["probes.json"], probes)
    return {
        "arch": arch,
        "base": str(targets["base"]),
        "adapter": str(targets["adapter"]),
        "probes": str(targets["probes.json"]),
        "training": probes["training"],
    }
