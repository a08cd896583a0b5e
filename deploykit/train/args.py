"""Training options as data: one dataclass gives the library defaults, the CLI options (with
their help and defaults) and the keys of ``--config FILE.yaml`` / ``train_args.yaml``;
:func:`llamafactory` reads LlamaFactory's training YAML keys as ours.

Kept free of torch/transformers imports so that ``deploykit --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from deploykit.core.errors import InputError
from deploykit.core.options import option
from deploykit.data.formats import FORMATS

METHODS = (
    "lora",
    "dora",
    "rslora",
    "loraplus",
    "adalora",
    "ia3",
    "prefix",
    "ptuning-v2",
    "prompt",
    "ptuning",
)
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


_opt = option


@dataclass
class TrainArgs:
    """Everything one training run needs; field order is the order of ``--help``."""

    # data and output
    base: str | None = _opt(None, "Base model: a directory, or a Hugging Face id.", required=True)
    data: list[str] = _opt(
        [], "Training data file or folder (JSON or JSONL, alpaca or sharegpt); repeatable."
    )
    dataset: str | None = _opt(
        None, "Dataset name(s), comma-separated, looked up in DATASET_DIR/dataset_info.json."
    )
    dataset_dir: str = _opt("data", "Folder holding dataset_info.json and the data files.")
    formatting: str = _opt(
        "auto",
        "Format of --data files (auto: from the keys of the first record).",
        choices=FORMATS,
    )
    cutoff_len: int = _opt(2048, "Truncate each rendered example to this many tokens.", min=1)
    max_samples: int | None = _opt(
        None, "Use at most this many records per dataset (default: all).", min=1
    )
    out: str | None = _opt(
        None, "Output adapter directory (written to a temp name, then renamed).", required=True
    )
    force: bool = _opt(False, "Replace an existing --out directory.")
    # method
    method: str = _opt("lora", "PEFT method (see the list above).", choices=METHODS)
    lora_rank: int = _opt(8, "LoRA rank r (AdaLoRA: the target average rank).", min=1)
    lora_alpha: float | None = _opt(None, "LoRA alpha (default: 2 x rank, as LlamaFactory).")
    lora_dropout: float = _opt(0.0, "Dropout on the LoRA input.", min=0.0)
    lora_target: str = _opt(
        "all",
        "Modules for the LoRA family and IA3: `all` (every linear layer but the output head; "
        "IA3: peft's defaults) or a comma list such as q_proj,v_proj.",
    )
    layers: str | None = _opt(
        None,
        "LoRA family only: put adapters on these decoder layers only, e.g. 0-11 or 0,2,4 "
        "(the seed's LoRA-drop); default: all layers.",
    )
    pissa: bool = _opt(
        False,
        "lora/rslora: PiSSA initialisation (principal singular vectors); the saved adapter is "
        "converted to a plain LoRA of twice the rank that applies to the original base.",
    )
    pissa_iter: int = _opt(16, "pissa: fast-SVD iterations (-1: full SVD).", min=-1)
    loraplus_lr_ratio: float = _opt(
        16.0, "loraplus: learning rate of the B matrices / learning rate of A.", min=1.0
    )
    loraplus_lr_embedding: float = _opt(1e-6, "loraplus: learning rate of embedding adapters.")
    adalora_init_r: int = _opt(12, "adalora: initial rank of every module.", min=1)
    adalora_tinit: int | None = _opt(
        None, "adalora: warm-up steps before ranks are pruned (default: 10% of the steps).", min=0
    )
    adalora_tfinal: int | None = _opt(
        None, "adalora: final steps with fixed ranks (default: 20% of the steps).", min=0
    )
    adalora_delta_t: int = _opt(1, "adalora: steps between two rank reallocations.", min=1)
    num_virtual_tokens: int = _opt(
        20, "prefix/ptuning-v2/prompt/ptuning: number of virtual tokens.", min=1
    )
    prefix_projection: bool | None = _opt(
        None,
        "prefix/ptuning-v2: reparameterise the prefix through an MLP "
        "(default: on for prefix, off for ptuning-v2).",
        flag="--prefix-projection/--no-prefix-projection",
    )
    encoder_hidden_size: int | None = _opt(
        None,
        "ptuning and prefix projection: hidden size of the encoder (default: model's).",
        min=1,
    )
    encoder_type: str = _opt(
        "MLP", "ptuning: prompt encoder, MLP or LSTM.", choices=("MLP", "LSTM")
    )
    prompt_init_text: str | None = _opt(
        None, "prompt: initialise the virtual tokens from this text (default: random)."
    )
    # schedule and batch
    learning_rate: float = _opt(1e-4, "Peak learning rate.", min=0.0)
    lr_scheduler_type: str = _opt("cosine", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_scheduler_kwargs: str | None = _opt(
        None,
        "JSON passed to the schedule, e.g. '{\"num_cycles\": 2}' for cosine_with_restarts or "
        "'{\"power\": 2.0}' for polynomial.",
    )
    warmup_ratio: float = _opt(
        0.1, "Fraction of the steps spent ramping the learning rate up.", min=0.0, max=0.999
    )
    weight_decay: float = _opt(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0: off).", min=0.0)
    per_device_train_batch_size: int = _opt(1, "Examples per device per step.", min=1)
    gradient_accumulation_steps: int = _opt(8, "Batches accumulated per optimizer step.", min=1)
    num_train_epochs: float = _opt(3.0, "Epochs (ignored when --max-steps is set).", min=0.0)
    max_steps: int = _opt(-1, "Optimizer steps (-1: from --num-train-epochs).", min=-1)
    seed: int = _opt(42, "Random seed (data order, initialisation, dropout).")
    precision: str = _opt(
        "auto",
        "Mixed precision: auto is bf16 on GPUs that support it, else fp16 on GPUs, "
        "else fp32 (CPU).",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    gradient_checkpointing: bool = _opt(False, "Recompute activations to save memory.")
    logging_steps: int = _opt(5, "Log loss and learning rate every N steps.", min=1)
    warmup_steps: int = _opt(
        0, "Warm-up steps; when above 0 it replaces --warmup-ratio (as in transformers).", min=0
    )
    optim: str = _opt("adamw_torch", "Optimizer, a transformers `optim` name.")
    attn: str = _opt(
        "auto",
        "Attention kernel: auto (transformers' choice), sdpa or eager "
        "(LlamaFactory's flash_attn: auto/sdpa/disabled).",
        choices=("auto", "sdpa", "eager"),
    )
    dataloader_num_workers: int = _opt(0, "Data-loading worker processes.", min=0)
    ddp_timeout: int = _opt(1800, "Seconds a distributed run waits for its processes.", min=1)
    # what is trained on
    train_on_prompt: bool = _opt(False, "Also train on the prompt tokens (not only answers).")
    mask_history: bool = _opt(
        False, "Train on the last assistant turn only (earlier answers are context)."
    )
    enable_thinking: bool = _opt(
        True,
        "Off: examples render with the base's enable_thinking switch off (Qwen3, ...), as "
        "LlamaFactory's enable_thinking: false: the empty think block goes to the untrained "
        "prompt, thoughts leave the answers.",
        flag="--enable-thinking/--no-enable-thinking",
    )
    template: str | None = _opt(
        None,
        "LlamaFactory's template name (`template:` of its YAML): checked against the base's own "
        "chat template, which is what deploykit renders with.",
    )
    template_mismatch: str = _opt(
        "refuse",
        "When --template does not render as the base's chat template: refuse, or train with "
        "the base's chat template (model).",
        choices=("refuse", "model"),
    )
    # evaluation and checkpoints
    val_size: float = _opt(
        0.0, "Hold out this fraction (below 1) or number of examples to report eval_loss.", min=0.0
    )
    eval_strategy: str = _opt(
        "no",
        "When eval_loss is computed: no, steps (every --eval-steps) or epoch.",
        choices=("no", "steps", "epoch"),
    )
    eval_steps: int | None = _opt(None, "Steps between evaluations (default: --logging-steps).")
    per_device_eval_batch_size: int = _opt(8, "Examples per device per eval step.", min=1)
    save_strategy: str = _opt(
        "no",
        "Checkpoints: no, steps (every --save-steps) or epoch; written to OUT-checkpoints/, "
        "which a crash keeps.",
        choices=("no", "steps", "epoch"),
    )
    save_steps: int = _opt(500, "Steps between checkpoints.", min=1)
    save_total_limit: int | None = _opt(None, "Keep at most this many checkpoints.", min=1)
    save_only_model: bool = _opt(
        False, "Checkpoints hold the adapter only (no optimizer state: cannot be resumed)."
    )
    resume_from_checkpoint: str | None = _opt(
        None, "Resume from a checkpoint folder, or `true`: the last one in OUT-checkpoints/."
    )


FIELDS = {f.name: f for f in dataclasses.fields(TrainArgs)}

#: The keys that make a config a LlamaFactory training YAML.
LLAMAFACTORY_KEYS = ("model_name_or_path", "stage", "finetuning_type")
#: LlamaFactory YAML keys with another name here.
ALIASES = {
    "model_name_or_path": "base",
    "output_dir": "out",
    "overwrite_output_dir": "force",
}
#: What an omitted key means in LlamaFactory 0.9.5 (its hparams and transformers'
#: TrainingArguments defaults), as our fields; deploykit's own configs keep deploykit's.
LLAMAFACTORY_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "seed": 42,
    "logging_steps": 500,
    "precision": "fp32",
    "gradient_checkpointing": True,
    "cutoff_len": 2048,
    "dataset_dir": "data",
    "lora_rank": 8,
    "lora_alpha": None,
    "lora_dropout": 0.0,
    "lora_target": "all",
    "loraplus_lr_embedding": 1e-6,
    "optim": "adamw_torch",
    "attn": "auto",
    "train_on_prompt": False,
    "mask_history": False,
    "val_size": 0.0,
    "eval_strategy": "no",
    "save_strategy": "steps",
    "save_steps": 500,
    "save_only_model": False,
    "dataloader_num_workers": 0,
    "ddp_timeout": 1800,
}
#: LlamaFactory keys accepted with nothing to do here, and why (documented, not dropped).
ACCEPTED = {
    "do_train": "training is what `train` does",
    "plot_loss": "training_loss.png is always written",
    "overwrite_cache": "deploykit keeps no preprocessing cache",
    "preprocessing_num_workers": "preprocessing runs in the training process",
    "trust_remote_code": "deploykit never runs a model's own code",
}
#: Values of LlamaFactory keys that cannot be honoured: key -> (values that are fine, why).
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "quantization_bit": ((None,), "QLoRA needs a CUDA GPU and bitsandbytes; deploykit trains "
                         "LoRA on an unquantized base (remove quantization_bit)"),
    "deepspeed": ((None,), "use `accelerate launch` with a DeepSpeed config instead"),
    "packing": ((None, False), "examples are padded per batch, not packed (remove packing)"),
    "neat_packing": ((False,), "examples are padded per batch, not packed (remove neat_packing)"),
    "additional_target": ((None,), "adapters hold LoRA weights only, so merge/ship apply them "
                          "(remove additional_target)"),
    "enable_thinking": ((True, False), "null (thoughts kept, the empty one in the prompt) is "
                        "no chat template's mode; use true or false"),
    "report_to": (("none", [], None, ["none"]), "deploykit logs to trainer_log.jsonl only; "
                  "use report_to: none"),
    "use_unsloth": ((False,), "unsloth is not used (remove use_unsloth)"),
}  # fmt: skip
FLASH_ATTN = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa"}


def is_llamafactory(values: dict[str, Any]) -> bool:
    """Whether a config is a LlamaFactory training YAML (has one of its own keys)."""
    return any(k in values for k in LLAMAFACTORY_KEYS)


def _refuse(source: str, key: str, value: Any, why: str) -> InputError:
    return InputError(f"{source}: {key}: {value!r} is not supported: {why}", "see `train --help`")


def llamafactory(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A config's keys as ours. A LlamaFactory YAML (:func:`is_llamafactory`) means what it
    means in LlamaFactory 0.9.5: its defaults fill the omitted keys and every key is honoured
    or refused with a one-line reason. Other configs pass through (unknown keys are refused
    by the config reader)."""
    if not is_llamafactory(values):
        return dict(values)
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    out: dict[str, Any] = dict(LLAMAFACTORY_DEFAULTS)
    if values.get("finetuning_type", "lora") != "lora":
        raise _refuse(source, "finetuning_type", values["finetuning_type"],
                      f"only lora (methods: {', '.join(METHODS)})")  # fmt: skip
    if values.get("stage", "sft") != "sft":
        raise _refuse(source, "stage", values["stage"], "only sft (supervised fine-tuning)")
    if values.get("do_train", True) is not True:
        raise _refuse(source, "do_train", values["do_train"], "train always trains")
    for key, (fine, why) in REFUSED.items():
        if key in values and values[key] not in fine:
            raise _refuse(source, key, values[key], why)
    if "flash_attn" in values:
        attn = FLASH_ATTN.get(str(values["flash_attn"]))
        if attn is None:
            why = "FlashAttention kernels are not used; use auto, sdpa or disabled"
            raise _refuse(source, "flash_attn", values["flash_attn"], why)
        out["attn"] = attn
    if values.get("use_dora"):
        out["method"] = "dora"
    elif values.get("use_rslora"):
        out["method"] = "rslora"
    elif values.get("loraplus_lr_ratio") is not None:
        out["method"] = "loraplus"
    if values.get("bf16"):
        out["precision"] = "bf16"
    elif values.get("fp16"):
        out["precision"] = "fp16"
    if values.get("pissa_init"):
        if not values.get("pissa_convert"):
            why = (
                "without pissa_convert the adapter applies to PiSSA's residual base, not the "
                "original base that merge and ship use; add pissa_convert: true"
            )
            raise _refuse(source, "pissa_init", True, why)
        out["pissa"] = True
    if "enable_thinking" in values:
        out["enable_thinking"] = values["enable_thinking"]
    if "disable_gradient_checkpointing" in values:
        out["gradient_checkpointing"] = not values["disable_gradient_checkpointing"]
    special = set(ACCEPTED) | set(REFUSED) | {
        "stage", "finetuning_type", "pissa_init", "pissa_convert", "flash_attn", "use_dora",
        "use_rslora", "bf16", "fp16", "disable_gradient_checkpointing"
    }  # fmt: skip
    for key, value in values.items():
        if key not in special:
            out[ALIASES.get(key, key)] = value
    if isinstance(out.get("dataset"), list):
        out["dataset"] = ",".join(map(str, out["dataset"]))
    if isinstance(out.get("lora_target"), list):
        out["lora_target"] = ",".join(map(str, out["lora_target"]))
    if isinstance(out.get("layers"), list):
        out["layers"] = ",".join(map(str, out["layers"]))
    if isinstance(out.get("lr_scheduler_kwargs"), dict):
        out["lr_scheduler_kwargs"] = json.dumps(out["lr_scheduler_kwargs"])
    if isinstance(out.get("resume_from_checkpoint"), bool):
        out["resume_from_checkpoint"] = "true" if out["resume_from_checkpoint"] else None
    if out.get("val_size") and out.get("eval_strategy") == "no":
        raise InputError(
            f"{source}: val_size {out['val_size']} needs eval_strategy steps or epoch",
            "set eval_strategy, or remove val_size",
        )
    return out


def to_yaml(args: TrainArgs, header: str = "") -> str:
    """``train_args.yaml``: every option, loadable again with ``--config``."""
    import yaml

    body = yaml.safe_dump(dataclasses.asdict(args), sort_keys=False, allow_unicode=True)
    return header + body
