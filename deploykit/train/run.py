"""One training run on ``transformers.Trainer`` + peft: data in, adapter directory out.

The base is resolved as merge resolves it (``deploykit.model.base``). The output directory
holds the peft adapter (``base_model_name_or_path``, and ``revision`` for a hub base, set so
``ship`` and ``merge`` find the base the same way), the tokenizer, ``train_args.yaml``
(loadable with ``--config``), ``trainer_log.jsonl`` (step, loss, lr) and ``training_loss.png``.
Multi-GPU and multi-node runs come from ``accelerate launch`` / ``torchrun`` through the
Trainer; only rank 0 writes the output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import InputError, UsageError
from deploykit.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from deploykit.data.datasets import files as data_files
from deploykit.model import base as model_base
from deploykit.model.hf_dir import read_json
from deploykit.train import data as data_mod
from deploykit.train import methods
from deploykit.train.args import TrainArgs, to_yaml

LOG_FILE = "trainer_log.jsonl"
PLOT_FILE = "training_loss.png"
ARGS_FILE = "train_args.yaml"


class ListDataset:
    """Encoded examples as the dicts the collator pads."""

    def __init__(self, examples: list[data_mod.Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.examples[i]
        return {
            "input_ids": e.input_ids,
            "attention_mask": [1] * len(e.input_ids),
            "labels": e.labels,
        }


def _callbacks():
    """Trainer callbacks: the JSONL log, the progress bar, AdaLoRA's rank allocation."""
    from transformers import TrainerCallback

    class LogFile(TrainerCallback):
        def __init__(self, path: Path | None) -> None:
            self.path = path
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            row = {"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate")}
            for key in ("grad_norm", "epoch"):
                if logs.get(key) is not None:
                    row[key] = round(float(logs[key]), 6)
            self.rows.append(row)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.stack = contextlib.ExitStack()
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = self.stack.enter_context(ui.progress_bar("training", state.max_steps))

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.bar.task_ids[0], completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                desc = f"training (loss {logs['loss']:.4f})"
                self.bar.update(self.bar.task_ids[0], description=desc)

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()
            self.bar = None

    class AdaLoraAllocator(TrainerCallback):
        """AdaLoRA reallocates ranks after each optimizer step, before gradients are cleared."""

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            model.base_model.update_and_allocate(state.global_step)

    return LogFile, Progress, AdaLoraAllocator


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss (left axis) and learning rate (right axis) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", marker=".", label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="tab:blue")
        lr = ax.twinx()
        lr.plot(steps, [r["lr"] for r in rows], color="tab:orange", label="learning rate")
        lr.set_ylabel("learning rate", color="tab:orange")
        lr.set_ylim(bottom=0)
        lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _precision(choice: str) -> tuple[str, Any]:
    """(``fp32``/``bf16``/``fp16``, the dtype to load the frozen base in)."""
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        choice = "fp32" if not cuda else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if choice == "fp16" and not cuda:
        raise InputError("--precision fp16 needs a CUDA GPU", "use bf16 or fp32 on CPU")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
    return choice, dtype if cuda else torch.float32


def _total_steps(args: TrainArgs, n_examples: int) -> int:
    """The optimizer steps the Trainer will run (as it computes them)."""
    if args.max_steps > 0:
        return args.max_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(n_examples / (args.per_device_train_batch_size * world))
    per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    if batches % args.gradient_accumulation_steps and batches > args.gradient_accumulation_steps:
        per_epoch += 1
    return max(math.ceil(args.num_train_epochs * per_epoch), 1)


def resolve_base(ref: str | None) -> model_base.Base:
    """``--base`` through the one base resolver (local directory, or hub id pulled as merge
    pulls it: ``DEPLOYKIT_HUB``/ModelScope, no pickles, integrity checks)."""
    return model_base.resolve(ref, why=" (passed to --base)")


def _training_arguments(cls, **kw: Any):
    try:
        return cls(**kw)
    except ValueError as exc:  # e.g. a precision the hardware lacks, bad scheduler kwargs
        raise InputError(
            f"invalid training settings: {exc}", "see `deploykit train --help`"
        ) from None


