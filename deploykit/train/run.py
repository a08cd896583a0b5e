"""One training run on ``transformers.Trainer`` + peft: data in, adapter directory out.

The base is resolved as merge resolves it (``deploykit.model.base``). The output directory
holds the peft adapter (``base_model_name_or_path``, and ``revision`` for a hub base, set so
``ship`` and ``merge`` find the base the same way), the tokenizer, ``train_args.yaml``
(loadable with ``--config``), ``trainer_log.jsonl`` (LlamaFactory's field names) and
``training_loss.png``. Multi-GPU and multi-node runs come from ``accelerate launch`` /
``torchrun`` through the Trainer (gloo on CPU); only rank 0 writes the output and reports.
Checkpoints (``--save-strategy``) go to ``OUT-checkpoints/``, which a crash keeps.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
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
        """``trainer_log.jsonl`` as LlamaFactory's LogCallback writes it (rank 0 only)."""

        def __init__(self, path: Path | None) -> None:
            self.path = path
            self.rows: list[dict[str, Any]] = []
            self.started = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            if "loss" not in logs and "eval_loss" not in logs:
                return  # the end-of-training summary
            row = log_row(logs, state.global_step, state.max_steps, time.monotonic() - self.started)
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


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def log_row(logs: dict[str, Any], step: int, total: int, elapsed: float) -> dict[str, Any]:
    """One ``trainer_log.jsonl`` row with LlamaFactory's field names (``current_steps``,
    ``total_steps``, ``loss``, ``eval_loss``, ``lr``, ``epoch``, ``percentage``,
    ``elapsed_time``, ``remaining_time``; plus ``grad_norm``); empty fields are left out."""
    remaining = elapsed / step * (total - step) if step else 0.0
    row: dict[str, Any] = {
        "current_steps": step,
        "total_steps": total,
        "loss": logs.get("loss"),
        "eval_loss": logs.get("eval_loss"),
        "lr": logs.get("learning_rate"),
        "epoch": round(float(logs["epoch"]), 2) if logs.get("epoch") is not None else None,
        "percentage": round(step / total * 100, 2) if total else 0,
        "elapsed_time": _clock(elapsed),
        "remaining_time": _clock(remaining),
    }
    if logs.get("grad_norm") is not None:
        row["grad_norm"] = round(float(logs["grad_norm"]), 6)
    return {k: v for k, v in row.items() if v is not None}


