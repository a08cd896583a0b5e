"""train: the minimal PEFT trainer."""

from __future__ import annotations

import click

from deploykit.cli.options import CONTEXT, command_options, emit, from_options
from deploykit.train.args import TrainArgs, llamafactory


@click.command(context_settings=CONTEXT)
@command_options(
    TrainArgs,
    dialect=llamafactory,
    help="YAML file of options (ours, or a LlamaFactory training config); "
    "command-line options win over it.  [default: none]",
)
def train(as_json: bool, **options) -> None:
    """Fine-tune a base model with a PEFT method; write an adapter directory.

    \b
    Methods (all from peft, trained with transformers.Trainer):
      lora        LoRA (--lora-rank/--lora-alpha/--lora-dropout/--lora-target, --layers)
      dora        weight-decomposed LoRA        rslora    rank-stabilised LoRA (alpha/sqrt(r))
      loraplus    LoRA+: B matrices get --loraplus-lr-ratio x the learning rate
      adalora     AdaLoRA: ranks differ per module (budget from --adalora-init-r to --lora-rank)
      ia3         IA3: learned rescaling vectors
      prefix      prefix tuning: virtual key/values at every layer, through an MLP
      ptuning-v2  P-tuning v2: prefix at every layer, no reparameterisation
      prompt      prompt tuning: virtual tokens at the input only
      ptuning     P-tuning: virtual tokens from an MLP or LSTM prompt encoder
    The bottleneck adapter (Houlsby) is not in peft and is out of scope.

    \b
    Data: LlamaFactory's alpaca or sharegpt records (JSON or JSONL) via --data, or names
    from --dataset-dir/dataset_info.json via --dataset. Rendered through the base's own
    chat template; the loss covers assistant tokens only.

    \b
    Output (--out): the peft adapter with the tokenizer and base_model_name_or_path,
    train_args.yaml, trainer_log.jsonl (LlamaFactory's fields: current_steps, total_steps,
    loss, eval_loss, lr, epoch, percentage, elapsed_time, remaining_time) and
    training_loss.png. A LlamaFactory YAML (model_name_or_path/stage/finetuning_type) gets
    LlamaFactory 0.9.5's defaults; deploykit's own configs and options keep deploykit's.
    LoRA-family and IA3 outputs go to `deploykit merge`; prefix/prompt/p-tuning ones
    cannot be merged into weights.

    \b
    Several processes (data parallel; rank 0 writes the adapter, log and plot):
      torchrun --nproc_per_node N -m deploykit train ...   (CPU: gloo; GPUs: nccl)
      accelerate launch --config_file ds_or_fsdp.yaml -m deploykit train ...
    The global batch is N x --per-device-train-batch-size x --gradient-accumulation-steps.
    """
    from deploykit.train import run

    r = run.train(from_options(TrainArgs, options))
    if not run.is_main():  # torchrun/accelerate: rank 0 reports for the run
        return
    emit(
        r,
        as_json,
        f"{r['method']} adapter in {r['out']}: {r['steps']} steps, loss {r['train_loss']}, "
        f"{r['tokens_per_second']} tokens/s",
    )
