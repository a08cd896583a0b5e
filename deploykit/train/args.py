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


FIELDS = {f.name: f for f in dataclasses.fields(TrainArgs)}

#: LlamaFactory YAML keys mapped to ours, so its training configs can be passed to --config.
ALIASES = {"model_name_or_path": "base", "output_dir": "out", "overwrite_output_dir": "force"}
#: LlamaFactory keys with no effect here (the model's own chat template is always used).
IGNORED = {
    "stage",
    "do_train",
    "finetuning_type",
    "template",
    "trust_remote_code",
    "overwrite_cache",
    "preprocessing_num_workers",
    "dataloader_num_workers",
    "plot_loss",
    "report_to",
    "save_steps",
    "save_only_model",
    "ddp_timeout",
    "resume_from_checkpoint",
    "use_dora",
    "use_rslora",
    "bf16",
    "fp16",
}


def llamafactory(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A config's keys as ours: LlamaFactory's names mapped, its no-op keys dropped, its
    method and precision flags translated. Other keys pass through (unknown ones are refused
    by the config reader)."""
    out: dict[str, Any] = {}
    for raw, value in values.items():
        key = ALIASES.get(str(raw).replace("-", "_"), str(raw).replace("-", "_"))
        if key not in IGNORED:
            out[key] = value
    # LlamaFactory spellings of the method and precision
    if values.get("finetuning_type", "lora") != "lora":
        raise InputError(
            f"{source}: finetuning_type {values['finetuning_type']!r} is not supported",
            f"use method: one of {', '.join(METHODS)}",
        )
    if values.get("stage", "sft") != "sft":
        raise InputError(f"{source}: only stage sft is supported", "remove `stage` or set sft")
    if "method" not in out:
        if values.get("use_dora"):
            out["method"] = "dora"
        elif values.get("use_rslora"):
            out["method"] = "rslora"
        elif values.get("loraplus_lr_ratio") is not None:
            out["method"] = "loraplus"
    if "precision" not in out:
        if values.get("bf16"):
            out["precision"] = "bf16"
        elif values.get("fp16"):
            out["precision"] = "fp16"
    if isinstance(out.get("data"), str):
        out["data"] = [out["data"]]
    if isinstance(out.get("dataset"), list):
        out["dataset"] = ",".join(map(str, out["dataset"]))
    if isinstance(out.get("lora_target"), list):
        out["lora_target"] = ",".join(map(str, out["lora_target"]))
    if isinstance(out.get("layers"), list):
        out["layers"] = ",".join(map(str, out["layers"]))
    if isinstance(out.get("lr_scheduler_kwargs"), dict):
        out["lr_scheduler_kwargs"] = json.dumps(out["lr_scheduler_kwargs"])
    return out


def to_yaml(args: TrainArgs, header: str = "") -> str:
    """``train_args.yaml``: every option, loadable again with ``--config``."""
    import yaml

    body = yaml.safe_dump(dataclasses.asdict(args), sort_keys=False, allow_unicode=True)
    return header + body
