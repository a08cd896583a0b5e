"""Read a PEFT adapter directory and plan what it does to each base tensor.

An adapter is turned into :class:`Op`s keyed by the base tensor they change, following peft's
own key naming (reference: peft-merge.md §1). Only what peft itself can merge is accepted;
everything else is refused with the reason and what to do instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from deploykit.core.errors import InputError, MergeError
from deploykit.data.run_folders import refuse_run_folder
from deploykit.merge import config as adapter_config
from deploykit.merge.safetensors_io import TensorFile
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
#: Adapter tensors are floating point (peft upcasts fp16/bf16/fp8 ones to fp32 on load).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@dataclass
class Op:
    """One change to one base tensor. ``kind`` selects the math in merge.py."""

    kind: str  # replace | lora | lora_bias | dora | embedding | adalora | ia3 | ia3_bias | rows
    keys: dict[str, str]  # role -> adapter tensor key
    scaling: float = 1.0
    fan_in_fan_out: bool = False
    extra: dict = field(default_factory=dict)
    module: str = ""  # the adapter module it comes from (peft merges in module order)


class AdapterTensors(TensorFile):
    """An adapter's weights file: checked header and reads, and only finite values."""

    def get_tensor(self, key: str) -> torch.Tensor:
        t = super().get_tensor(key)
        wide = t.float() if t.element_size() == 1 else t  # torch has no isfinite for fp8
        bad = int((~torch.isfinite(wide)).sum())
        if bad:
            raise InputError(
                f"{self.path}: adapter tensor {key} has {bad} NaN or infinite values",
                "the fine-tune diverged or the file is damaged: use an earlier checkpoint",
            )
        return t


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

    @cached_property
    def tensors(self) -> AdapterTensors:
        return AdapterTensors(self.weights)


def load(path: Path) -> Adapter:
    """Read and vet an adapter directory (config, weights, mergeability)."""
    path = Path(path)
    cfg_path = path / "adapter_config.json"
    refuse_run_folder(path)  # an ms-swift / Trainer run folder: name its last checkpoint
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
    adapter_config.check(cfg_path, config, adapter.peft_type)
    _check_mergeable(adapter)
    for key, entry in adapter.tensors.entries.items():
        if entry.dtype not in FLOAT_DTYPES:
            raise InputError(
                f"{weights}: adapter tensor {key} has dtype {entry.dtype}; "
                "adapter weights are floating point",
                "re-save the adapter with peft: the file is damaged or not an adapter",
            )
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
REFIT = "check that the adapter was trained on this base (--base)"
RESAVE = "the adapter file is inconsistent (peft refuses to load it): re-save it with peft"


def _split_key(key: str) -> tuple[str, str | None]:
    """``(module, role)`` for an adapter factor, ``(base tensor name, None)`` for a full tensor."""
    key = key.removeprefix("base_model.model.")
    for suffix, role in _LORA_ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return key.replace(".base_layer.", "."), None


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


def _modules(names) -> set[str]:
    """Every module a model with these tensors has (each dotted prefix of a tensor name)."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def _rank(a: Adapter, mod: str, shapes: dict, roles: dict, a_role: str, b_role: str) -> int:
    """The rank of a LoRA pair, checked as peft's load checks it: matrices of one rank that
    adapter_config.json's ``r`` (or ``rank_pattern``) names."""
    sa, sb = shapes[roles[a_role]], shapes[roles[b_role]]
    if len(sa) != 2 or len(sb) != 2:
        raise MergeError(
            f"{a.weights}: the LoRA factors of {mod} are not matrices ({sa}, {sb})",
            "only LoRA on linear and embedding layers can be merged",
        )
    if sa[0] != sb[1]:
        raise MergeError(
            f"{a.weights}: {mod} has rank {sa[0]} in {roles[a_role]} "
            f"but {sb[1]} in {roles[b_role]}",
            RESAVE,
        )
    want = adapter_config.pattern_value(a.config.get("rank_pattern"), mod, a.config.get("r", 8))
    if sa[0] != want:
        raise MergeError(
            f"{a.weights}: {mod} has rank {sa[0]}, adapter_config.json says r={want}", RESAVE
        )
    return sa[0]


