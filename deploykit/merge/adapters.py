"""Read a PEFT adapter directory and plan what it does to each base tensor.

An adapter is turned into :class:`Op`s keyed by the base tensor they change, following peft's
own key naming (reference: peft-merge.md §1). Only what peft itself can merge is accepted;
everything else is refused with the reason and what to do instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from deploykit.core.errors import InputError, MergeError
from deploykit.model.hf_dir import ModelDir, read_json

MERGEABLE = ("LORA", "ADALORA", "IA3", "TRAINABLE_TOKENS")
PROMPT_STYLE = (
    "PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "ADAPTION_PROMPT",
    "MULTITASK_PROMPT_TUNING",
    "CPT",
)
BASE_MUTATING_INIT = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass
class Op:
    """One change to one base tensor. ``kind`` selects the math in merge.py."""

    kind: str  # replace | lora | lora_bias | dora | embedding | adalora | ia3 | ia3_bias | rows
    keys: dict[str, str]  # role -> adapter tensor key
    scaling: float = 1.0
    fan_in_fan_out: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Adapter:
    """An adapter directory: its config, its weights file and what it says its base is."""

    path: Path
    config: dict
    weights: Path

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    @property
    def base(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def has_tokenizer(self) -> bool:
        """Fine-tunes that add tokens save their tokenizer beside the adapter."""
        return ModelDir(self.path).has_tokenizer


def load(path: Path) -> Adapter:
    """Read and vet an adapter directory (config, weights, mergeability)."""
    path = Path(path)
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"{path} is not a PEFT adapter (no adapter_config.json)",
            "pass the directory that PeftModel.save_pretrained wrote",
        )
    config = read_json(cfg_path)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        pickled = (path / "adapter_model.bin").is_file()
        raise InputError(
            f"{path} has no adapter_model.safetensors"
            + (" (only the pickled adapter_model.bin)" if pickled else ""),
            "re-save the adapter with safe_serialization=True (the default)",
        )
    adapter = Adapter(path, config, weights)
    _check_mergeable(adapter)
    return adapter


def _check_mergeable(a: Adapter) -> None:
    c, kind = a.config, a.peft_type
    if kind in PROMPT_STYLE:
        raise MergeError(
            f"{a.path} is a {kind.lower()} adapter: it adds learned virtual tokens at inference "
            "time and has no weights that can be merged into the model",
            "serve it with peft (PeftModel), or retrain with LoRA to deploy it to Ollama",
        )
    if kind not in MERGEABLE:
        raise MergeError(
            f"{a.path}: merging {kind or 'unknown'} adapters is not supported",
            f"supported: {', '.join(t.lower() for t in MERGEABLE)}",
        )
    refusals = [
        (c.get("layer_replication"), "its base model layers are replicated (layer_replication)"),
        (c.get("alora_invocation_tokens"), "aLoRA adapters cannot be merged (peft refuses too)"),
        (c.get("arrow_config"), "Arrow router adapters cannot be merged (peft refuses too)"),
        (c.get("target_parameters"), "LoRA on raw parameters (target_parameters) is not supported"),
        (c.get("use_qalora"), "QALoRA adapters are for GPTQ bases and cannot be merged here"),
        (
            c.get("use_bdlora") or c.get("kasa_config") or c.get("velora_config"),
            "this LoRA variant has its own merge code that deploykit does not reproduce",
        ),
    ]
    init = str(c.get("init_lora_weights", True)).lower()
    if any(init.startswith(p) for p in BASE_MUTATING_INIT):
        refusals.append(
            (
                True,
                f"init_lora_weights={init} changes the base weights; the adapter "
                "only makes sense against that modified base",
            )
        )
    for cond, why in refusals:
        if cond:
            raise MergeError(
                f"cannot merge {a.path}: {why}",
                "convert it to a plain LoRA adapter with peft first, or serve it with peft",
            )


# --- planning ----------------------------------------------------------------------------

_LORA_ROLES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "B_bias",
    ".lora_magnitude_vector": "m",
    ".lora_embedding_A": "emb_A",
    ".lora_embedding_B": "emb_B",
    ".lora_A": "A",  # AdaLoRA stores bare parameters
    ".lora_B": "B",
    ".lora_E": "E",
    ".ia3_l": "ia3",
    ".token_adapter.trainable_tokens_delta": "rows",
    ".trainable_tokens_delta": "rows",
}


def _split_key(key: str) -> tuple[str, str | None]:
    """``(module, role)`` for an adapter factor, ``(base tensor name, None)`` for a full tensor."""
    key = key.removeprefix("base_model.model.")
    for suffix, role in _LORA_ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return key.replace(".base_layer.", "."), None


def _pattern_value(patterns: dict, module: str, default):
    """peft >= 0.15: first key k (in order) with re.match(rf"(.*\\.)?({k})$", module)."""
    for k, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return default


def _token_indices(cfg: dict, module: str) -> list[int]:
    spec = cfg.get("trainable_token_indices")
    if spec is None:
        spec = cfg.get("token_indices")
    if isinstance(spec, dict):
        for k, v in spec.items():
            if module == k or module.endswith("." + k):
                return list(v)
        raise MergeError(
            f"no trainable_token_indices entry for {module}", "check adapter_config.json"
        )
    return list(spec or [])


def plan(
    adapter: Adapter,
    base_names: set[str],
    tied: tuple[str, str] | None = None,
    read_base=None,
) -> tuple[dict[str, list[Op]], set[str]]:
    """``({base tensor name: [Op, ...]}, names of tensors the adapter adds)`` for one adapter.

    ``tied`` is ``(output embedding, input embedding)`` for a checkpoint with tied embeddings and
    no stored output embedding: deltas on the output embedding change the shared tensor; a
    full output embedding that differs from the input one unties them (``read_base(name)``
    reads a base tensor for that comparison).
    """
    cfg = adapter.config
    with safe_open(adapter.weights, "pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        modules: dict[str, dict[str, str]] = {}
        replace: dict[str, str] = {}
        for key in keys:
            name, role = _split_key(key)
            if role is None:
                replace[name] = key
            else:
                modules.setdefault(name, {})[role] = key
        created: set[str] = set()
        if tied and tied[0] in replace and tied[0] not in base_names:
            head = f.get_tensor(replace[tied[0]])
            shared = f.get_tensor(replace[tied[1]]) if tied[1] in replace else read_base(tied[1])
            if head.shape == shared.shape and head.to(shared.dtype).equal(shared):
                # peft saved the shared tensor again (a targeted or resized embedding)
                del replace[tied[0]]
            else:
                created.add(tied[0])

    ops: dict[str, list[Op]] = {}

    def add(target: str, op: Op, what: str) -> None:
        real = target if target in base_names or target in created else None
        if real is None and tied and target == tied[0]:
            real = tied[1]
        if real is None:
            raise MergeError(
                f"adapter tensor {what} targets {target}, which the base model does not have",
                "check that the adapter was trained on this base (--base)",
            )
        ops.setdefault(real, []).append(op)

    for name, key in replace.items():
        add(name, Op("replace", {"T": key}), key)

    fifo = bool(cfg.get("fan_in_fan_out", False))
    kind = adapter.peft_type
    for mod, roles in modules.items():
        first = next(iter(roles.values()))
        if "rows" in roles:
            add(
                f"{mod}.weight",
                Op("rows", roles, extra={"indices": _token_indices(cfg, mod)}),
                first,
            )
        elif "ia3" in roles:
            shape = shapes[roles["ia3"]]
            feedforward = shape[0] == 1 and len(shape) == 2 and shape[1] != 1
            add(f"{mod}.weight", Op("ia3", roles, fan_in_fan_out=fifo), first)
            if not feedforward and f"{mod}.bias" in base_names:
                add(f"{mod}.bias", Op("ia3_bias", roles), first)
        elif "emb_A" in roles:
            r = shapes[roles["emb_A"]][0]
            alpha = _pattern_value(cfg.get("alpha_pattern"), mod, cfg.get("lora_alpha", 8))
            s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            if "m" in roles:
                raise MergeError(
                    f"{adapter.path}: DoRA on the embedding {mod} is not supported",
                    "train DoRA on linear layers only, or merge with peft",
                )
            add(f"{mod}.weight", Op("embedding", roles, s), first)
        elif kind == "ADALORA":
            if not {"A", "B", "E"} <= roles.keys():
                raise MergeError(
                    f"AdaLoRA module {mod} lacks lora_A/lora_B/lora_E", "re-save the adapter"
                )
            alpha = cfg.get("lora_alpha", 8)
            init_r = cfg.get("init_r", 12)
            s = alpha if alpha > 0 else float(init_r)
            extra = {"ranknum": float(init_r), "round_factors": bool(cfg.get("rank_pattern"))}
            add(f"{mod}.weight", Op("adalora", roles, s, fifo, extra), first)
        else:
            if not {"A", "B"} <= roles.keys():
                raise MergeError(f"LoRA module {mod} lacks lora_A or lora_B", "re-save the adapter")
            r = shapes[roles["A"]][0]
            alpha = _pattern_value(cfg.get("alpha_pattern"), mod, cfg.get("lora_alpha", 8))
            s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            add(f"{mod}.weight", Op("dora" if "m" in roles else "lora", roles, s, fifo), first)
            if "B_bias" in roles:
                add(f"{mod}.bias", Op("lora_bias", roles, s), first)
    if not ops:
        raise MergeError(
            f"{adapter.path} contains no tensor that changes the base model",
            "check the adapter directory; refusing to ship unmerged weights",
        )
    for target_ops in ops.values():  # full tensors load before any delta is merged
        target_ops.sort(key=lambda op: op.kind != "replace")
    return ops, created


def adapter_shapes(adapter: Adapter) -> dict[str, tuple[int, ...]]:
    with safe_open(adapter.weights, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
