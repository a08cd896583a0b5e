"""PEFT methods as peft configs: the LoRA family, IA3, and the prompt-style methods.

Everything here is peft's; this module only maps options onto its config classes.
The bottleneck adapter (Houlsby) is not in peft and is out of scope.
"""

from __future__ import annotations

import re
from typing import Any

from deploykit.core.errors import InputError

LORA_FAMILY = ("lora", "dora", "rslora", "loraplus", "adalora")
PROMPT_STYLE = ("prefix", "ptuning-v2", "prompt", "ptuning")


def all_linear(model) -> list[str]:
    """Leaf names of every nn.Linear of ``model`` except its output head, sorted."""
    import torch

    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``"0-11,14"`` -> ``[0, ..., 11, 14]``, checked against the model's layer count."""
    layers: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"--layers {spec!r}: {part!r} is not N or N-M", "e.g. --layers 0-11")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= num_layers:
            raise InputError(
                f"--layers {spec!r}: {part} is outside 0-{num_layers - 1}",
                f"the model has {num_layers} decoder layers",
            )
        layers.update(range(lo, hi + 1))
    if not layers:
        raise InputError(f"--layers {spec!r} names no layer", "e.g. --layers 0-11")
    return sorted(layers)


def _targets(model, spec: str) -> list[str]:
    if spec.strip() == "all":
        return all_linear(model)
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing or not targets:
        raise InputError(
            f"--lora-target: no module named {', '.join(missing) or '(empty)'} in the model",
            f"linear modules: {', '.join(all_linear(model))} (or `all`)",
        )
    return targets


def adalora_schedule(total_steps: int, tinit: int | None, tfinal: int | None) -> tuple[int, int]:
    """AdaLoRA's warm-up and final phases (defaults 10% and 20% of the steps)."""
    tinit = total_steps // 10 if tinit is None else tinit
    tfinal = total_steps // 5 if tfinal is None else tfinal
    if tinit >= total_steps - tfinal:
        raise InputError(
            f"adalora: --adalora-tinit {tinit} + --adalora-tfinal {tfinal} leave no steps "
            f"to reallocate ranks in ({total_steps} steps)",
            "lower them or train for more steps",
        )
    return tinit, tfinal


def peft_config(args: Any, model, total_steps: int):
    """The peft config for ``args.method`` (``args`` is a TrainArgs)."""
    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
    )

    method = args.method
    hidden = model.config.get_text_config().hidden_size
    num_layers = model.config.get_text_config().num_hidden_layers
    if args.layers and method not in LORA_FAMILY:
        raise InputError(f"--layers applies to the LoRA family, not {method}", "drop --layers")
    layers = parse_layers(args.layers, num_layers) if args.layers else None
    common = {"task_type": "CAUSAL_LM"}
    if method in LORA_FAMILY:
        alpha = args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_rank
        lora = {
            **common,
            "target_modules": _targets(model, args.lora_target),
            "lora_alpha": alpha,
            "lora_dropout": args.lora_dropout,
            "layers_to_transform": layers,
        }
        if method == "adalora":
            tinit, tfinal = adalora_schedule(total_steps, args.adalora_tinit, args.adalora_tfinal)
            return AdaLoraConfig(
                **lora,
                init_r=args.adalora_init_r,
                target_r=args.lora_rank,
                tinit=tinit,
                tfinal=tfinal,
                deltaT=args.adalora_delta_t,
                total_step=total_steps,
            )
        extra: dict[str, Any] = {}
        if getattr(args, "pissa", False):
            if method not in ("lora", "rslora"):
                raise InputError(f"--pissa goes with lora or rslora, not {method}", "drop --pissa")
            it = args.pissa_iter
            extra["init_lora_weights"] = "pissa" if it == -1 else f"pissa_niter_{it}"
        return LoraConfig(
            **lora,
            r=args.lora_rank,
            use_dora=method == "dora",
            use_rslora=method == "rslora",
            **extra,
        )
    if method == "ia3":
        if args.lora_target.strip() == "all":
            return IA3Config(**common)  # peft's per-architecture defaults
        targets = _targets(model, args.lora_target)
        ff = [t for t in targets if t in ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h")]
        return IA3Config(**common, target_modules=targets, feedforward_modules=ff)
    prompt = {**common, "num_virtual_tokens": args.num_virtual_tokens}
    enc_hidden = args.encoder_hidden_size or hidden
    if method in ("prefix", "ptuning-v2"):
        projection = args.prefix_projection
        if projection is None:
            projection = method == "prefix"
        return PrefixTuningConfig(
            **prompt, prefix_projection=projection, encoder_hidden_size=enc_hidden
        )
    if method == "ptuning":
        return PromptEncoderConfig(
            **prompt,
            encoder_reparameterization_type=args.encoder_type,
            encoder_hidden_size=enc_hidden,
        )
    if method == "prompt":
        if args.prompt_init_text:
            return PromptTuningConfig(
                **prompt,
                prompt_tuning_init="TEXT",
                prompt_tuning_init_text=args.prompt_init_text,
                tokenizer_name_or_path=args.base,
            )
        return PromptTuningConfig(**prompt)
    raise InputError(f"unknown method {method!r}", "see `deploykit train --help`")


def loraplus_optimizer(model, args: Any):
    """LoRA+ (peft.optimizers): B matrices learn ``loraplus_lr_ratio`` times faster than A."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=args.learning_rate,
        loraplus_lr_ratio=args.loraplus_lr_ratio,
        loraplus_lr_embedding=args.loraplus_lr_embedding,
        loraplus_weight_decay=args.weight_decay,
    )