def _scaling(cfg: dict, mod: str, r: int) -> float:
    alpha = adapter_config.pattern_value(cfg.get("alpha_pattern"), mod, cfg.get("lora_alpha", 8))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _ia3_feedforward(a: Adapter, mod: str, shape: tuple, weight: tuple | None) -> bool:
    """Whether an IA3 vector scales inputs (feed-forward) or outputs; its shape checked."""
    if weight is None:
        return len(shape) == 2 and shape[0] == 1 and shape[1] != 1
    if len(weight) != 2:
        raise MergeError(f"{a.weights}: IA3 on {mod}, whose weight is not a matrix", REFIT)
    fifo = bool(a.config.get("fan_in_fan_out", False))
    out_f, in_f = (weight[1], weight[0]) if fifo else weight  # Conv1D stores (in, out)
    ff = adapter_config.feedforward(a.config, mod)
    allowed = [s for s, f in (((1, in_f), True), ((out_f, 1), False)) if ff in (None, f)]
    if shape not in allowed:
        raise MergeError(
            f"{a.weights}: IA3 vector of {mod} has shape {shape}, the layer needs "
            + " or ".join(str(s) for s in allowed),
            REFIT,
        )
    return ff if ff is not None else shape == (1, in_f) != (out_f, 1)


def plan(
    adapter: Adapter,
    base: dict[str, tuple[int, ...]],
    tied: tuple[str, str] | None = None,
    read_base=None,
) -> tuple[dict[str, list[Op]], set[str]]:
    """``({base tensor name: [Op, ...]}, names of tensors the adapter adds)`` for one adapter.

    ``base`` maps the base's tensor names to their shapes. ``tied`` is ``(output embedding,
    input embedding)`` for a checkpoint with tied embeddings and no stored output embedding:
    deltas on the output embedding change the shared tensor; a full output embedding that
    differs from the input one unties them (``read_base(name)`` reads a base tensor for that
    comparison). Checks what peft checks when it loads the adapter (ranks, shapes, targets).
    """
    cfg, f = adapter.config, adapter.tensors
    shapes = f.shapes
    modules: dict[str, dict[str, str]] = {}
    replace: dict[str, str] = {}
    originals: dict[str, str] = {}
    for key in shapes:
        name, role = _split_key(key)
        if role is not None:
            modules.setdefault(name, {})[role] = key
        elif ".modules_to_save." in name:
            continue  # the trained copy again, under its wrapper's name: peft does not load it
        elif ".original_module." in name:
            originals[name.replace(".original_module.", ".")] = key
        else:
            replace[name] = key
    for name, key in originals.items():  # the wrapped base module, unless a trained copy wins
        replace.setdefault(name, key)
    if adapter.peft_type != "TRAINABLE_TOKENS":
        all_modules = _modules([*base, *(tied[:1] if tied else ())])
        adapter_config.check_targets(adapter.path / "adapter_config.json", cfg, all_modules)
    created: set[str] = set()
    if tied and tied[0] in replace and tied[0] not in base:
        head = f.get_tensor(replace[tied[0]])
        shared = f.get_tensor(replace[tied[1]]) if tied[1] in replace else read_base(tied[1])
        if head.shape == shared.shape and head.to(shared.dtype).equal(shared):
            # peft saved the shared tensor again (a targeted or resized embedding)
            del replace[tied[0]]
        else:
            created.add(tied[0])

    ops: dict[str, list[Op]] = {}

    def add(target: str, op: Op, what: str) -> None:
        real = target if target in base or target in created else None
        if real is None and tied and target == tied[0]:
            real = tied[1]
        if real is None:
            raise MergeError(
                f"adapter tensor {what} targets {target}, which the base model does not have",
                REFIT,
            )
        ops.setdefault(real, []).append(op)

    def weight_shape(target: str) -> tuple | None:
        if target not in base and tied and target == tied[0]:
            target = tied[1]
        return base.get(target)

    for name, key in replace.items():
        add(name, Op("replace", {"T": key}, module=name.rpartition(".")[0]), key)

    fifo = bool(cfg.get("fan_in_fan_out", False))
    kind = adapter.peft_type
    for mod, roles in modules.items():
        first = next(iter(roles.values()))
        if "rows" in roles:
            indices = _token_indices(cfg, mod)
            add(f"{mod}.weight", Op("rows", roles, extra={"indices": indices}, module=mod), first)
        elif "ia3" in roles:
            shape = shapes[roles["ia3"]]
            ff = _ia3_feedforward(adapter, mod, shape, weight_shape(f"{mod}.weight"))
            add(f"{mod}.weight", Op("ia3", roles, fan_in_fan_out=fifo, module=mod), first)
            if not ff and f"{mod}.bias" in base:
                add(f"{mod}.bias", Op("ia3_bias", roles, module=mod), first)
        elif "emb_A" in roles:
            if "emb_B" not in roles:
                raise MergeError(f"{adapter.weights}: {mod} lacks lora_embedding_B", RESAVE)
            r = _rank(adapter, mod, shapes, roles, "emb_A", "emb_B")
            if "m" in roles:
                raise MergeError(
                    f"{adapter.path}: DoRA on the embedding {mod} is not supported",
                    "train DoRA on linear layers only, or merge with peft",
                )
            op = Op("embedding", roles, _scaling(cfg, mod, r), module=mod)
            add(f"{mod}.weight", op, first)
        elif kind == "ADALORA":
            if not {"A", "B", "E"} <= roles.keys():
                raise MergeError(
                    f"AdaLoRA module {mod} lacks lora_A/lora_B/lora_E", "re-save the adapter"
                )
            sa, sb, se = (shapes[roles[r]] for r in ("A", "B", "E"))
            if not (len(sa) == len(sb) == 2 and se == (sa[0], 1) and sa[0] == sb[1]):
                raise MergeError(
                    f"{adapter.weights}: AdaLoRA factors of {mod} do not fit together "
                    f"(A {sa}, B {sb}, E {se})",
                    RESAVE,
                )
            alpha = cfg.get("lora_alpha", 8)
            init_r = cfg.get("init_r", 12)
            s = alpha if alpha > 0 else float(init_r)
            extra = {"ranknum": float(init_r), "round_factors": bool(cfg.get("rank_pattern"))}
            add(f"{mod}.weight", Op("adalora", roles, s, fifo, extra, mod), first)
        else:
            if not {"A", "B"} <= roles.keys():
                raise MergeError(f"LoRA module {mod} lacks lora_A or lora_B", "re-save the adapter")
            r = _rank(adapter, mod, shapes, roles, "A", "B")
            s = _scaling(cfg, mod, r)
            out = shapes[roles["B"]][0]
            for role in ("m", "B_bias"):
                if role in roles and shapes[roles[role]] != (out,):
                    raise MergeError(
                        f"{adapter.weights}: {roles[role]} has shape {shapes[roles[role]]}, "
                        f"{mod} has {out} outputs",
                        RESAVE,
                    )
            kind_ = "dora" if "m" in roles else "lora"
            add(f"{mod}.weight", Op(kind_, roles, s, fifo, module=mod), first)
            if "B_bias" in roles:
                add(f"{mod}.bias", Op("lora_bias", roles, s, module=mod), first)
    if not ops:
        raise MergeError(
            f"{adapter.path} contains no tensor that changes the base model",
            "check the adapter directory; refusing to ship unmerged weights",
        )
    head = tied[0].removesuffix(".weight") if tied else None
    for target_ops in ops.values():
        # full tensors load before any delta is merged; peft merges modules in model order,
        # and a tied output head comes after the input embedding whose tensor it shares
        target_ops.sort(key=lambda op: (op.kind != "replace", op.module == head))
    return ops, created