def build(
    args: TrainArgs,
    output_dir: Path,
    log_path: Path | None = None,
    base: model_base.Base | None = None,
):
    """Load data, base and method; return ``(trainer, facts)`` ready for ``trainer.train()``.

    ``base``: ``args.base`` already resolved (else it is resolved here); it is loaded from
    its local path.
    """
    import torch
    import transformers
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers.utils.logging.set_verbosity_error()
    if args.lr_scheduler_kwargs:
        try:
            sched_kwargs = json.loads(args.lr_scheduler_kwargs)
        except json.JSONDecodeError as exc:
            raise InputError(f"--lr-scheduler-kwargs is not JSON: {exc.msg}", "e.g. '{}'") from None
    else:
        sched_kwargs = {}
    precision, dtype = _precision(args.precision)
    base = base or resolve_base(args.base)

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    tokenizer.save_pretrained(output_dir)  # as the base has it, before a pad token is set
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise InputError(
            f"{args.base} has no chat template",
            "train on a base whose tokenizer_config.json (or chat_template.jinja) has one",
        )
    examples, counts = data_mod.load(
        tokenizer,
        args.data,
        args.dataset,
        args.dataset_dir,
        args.formatting,
        args.cutoff_len,
        args.max_samples,
    )
    total = _total_steps(args, len(examples))

    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    with warnings.catch_warnings():  # peft reads a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, methods.peft_config(args, model, total))
    trainable, every = peft_model.get_nb_trainable_parameters()

    targs = _training_arguments(
        TrainingArguments,
        output_dir=str(output_dir),
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=float(args.warmup_ratio),  # a float in [0, 1) is a ratio
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        seed=args.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )
    log_cb, progress_cb, adalora_cb = _callbacks()
    logger = log_cb(log_path)
    callbacks = [logger, progress_cb()]
    if args.method == "adalora":
        callbacks.append(adalora_cb())
    optimizer = methods.loraplus_optimizer(peft_model, args) if args.method == "loraplus" else None
    trainer = Trainer(
        model=peft_model,
        args=targs,
        train_dataset=ListDataset(examples),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(optimizer, None),
    )
    trainer.remove_callback(PrinterCallback)
    facts = {
        **counts,
        "examples": len(examples),
        "trainable_params": trainable,
        "all_params": every,
        "precision": precision,
        "planned_steps": total,
        "logger": logger,
        "torch_threads": torch.get_num_threads(),
    }
    return trainer, facts


def _header(args: TrainArgs) -> str:
    import peft
    import torch
    import transformers

    lines = [
        f"# deploykit {__version__} train; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}",
        "# reproduce: deploykit train --config train_args.yaml --force",
    ]
    for d in args.data:
        for p in data_files(Path(d)):
            lines.append(f"# data sha256 {sha256_file(p)}  {p}")
    return "\n".join(lines) + "\n"


def _record_base(adapter: Path, base: model_base.Base) -> None:
    """Name the base in ``adapter_config.json`` as merge resolves it again: the hub id and
    commit of a hub base (peft saved the local path it was loaded from), else the path."""
    path = adapter / "adapter_config.json"
    cfg = read_json(path, required=True)
    cfg["base_model_name_or_path"] = base.name_or_path
    if base.revision:
        cfg["revision"] = base.revision
    atomic_write_json(path, cfg)


@contextlib.contextmanager
def _output(out: Path, force: bool, main: bool) -> Iterator[Path]:
    if main:
        with atomic_dir(out, replace=force) as tmp:
            yield tmp
    else:  # other ranks of a distributed run write nothing
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)


def train(args: TrainArgs) -> dict[str, Any]:
    """Train ``args.method`` on the data; write the adapter directory ``args.out``."""
    if not args.base or not args.out:
        missing = "--base" if not args.base else "--out"
        raise UsageError(f"{missing} is required", "pass it, or set it in --config")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} already exists", "choose another --out or pass --force")
    base = resolve_base(args.base)
    args.base = base.name_or_path
    args.data = [str(Path(d)) for d in args.data]
    main = int(os.environ.get("RANK", "0")) == 0
    started = time.monotonic()
    with _output(out, args.force, main) as tmp:
        log_path = tmp / LOG_FILE if main else None
        trainer, facts = build(args, tmp, log_path, base)
        logger = facts.pop("logger")
        ui.info(
            f"training {args.method} on {facts['examples']} examples ({facts['tokens']} tokens), "
            f"{facts['trainable_params']:,} trainable parameters, {facts['planned_steps']} steps"
        )
        result = trainer.train()
        if main:
            trainer.model.save_pretrained(tmp)
            _record_base(tmp, base)
            atomic_write_text(tmp / ARGS_FILE, to_yaml(args, _header(args)))
            if logger.rows:
                plot(logger.rows, tmp / PLOT_FILE, f"{args.method} on {Path(args.base).name}")
    metrics = result.metrics
    tokens = int(trainer.state.num_input_tokens_seen)
    runtime = float(metrics.get("train_runtime", 0.0))
    peft_type = str(trainer.model.peft_config["default"].peft_type.value)
    return {
        "out": str(out.resolve()),
        "method": args.method,
        "peft_type": peft_type,
        "mergeable": args.method not in methods.PROMPT_STYLE,
        "base": args.base,
        "steps": trainer.state.global_step,
        "train_loss": round(float(metrics.get("train_loss", float("nan"))), 6),
        "tokens_trained": tokens,
        "train_seconds": round(runtime, 2),
        "tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "seconds": round(time.monotonic() - started, 2),
        **facts,
    }
