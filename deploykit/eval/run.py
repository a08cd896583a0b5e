"""``deploykit eval``: LlamaFactory's predict metrics on a model as deployed, side by side.

Each run predicts every sample with one backend (``eval.backends``) and writes
``generated_predictions.jsonl`` and ``predict_results.json`` as LlamaFactory does; several
models are compared on the same data (``eval.compare``: deltas, tables, chart, gates).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core.errors import InputError, Interrupted, UsageError
from deploykit.core.fsutil import atomic_write_json, atomic_write_text, publish, sha256_file
from deploykit.data import lf_templates
from deploykit.eval import compare as cmp_mod
from deploykit.eval import metrics
from deploykit.eval.backends import GenOptions, ModelSpec, open_backend
from deploykit.eval.options import EvalOptions
from deploykit.eval.samples import Sample
from deploykit.eval.samples import load as load_samples

PREDICTIONS = "generated_predictions.jsonl"
RESULTS = "predict_results.json"


def label_template(
    spec: ModelSpec, chat_template: str | None, labels: str, template: str | None
) -> lf_templates.LFTemplate | None:
    """The LlamaFactory template whose labels ``spec`` is scored against (None: clean labels).

    ``template`` names it; else the model's family's (a family LlamaFactory has no template
    for is scored against clean labels, with a warning that says so), else the template whose
    markers the model's chat template holds; a template that is none of these is an
    InputError (a silently different label would change BLEU-4).
    """
    from deploykit.core import ui

    if labels == "clean":
        return None
    if template:
        return lf_templates.get(template)
    from deploykit.ollama import families

    family = families.family_of(chat_template)
    if family in lf_templates.no_template():
        ui.warn(
            f"{spec.label}: LlamaFactory 0.9.5 has no template for the {family} family "
            f"({lf_templates.no_template()[family]}), so its labels are clean (the answer alone)"
        )
        return None
    found = lf_templates.for_model(family, chat_template)
    if found is None:
        raise InputError(
            f"cannot tell which LlamaFactory template {spec.label} uses, so not how "
            "LlamaFactory would build its labels",
            "pass --template NAME (LlamaFactory's `template:`), or --labels clean",
        )
    return found


def _record(spec: ModelSpec, gen: GenOptions, data_files: list[dict], n: int) -> dict:
    """What produced a run (written beside the results as ``eval_manifest.json``)."""
    model: dict[str, Any] = {k: v for k, v in asdict(spec).items() if v is not None}
    if spec.kind == "gguf":
        model["bytes"] = Path(spec.ref).stat().st_size
        with contextlib.suppress(Exception):
            from deploykit.llamacpp import tree as llamacpp

            model["llama_cpp_commit"] = llamacpp.locate_tree().commit
    return {
        "deploykit": __version__,
        "model": model,
        "generation": asdict(gen),
        "data": data_files,
        "samples": n,
    }


def _data_record(files: list[Path]) -> list[dict]:
    return [{"path": str(p), "sha256": sha256_file(p)} for p in files if Path(p).is_file()]


def _write_results(out: Path, results: dict) -> None:
    """``predict_results.json``, and ``all_results.json`` updated as transformers' save_metrics
    does."""
    atomic_write_text(out / RESULTS, json.dumps(results, indent=4, sort_keys=True) + "\n")
    all_path = out / "all_results.json"
    previous: Any = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(all_path.read_text())
    merged = {**(previous if isinstance(previous, dict) else {}), **results}
    atomic_write_text(all_path, json.dumps(merged, indent=4, sort_keys=True) + "\n")


def run_model(
    spec: ModelSpec,
    samples: list[Sample],
    gen: GenOptions,
    out: Path,
    data_files: list[dict] | None = None,
    show_progress: bool = True,
    labels: str = "llamafactory",
    template: str | None = None,
) -> dict:
    """Predict every sample with ``spec``, score, write both files in ``out``; the result.

    ``labels``/``template``: the label text, as :func:`label_template` chooses it; it is the
    ``label`` written in the predictions file, as LlamaFactory writes its decoded labels.

    Predictions are appended to a temp file as they come; it is renamed into place when the
    run ends, also on Ctrl-C (then :class:`Interrupted` is raised and no results are written).
    """
    from deploykit.core import ui

    out.mkdir(parents=True, exist_ok=True)
    final = out / PREDICTIONS
    fd, tmp_name = tempfile.mkstemp(prefix=f".{PREDICTIONS}.", suffix=".partial", dir=out)
    tmp = Path(tmp_name)
    pairs: list[tuple[str, str]] = []
    done = 0
    lf_template = None
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(os.fdopen(fd, "w", encoding="utf-8"))
        try:
            prepared = time.perf_counter()
            predictor = stack.enter_context(open_backend(spec, gen))
            preparation = time.perf_counter() - prepared
            lf_template = label_template(spec, predictor.chat_template, labels, template)
            bar = None
            if show_progress:
                bar = stack.enter_context(ui.progress_bar(spec.label, len(samples)))
            start = time.perf_counter()
            for sample in samples:
                prompt, predict = predictor.predict(sample)
                label = (
                    lf_template.label(sample.label, gen.enable_thinking)
                    if lf_template
                    else sample.label
                )
                row = {"prompt": prompt, "predict": predict, "label": label}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                pairs.append((predict, label))
                done += 1
                if bar is not None:
                    rate = done / max(time.perf_counter() - start, 1e-9)
                    bar.update(
                        bar.task_ids[0],
                        advance=1,
                        description=f"{spec.label}  {rate:.2f} samples/s",
                    )
            runtime = time.perf_counter() - start
        except KeyboardInterrupt:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            if done:
                publish(tmp, final)
            else:
                tmp.unlink(missing_ok=True)
            raise Interrupted(
                f"interrupted after {done} of {len(samples)} samples of {spec.label}",
                f"the predictions so far are in {final}" if done else "nothing was predicted",
            ) from None
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.flush()
        os.fsync(fh.fileno())
    publish(tmp, final)
    # scored after the timed loop, as LlamaFactory scores after trainer.predict
    results = metrics.predict_results(
        [metrics.similarity(p, lab) for p, lab in pairs], runtime, preparation
    )
    _write_results(out, results)
    record = _record(spec, gen, data_files or [], done)
    mode = "llamafactory" if lf_template else "clean"
    record["labels"] = {"mode": mode, "llamafactory_template": getattr(lf_template, "name", None)}
    atomic_write_json(out / "eval_manifest.json", record)
    return {
        "label": spec.label,
        "kind": spec.kind,
        "model": spec.ref,
        "adapter": spec.adapter,
        "out": str(out),
        "predictions": str(final),
        "results": str(out / RESULTS),
        "samples": done,
        "labels": mode,
        "llamafactory_template": getattr(lf_template, "name", None),
        "metrics": results,
    }


def _dir_names(specs: list[ModelSpec]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        base = re.sub(r"[^A-Za-z0-9._+-]+", "_", spec.label).strip("._") or spec.kind
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def evaluate(
    specs: list[ModelSpec],
    samples: list[Sample],
    out: Path,
    gen: GenOptions | None = None,
    max_drop: list[cmp_mod.MaxDrop] | None = None,
    data_files: list[Path] | None = None,
    show_progress: bool = True,
    labels: str = "llamafactory",
    template: str | None = None,
) -> dict:
    """Evaluate each model on ``samples``; with several, compare them against the first.

    One model writes its files in ``out``; several write ``out/<label>/`` each plus
    ``compare.md``, ``compare.png`` and ``compare.json`` in ``out``. The result's
    ``comparison.ok`` is false when a ``max_drop`` gate failed (see ``compare.gate_error``).
    """
    gen = gen or GenOptions()
    if not specs:
        raise UsageError("no model to evaluate", "pass --ollama NAME, --gguf FILE or --hf DIR")
    if max_drop and len(specs) < 2:
        raise UsageError("--max-drop needs models to compare", "add --compare MODEL")
    if not samples:
        raise InputError("no evaluation samples", "check --data / --dataset")
    data_rec = _data_record([Path(p) for p in data_files or []])
    out = Path(out)
    names = _dir_names(specs)
    model_labels = [spec.label for spec in specs]
    for spec, name in zip(specs, names, strict=True):
        if model_labels.count(spec.label) > 1:  # e.g. two model.gguf from different folders
            spec.label = name
    dirs = [out] if len(specs) == 1 else [out / d for d in names]
    runs = [
        run_model(spec, samples, gen, d, data_rec, show_progress, labels, template)
        for spec, d in zip(specs, dirs, strict=True)
    ]
    result: dict[str, Any] = {"out": str(out), "samples": len(samples), "models": runs}
    if len(runs) > 1:
        cmp = cmp_mod.compare(runs, max_drop or [])
        cmp["samples"] = len(samples)
        cmp["max_drop"] = [asdict(g) for g in max_drop or []]
        atomic_write_text(out / "compare.md", cmp_mod.table_markdown(cmp))
        cmp_mod.bar_chart(cmp, out / "compare.png")
        atomic_write_json(out / "compare.json", cmp)
        result["comparison"] = {
            **cmp,
            "table": cmp_mod.table_text(cmp),
            "markdown": str(out / "compare.md"),
            "chart": str(out / "compare.png"),
        }
    return result


def summary(result: dict) -> str:
    """Human output: LlamaFactory's ``***** predict metrics *****`` block, or the table."""
    if "comparison" in result:
        cmp = result["comparison"]
        passed = cmp.get("max_drop") and cmp["ok"]
        gate = f"\nmax drop ({cmp_mod.gates_text(cmp)}): passed" if passed else ""
        return (
            f"{cmp['table']}{gate}\n\n{result['samples']} samples; results in {result['out']} "
            f"(compare.md, compare.png)"
        )
    run = result["models"][0]
    m = run["metrics"]
    width = max(len(k) for k in m)
    lines = ["***** predict metrics *****"]
    lines += [f"  {k:<{width}} = {v:>10}" for k, v in sorted(m.items())]
    lines.append(f"{run['samples']} samples; {PREDICTIONS} and {RESULTS} in {run['out']}")
    return "\n".join(lines)


def run(opts: EvalOptions) -> dict:
    """``deploykit eval``: the models ``opts`` names on its data; gates are checked by the caller
    (``compare.gate_error``) after the results are shown."""
    specs = opts.specs()
    gates = [cmp_mod.parse_max_drop(x) for x in opts.max_drop]
    samples, files = load_samples(
        list(opts.data), opts.dataset, opts.dataset_dir, opts.formatting, opts.max_samples
    )
    if opts.template and opts.labels == "clean":
        raise UsageError("--template goes with --labels llamafactory", "drop one of them")
    if opts.template:
        lf_templates.get(opts.template)  # an unknown name fails before any model loads
    gen = GenOptions(
        max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature,
        seed=opts.seed,
        dtype=opts.dtype,
        enable_thinking=opts.enable_thinking,
    )
    return evaluate(
        specs, samples, opts.out, gen, gates, files, labels=opts.labels, template=opts.template
    )