def read_log(path: Path) -> list[dict[str, Any]]:
    """``trainer_log.jsonl`` rows with LlamaFactory's field names; deploykit's older logs
    (``step``, ``loss``, ``lr``) are read too."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "current_steps" not in row and "step" in row:
            row["current_steps"] = row.pop("step")
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss (left axis) and learning rate (right axis) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        train = [r for r in rows if "loss" in r]
        steps = [r["current_steps"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], color="tab:blue", marker=".", label="loss")
        evals = [r for r in rows if "eval_loss" in r]
        if evals:
            ax.plot([r["current_steps"] for r in evals], [r["eval_loss"] for r in evals],
                    color="tab:green", marker="o", label="eval loss")  # fmt: skip
            ax.legend(loc="upper right")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="tab:blue")
        lr = ax.twinx()
        lr.plot(steps, [r.get("lr", 0.0) for r in train], color="tab:orange", label="learning rate")
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


def world_size() -> int:
    """The processes of this run (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this is rank 0, the one process that writes and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _total_steps(args: TrainArgs, n_examples: int) -> int:
    """The optimizer steps the Trainer will run (as it computes them)."""
    if args.max_steps > 0:
        return args.max_steps
    world = world_size()
    batches = math.ceil(n_examples / (args.per_device_train_batch_size * world))
    per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    if batches % args.gradient_accumulation_steps and batches > args.gradient_accumulation_steps:
        per_epoch += 1
    return max(math.ceil(args.num_train_epochs * per_epoch), 1)


def resolve_base(ref: str | None) -> model_base.Base:
    """``--base`` through the one base resolver (local directory, or hub id pulled as merge
    pulls it: ``DEPLOYKIT_HUB``/ModelScope, no pickles, integrity checks)."""
    return model_base.resolve(ref, why=" (passed to --base)")


def split(examples: list, val_size: float, seed: int) -> tuple[list, list]:
    """``(train, held out)``: ``val_size`` below 1 is a fraction, else a count, drawn with
    ``seed`` (LlamaFactory's val_size)."""
    if not val_size:
        return examples, []
    n = math.ceil(val_size * len(examples)) if val_size < 1 else int(val_size)
    if not 0 < n < len(examples):
        raise InputError(
            f"--val-size {val_size} holds out {n} of {len(examples)} examples",
            "keep at least one example for training and one for evaluation",
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return (
        [e for i, e in enumerate(examples) if i not in held],
        [e for i, e in enumerate(examples) if i in held],
    )


def checkpoint_dir(args: TrainArgs) -> Path | None:
    """``OUT-checkpoints/``, where checkpoints go (outside the temporary output folder, so a
    crash keeps them); None when nothing is saved or resumed."""
    if args.save_strategy == "no" and not args.resume_from_checkpoint:
        return None
    out = Path(args.out or "adapter")
    return out.with_name(out.name + "-checkpoints")


def resume_point(args: TrainArgs) -> str | None:
    """The checkpoint ``--resume-from-checkpoint`` names (``true``: the last one saved)."""
    value = args.resume_from_checkpoint
    if not value or str(value).lower() in ("false", "none"):
        return None
    if str(value).lower() == "true":
        folder = checkpoint_dir(args)
        found = sorted(
            (p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
        ) if folder and folder.is_dir() else []  # fmt: skip
        if not found:
            raise InputError(
                f"--resume-from-checkpoint true: no checkpoint in {folder}",
                "train with --save-strategy steps first, or name a checkpoint folder",
            )
        return str(found[-1])
    if not Path(value).is_dir():
        raise InputError(f"checkpoint not found: {value}", "pass a checkpoint-N folder or true")
    return str(value)


def base_template(chat_template: str | None):
    """The LlamaFactory template the base's own chat template renders as (None: unknown, or
    a family LlamaFactory has none for)."""
    from deploykit.data import lf_templates
    from deploykit.ollama import families

    return lf_templates.for_model(families.family_of(chat_template), chat_template)


def check_template(args: TrainArgs, chat_template: str | None) -> None:
    """``--template`` (LlamaFactory's template name) must render as the base's own chat
    template, which deploykit trains with, unless ``--template-mismatch model``: its markers
    occur in it, or it builds the answers as the base's LlamaFactory template does."""
    if not args.template:
        return
    from deploykit.data import lf_templates

    tmpl = lf_templates.templates().get(args.template)
    found = base_template(chat_template)
    if tmpl is not None and (
        tmpl.matches(chat_template or "") or (found is not None and tmpl.same_labels(found))
    ):
        return
    if args.template_mismatch == "model":
        return
    why = (
        "is not a template deploykit knows"
        if tmpl is None
        else "renders training examples differently from the base's own chat template"
    )
    raise InputError(
        f"LlamaFactory template {args.template!r} {why}"
        + (f" (the base's looks like {found.name!r})" if found else ""),
        "set template to the base's, or template_mismatch: model to train with the base's "
        "chat template",
    )


def thought_words(args: TrainArgs, chat_template: str | None) -> tuple[str, str]:
    """The thought words ``--no-enable-thinking`` removes from answers: those of the
    reasoning template LlamaFactory uses (``--template``, else the base's), else its default.

    InputError when thinking cannot be switched off as LlamaFactory does: the base's chat
    template has no ``enable_thinking`` switch, or ``--template`` names a template without
    reasoning (LlamaFactory ignores enable_thinking there, the base's template does not) and
    ``--template-mismatch`` is not ``model``.
    """
    from deploykit.data import lf_templates

    if "enable_thinking" not in (chat_template or ""):
        raise InputError(
            "enable_thinking false: the base's chat template has no enable_thinking switch, "
            "so examples cannot be rendered with thinking off",
            "remove enable_thinking, or train a base whose template has it (Qwen3, ...)",
        )
    named = lf_templates.templates().get(args.template or "")
    if named is not None and not named.reasoning and args.template_mismatch != "model":
        raise InputError(
            f"enable_thinking false does nothing in LlamaFactory's {args.template!r} template "
            "(no reasoning), but switches the base's chat template off thinking",
            "remove enable_thinking, or name the reasoning template (e.g. qwen3)",
        )
    tmpl = named or base_template(chat_template)
    return tmpl.thought_words if tmpl is not None else lf_templates.THOUGHT_WORDS


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
    check_template(args, tokenizer.chat_template)
    thinking: dict[str, Any] = {}
    if not args.enable_thinking:
        words = thought_words(args, tokenizer.chat_template)
        thinking = {"enable_thinking": False, "thought_words": words}
    examples, counts = data_mod.load(
        tokenizer,
        args.data,
        args.dataset,
        args.dataset_dir,
        args.formatting,
        args.cutoff_len,
        args.max_samples,
        train_on_prompt=args.train_on_prompt,
        mask_history=args.mask_history,
        **thinking,
    )
    examples, held_out = split(examples, args.val_size, args.seed)
    if args.eval_strategy != "no" and not held_out:
        raise InputError(
            f"--eval-strategy {args.eval_strategy} needs held-out examples", "set --val-size"
        )
    total = _total_steps(args, len(examples))

    transformers.set_seed(args.seed)
    load_kw: dict[str, Any] = {"dtype": dtype}
    if args.attn != "auto":
        load_kw["attn_implementation"] = args.attn
    model = AutoModelForCausalLM.from_pretrained(base.path, **load_kw)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    with warnings.catch_warnings():  # peft reads a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, methods.peft_config(args, model, total))
    trainable, every = peft_model.get_nb_trainable_parameters()

    checkpoints = checkpoint_dir(args)
    cpu_parallel = world_size() > 1 and not torch.cuda.is_available()
    evaluating = args.eval_strategy != "no"
    targs = _training_arguments(
        TrainingArguments,
        output_dir=str(checkpoints if checkpoints else output_dir),
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        lr_scheduler_kwargs=sched_kwargs,
        # an int counts steps; a float in [0, 1) is a ratio
        warmup_steps=args.warmup_steps if args.warmup_steps > 0 else float(args.warmup_ratio),
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
        optim=args.optim,
        dataloader_num_workers=args.dataloader_num_workers,
        ddp_timeout=args.ddp_timeout,
        # several CPU processes (torchrun): data-parallel over gloo
        use_cpu=cpu_parallel,
        ddp_backend="gloo" if cpu_parallel else None,
        ddp_find_unused_parameters=False if args.method in methods.LORA_FAMILY else None,
        eval_strategy=args.eval_strategy,
        eval_steps=(args.eval_steps or args.logging_steps)
        if args.eval_strategy == "steps"
        else None,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        save_strategy=args.save_strategy,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        save_only_model=args.save_only_model,
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
        eval_dataset=ListDataset(held_out) if evaluating else None,
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
        "held_out": len(held_out),
        "checkpoints": str(checkpoints) if checkpoints else None,
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
    main = is_main()
    started = time.monotonic()
    with contextlib.ExitStack() as stack, _output(out, args.force, main) as tmp:
        log_path = tmp / LOG_FILE if main else None
        trainer, facts = build(args, tmp, log_path, base)
        logger = facts.pop("logger")
        if main:
            ui.info(
                f"training {args.method} on {facts['examples']} examples "
                f"({facts['tokens']} tokens), {facts['trainable_params']:,} trainable "
                f"parameters, {facts['planned_steps']} steps"
            )
        pissa_start = None
        if args.pissa and main:  # the initial adapter, to convert the trained one against
            pissa_start = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "pissa_init"
            cfg = trainer.model.peft_config["default"]
            init, cfg.init_lora_weights = cfg.init_lora_weights, True
            trainer.model.save_pretrained(pissa_start)
            cfg.init_lora_weights = init
        result = trainer.train(resume_from_checkpoint=resume_point(args))
        if main and pissa_start is not None:
            # a plain LoRA (twice the rank) that applies to the original base
            trainer.model.save_pretrained(tmp, path_initial_model_for_weight_conversion=pissa_start)
        elif main:
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
