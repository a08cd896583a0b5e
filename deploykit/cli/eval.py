"""eval: LlamaFactory's predict metrics on a deployed model."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, host_option, json_option
from deploykit.core.errors import UsageError

# --- eval (issue 9) -----------------------------------------------------------------------


@click.command("eval", context_settings=CONTEXT)
@click.option(
    "--data",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Data file or folder (JSON/JSONL; alpaca, sharegpt or openai records); repeatable.",
)
@click.option("--dataset", help="Dataset name(s), comma-separated, from dataset_info.json.")
@click.option(
    "--dataset-dir",
    default="data",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder holding dataset_info.json and the data files.",
)
@click.option(
    "--formatting",
    type=click.Choice(["auto", "alpaca", "sharegpt", "openai"]),
    default="auto",
    show_default=True,
    help="Format of --data files (auto: from the keys of the first record).",
)
@click.option("--ollama", "ollama_name", metavar="NAME", help="A model in Ollama (chat API).")
@host_option
@click.option("--gguf", type=click.Path(path_type=Path), help="A GGUF, run by llama-server.")
@click.option("--hf", type=click.Path(path_type=Path), help="A Hugging Face model directory.")
@click.option(
    "--adapter", type=click.Path(path_type=Path), help="With --hf: an unmerged PEFT adapter."
)
@click.option(
    "--compare",
    multiple=True,
    metavar="MODEL",
    help="Also evaluate MODEL and compare it with the first (repeatable): ollama:NAME, "
    "gguf:FILE, hf:DIR[+ADAPTER], or a bare GGUF file, model/adapter dir or Ollama name.",
)
@click.option(
    "--max-drop",
    multiple=True,
    metavar="METRIC=VALUE",
    help="With --compare: exit 7 when a model's METRIC is below the first model's by more "
    "than VALUE points (or VALUE%, relative), e.g. bleu-4=2, rouge-l=5%. Repeatable.",
)
@click.option("--max-samples", type=click.IntRange(1), help="Use at most N records per dataset.")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Longest answer generated.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="0: greedy decoding (reproducible); above 0: sampling with --seed.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval"),
    show_default=True,
    help="Output folder (with --compare: one sub-folder per model).",
)
@json_option
def eval_cmd(
    data,
    dataset,
    dataset_dir,
    formatting,
    ollama_name,
    host,
    gguf,
    hf,
    adapter,
    compare,
    max_drop,
    max_samples,
    max_new_tokens,
    temperature,
    seed,
    out,
    as_json,
) -> None:
    """Predict LlamaFactory data with a deployed model and score it as LlamaFactory does.

    \b
    The prompt is every turn before a record's last assistant answer; the label is that
    answer. Writes generated_predictions.jsonl ({prompt, predict, label} per line) and
    predict_results.json (predict_bleu-4, predict_rouge-1/2/l, predict_runtime,
    predict_samples_per_second, predict_steps_per_second): ROUGE F-scores over jieba words
    (rouge-chinese), BLEU-4 over characters (nltk, smoothing method3), x100, averaged.
    With --compare: a table of deltas against the first model, compare.md and compare.png.
    Ctrl-C keeps the predictions made so far.
    """
    from deploykit.eval import run as ev
    from deploykit.eval import samples as eval_data

    chosen = [x for x in (ollama_name, gguf, hf) if x is not None]
    if len(chosen) != 1:
        raise UsageError(
            "pass exactly one of --ollama NAME, --gguf FILE, --hf DIR",
            "see `deploykit eval --help`",
        )
    if adapter is not None and hf is None:
        raise UsageError("--adapter goes with --hf", "pass --hf BASE_DIR --adapter ADAPTER_DIR")
    gates = [ev.parse_max_drop(x) for x in max_drop]
    if hf is not None:
        first = ev.hf_spec(hf, adapter)
    elif gguf is not None:
        first = ev.parse_spec(f"gguf:{gguf}")
    else:
        first = ev.parse_spec(f"ollama:{ollama_name}", host)
    specs = [first] + [ev.parse_spec(c, host) for c in compare]
    samples, files = eval_data.load(list(data), dataset, dataset_dir, formatting, max_samples)
    gen = ev.GenOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = ev.evaluate(specs, samples, out, gen, gates, data_files=files)
    emit(result, as_json, ev.summary(result))
    err = ev.gate_error(result)
    if err is not None:
        raise err
