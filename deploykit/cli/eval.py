"""eval: LlamaFactory's predict metrics on a deployed model."""

from __future__ import annotations

import click

from deploykit.cli.options import CONTEXT, dataclass_options, emit, from_options, json_option
from deploykit.eval.options import EvalOptions


@click.command("eval", context_settings=CONTEXT)
@dataclass_options(EvalOptions)
@json_option
def eval_cmd(as_json: bool, **values) -> None:
    """Predict LlamaFactory data with a deployed model and score it as LlamaFactory does.

    \b
    The prompt is every turn before a record's last assistant answer; the label is that
    answer. Writes generated_predictions.jsonl ({prompt, predict, label} per line) and
    predict_results.json (predict_bleu-4, predict_rouge-1/2/l, predict_runtime,
    predict_samples_per_second, predict_steps_per_second): ROUGE F-scores over jieba words
    (rouge-chinese), BLEU-4 over characters (nltk, smoothing method3), x100, averaged,
    plus predict_model_preparation_time. By default the label is LlamaFactory's (the answer
    plus what its template adds, e.g. Qwen's trailing newline), so the numbers are the ones
    LlamaFactory reports; --labels clean scores the answer alone.
    With --compare: a table of deltas against the first model, compare.md and compare.png.
    Ctrl-C keeps the predictions made so far.
    """
    from deploykit.eval import compare, run

    result = run.run(from_options(EvalOptions, values))
    emit(result, as_json, run.summary(result))
    err = compare.gate_error(result.get("comparison"))
    if err is not None:
        raise err
