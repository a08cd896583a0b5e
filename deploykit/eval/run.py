"""``deploykit eval``: LlamaFactory's predict metrics on a model as deployed, side by side.

A model is an Ollama model (chat API), a GGUF (the vendored llama-server, prompt rendered by
the GGUF's own chat template) or a Hugging Face directory, optionally with an unmerged PEFT
adapter (transformers ``generate``). Each run writes ``generated_predictions.jsonl`` and
``predict_results.json`` as LlamaFactory does; several models are compared on the same data
with a table of deltas (text, Markdown, bar chart PNG) and an optional ``--max-drop`` gate.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from deploykit import __version__
from deploykit.core.errors import DeploykitError, InputError, UsageError, VerificationError
from deploykit.core.fsutil import atomic_write_json, atomic_write_text, sha256_file
from deploykit.eval import metrics
from deploykit.eval.samples import Sample

PREDICTIONS = "generated_predictions.jsonl"
RESULTS = "predict_results.json"
KINDS = ("ollama", "gguf", "hf")


class Interrupted(DeploykitError):
    """Ctrl-C during prediction; the predictions made so far are kept."""

    exit_code = 130


@dataclass
class ModelSpec:
    """One model to evaluate: ``kind`` (ollama, gguf, hf), ``ref`` (name or path)."""

    kind: str
    ref: str
    adapter: str | None = None
    host: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            if self.kind == "gguf":
                self.label = Path(self.ref).stem
            elif self.kind == "hf":
                self.label = Path(self.ref).name + (
                    f"+{Path(self.adapter).name}" if self.adapter else ""
                )
            else:
                self.label = self.ref


@dataclass
class GenOptions:
    """Generation settings shared by every backend; temperature 0 is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0


@dataclass
class MaxDrop:
    """``METRIC=VALUE``: fail when a compared model is worse than the baseline by more."""

    metric: str
    value: float
    relative: bool = False

    def allowed(self, base: float) -> float:
        return abs(base) * self.value / 100 if self.relative else self.value


def parse_max_drop(text: str) -> MaxDrop:
    """``bleu-4=2`` (points of the x100 score) or ``rouge-l=5%`` (relative to the baseline)."""
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError("expected METRIC=VALUE")
        metric = metrics.key(name)
        if metric == metrics.PREFIX + "runtime":
            raise ValueError("a drop in runtime is not a loss; gate on samples_per_second")
        value = value.strip()
        relative = value.endswith("%")
        number = float(value.rstrip("%"))
        if number < 0 or not number == number:  # negative or NaN
            raise ValueError(f"VALUE must be >= 0, got {value!r}")
    except ValueError as exc:
        raise UsageError(
            f"bad --max-drop {text!r}: {exc}",
            "use METRIC=VALUE, e.g. bleu-4=2 or rouge-l=5%; metrics: "
            + ", ".join(metrics.SCORES + metrics.SPEEDS[1:]),
        ) from None
    return MaxDrop(metric, number, relative)


def parse_spec(text: str, host: str | None = None) -> ModelSpec:
    """A ``--compare`` model: ``ollama:NAME``, ``gguf:FILE``, ``hf:DIR[+ADAPTER]``, or bare.

    A bare value is a GGUF when it is a file, a Hugging Face directory (or an adapter
    directory, whose base is read from adapter_config.json) when it is a directory, and an
    Ollama model name otherwise.
    """
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        value = rest
    else:
        path = Path(text)
        kind = "gguf" if path.is_file() else "hf" if path.is_dir() else "ollama"
        value = text
    if kind == "hf":
        base, _, adapter = value.partition("+")
        return hf_spec(Path(base), Path(adapter) if adapter else None)
    if kind == "gguf":
        if not Path(value).is_file():
            raise InputError(f"GGUF not found: {value}", "check the path")
        with open(value, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise InputError(f"{value} is not a GGUF file", "pass a .gguf model file")
        return ModelSpec("gguf", value)
    from deploykit.ollama.client import validate_name

    return ModelSpec("ollama", validate_name(value), host=host)


def hf_spec(path: Path, adapter: Path | None = None) -> ModelSpec:
    """A Hugging Face model; a bare adapter directory brings its base from adapter_config."""
    for p in (path, adapter):
        if p is not None and not p.is_dir():
            raise InputError(f"model directory not found: {p}", "check the path")
    cfg = path / "adapter_config.json"
    if adapter is None and cfg.is_file():
        try:
            base = json.loads(cfg.read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            base = None
        if not base or not Path(base).is_dir():
            raise InputError(
                f"{path} is an adapter whose base ({base}) is not a local directory",
                "pass --hf BASE_DIR --adapter ADAPTER_DIR",
            )
        return ModelSpec("hf", str(base), adapter=str(path))
    if not (path / "config.json").is_file():
        raise InputError(
            f"{path} is not a Hugging Face model directory (no config.json)",
            "pass the model folder, or an adapter folder (adapter_config.json)",
        )
    return ModelSpec("hf", str(path), adapter=str(adapter) if adapter else None)


# --- backends -----------------------------------------------------------------------------


class Predictor(Protocol):
    def predict(self, sample: Sample) -> tuple[str, str]:
        """``(prompt as the model sees it, generated text)`` for one sample."""


class _Ollama:
    def __init__(self, spec: ModelSpec, gen: GenOptions, client: Any) -> None:
        self.spec, self.client, self.can_render = spec, client, True
        self.options = {"num_predict": gen.max_new_tokens, "seed": gen.seed}
        if gen.temperature > 0:
            self.options["temperature"] = gen.temperature
        else:  # greedy: override the Modelfile's sampling parameters
            self.options.update(temperature=0, top_k=1, repeat_penalty=1.0)

    def _request(self, sample: Sample) -> dict:
        req: dict[str, Any] = {"model": self.spec.ref, "messages": sample.messages}
        if sample.tools:
            req["tools"] = sample.tools
        return req

    def _prompt(self, sample: Sample) -> str:
        from deploykit.core.errors import OllamaError

        if self.can_render:
            try:
                return self.client.render(self._request(sample))
            except OllamaError:
                self.can_render = False  # Ollama < 0.11.5 cannot show the rendered prompt
        return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in sample.messages)

    def predict(self, sample: Sample) -> tuple[str, str]:
        final = self.client.chat({**self._request(sample), "options": self.options})
        msg = final.get("message") or {}
        text = msg.get("content") or ""
        if msg.get("tool_calls") and not text:
            text = json.dumps([c.get("function", c) for c in msg["tool_calls"]], ensure_ascii=False)
        return self._prompt(sample), text


class _Gguf:
    def __init__(self, server: Any, gen: GenOptions) -> None:
        self.server = server
        self.body: dict[str, Any] = {
            "n_predict": gen.max_new_tokens,
            "seed": gen.seed,
            "repeat_penalty": 1.0,
            "cache_prompt": False,
            "temperature": gen.temperature,
        }
        if gen.temperature <= 0:
            self.body.update(temperature=0, top_k=1)

    def predict(self, sample: Sample) -> tuple[str, str]:
        body: dict[str, Any] = {"messages": sample.messages}
        if sample.tools:
            body["tools"] = sample.tools
        prompt = self.server.post("/apply-template", body)["prompt"]
        out = self.server.post("/completion", {"prompt": prompt, **self.body})
        return prompt, out.get("content", "")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No weight-loading bars or deprecation warnings from transformers/peft on stderr."""
    import warnings

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class _HF:
    def __init__(self, spec: ModelSpec, gen: GenOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.gen = torch, gen
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tok_dir = spec.ref
        if spec.adapter and (Path(spec.adapter) / "tokenizer_config.json").is_file():
            tok_dir = spec.adapter
        try:
            with _quiet():
                self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
                dtype = "auto" if self.device == "cuda" else torch.float32
                model = AutoModelForCausalLM.from_pretrained(spec.ref, dtype=dtype)
                if spec.adapter:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, spec.adapter)
        except (OSError, ValueError) as exc:
            what = " ".join(str(exc).split())  # one line
            raise InputError(f"cannot load {spec.label}: {what}", "check --hf/--adapter") from None
        self.model = model.to(self.device).eval()
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos = eos
        self.pad = model.generation_config.pad_token_id
        if self.pad is None:
            self.pad = (
                self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else (eos[0] if eos else 0)
            )

    def predict(self, sample: Sample) -> tuple[str, str]:
        torch, tok = self.torch, self.tokenizer
        ids = tok.apply_chat_template(
            sample.messages,
            tools=sample.tools,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        ids = torch.tensor([list(ids)], device=self.device)
        # the same decoding on every backend: no repetition penalty from generation_config
        kw: dict[str, Any] = {"do_sample": False, "repetition_penalty": 1.0}
        if self.gen.temperature > 0:
            torch.manual_seed(self.gen.seed)
            kw.update(do_sample=True, temperature=self.gen.temperature)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.gen.max_new_tokens,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                **kw,
            )
        prompt = tok.decode(ids[0], skip_special_tokens=False)
        return prompt, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@contextlib.contextmanager
def open_backend(spec: ModelSpec, gen: GenOptions, ctx_size: int = 4096) -> Iterator[Predictor]:
    """A ready predictor for ``spec`` (model loaded, server started); released on exit."""
    if spec.kind == "ollama":
        from deploykit.ollama.client import Client

        with Client(spec.host) as client:
            client.show(spec.ref)  # fail early and clearly on an unknown name
            predictor = _Ollama(spec, gen, client)
            # no messages: Ollama only loads the model, so loading is not timed as predicting
            client.chat({"model": spec.ref, "messages": [], "options": predictor.options})
            yield predictor
    elif spec.kind == "gguf":
        from deploykit.llamacpp import server as llama_server

        with llama_server.serve(Path(spec.ref), ctx_size=ctx_size + gen.max_new_tokens) as srv:
            srv.post("/completion", {"prompt": "Hello", "n_predict": 1})  # warm-up, untimed
            yield _Gguf(srv, gen)
    elif spec.kind == "hf":
        yield _HF(spec, gen)
    else:  # pragma: no cover - parse_spec only makes the three kinds
        raise UsageError(f"unknown model kind {spec.kind!r}", f"use one of {', '.join(KINDS)}")


# --- one run ------------------------------------------------------------------------------


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


def _publish(tmp: Path, final: Path) -> None:
    """Give a finished temp file the usual mode (mkstemp makes it 0600) and its final name."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, final)


def run_model(
    spec: ModelSpec,
    samples: list[Sample],
    gen: GenOptions,
    out: Path,
    data_files: list[dict] | None = None,
    show_progress: bool = True,
) -> dict:
    """Predict every sample with ``spec``, score, write both files in ``out``; the result.

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
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(os.fdopen(fd, "w", encoding="utf-8"))
        try:
            predictor = stack.enter_context(open_backend(spec, gen))
            bar = None
            if show_progress:
                bar = stack.enter_context(ui.progress_bar(spec.label, len(samples)))
            start = time.perf_counter()
            for sample in samples:
                prompt, predict = predictor.predict(sample)
                row = {"prompt": prompt, "predict": predict, "label": sample.label}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                pairs.append((predict, sample.label))
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
                _publish(tmp, final)
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
    _publish(tmp, final)
    # scored after the timed loop, as LlamaFactory scores after trainer.predict
    results = metrics.predict_results([metrics.similarity(p, lab) for p, lab in pairs], runtime)
    atomic_write_text(out / RESULTS, json.dumps(results, indent=4, sort_keys=True) + "\n")
    all_path = out / "all_results.json"  # transformers' save_metrics also updates this file
    previous: Any = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(all_path.read_text())
    merged = {**(previous if isinstance(previous, dict) else {}), **results}
    atomic_write_text(all_path, json.dumps(merged, indent=4, sort_keys=True) + "\n")
    atomic_write_json(out / "eval_manifest.json", _record(spec, gen, data_files or [], done))
    return {
        "label": spec.label,
        "kind": spec.kind,
        "model": spec.ref,
        "adapter": spec.adapter,
        "out": str(out),
        "predictions": str(final),
        "results": str(out / RESULTS),
        "samples": done,
        "metrics": results,
    }


# --- comparison ---------------------------------------------------------------------------

COLUMNS = [(metrics.PREFIX + k, k) for k in metrics.SCORES] + [
    (metrics.PREFIX + "samples_per_second", "samples/s")
]


def _dir_names(specs: list[ModelSpec]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        base = re.sub(r"[^A-Za-z0-9._+-]+", "_", spec.label).strip("._") or spec.kind
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def compare(runs: list[dict], gates: list[MaxDrop]) -> dict:
    """Deltas of each run against the first (the baseline) and the ``--max-drop`` verdicts."""
    base = runs[0]["metrics"]
    rows, failures = [], []
    for run in runs:
        m = run["metrics"]
        delta = {k: round(m[k] - base[k], 4) for k, _ in COLUMNS}
        rows.append({"label": run["label"], "metrics": m, "delta": delta})
    for run in runs[1:]:
        for g in gates:
            drop = base[g.metric] - run["metrics"][g.metric]
            limit = g.allowed(base[g.metric])
            if drop > limit + 1e-9:
                failures.append(
                    {
                        "model": run["label"],
                        "metric": g.metric,
                        "baseline": base[g.metric],
                        "value": run["metrics"][g.metric],
                        "drop": round(drop, 4),
                        "max_drop": round(limit, 4),
                    }
                )
    return {"baseline": runs[0]["label"], "rows": rows, "failures": failures, "ok": not failures}


def _cell(row: dict, key: str, first: bool) -> str:
    value = f"{row['metrics'][key]:.2f}"
    return value if first else f"{value} ({row['delta'][key]:+.2f})"


def table_text(cmp: dict) -> str:
    """The comparison as an aligned text table (deltas against the baseline in brackets)."""
    head = ["model"] + [name for _, name in COLUMNS]
    body = [
        [r["label"] + (" (baseline)" if i == 0 else "")] + [_cell(r, k, i == 0) for k, _ in COLUMNS]
        for i, r in enumerate(cmp["rows"])
    ]
    widths = [max(len(x[c]) for x in [head, *body]) for c in range(len(head))]
    lines = [
        "  ".join(
            x[c].ljust(widths[c]) if c == 0 else x[c].rjust(widths[c]) for c in range(len(head))
        ).rstrip()
        for x in [head, *body]
    ]
    return "\n".join(lines)


def _gates(cmp: dict) -> str:
    return ", ".join(
        f"{g['metric']} {g['value']:g}{'%' if g['relative'] else ''}" for g in cmp["max_drop"]
    )


def table_markdown(cmp: dict) -> str:
    """The comparison as a Markdown table."""
    head = "| model | " + " | ".join(name for _, name in COLUMNS) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"
    rows = [
        "| "
        + r["label"].replace("|", "\\|")
        + (" (baseline)" if i == 0 else "")
        + " | "
        + " | ".join(_cell(r, k, i == 0) for k, _ in COLUMNS)
        + " |"
        for i, r in enumerate(cmp["rows"])
    ]
    lines = [head, rule, *rows]
    if cmp.get("max_drop"):
        verdict = (
            "passed"
            if cmp["ok"]
            else "FAILED: "
            + "; ".join(
                f"{f['model']} {f['metric']} dropped {f['drop']:g} (max {f['max_drop']:g})"
                for f in cmp["failures"]
            )
        )
        lines += ["", f"Max drop against {cmp['baseline']} ({_gates(cmp)}): {verdict}"]
    return "\n".join(lines) + "\n"


def bar_chart(cmp: dict, path: Path) -> None:
    """Grouped bars: the four scores per model (written atomically as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics.SCORES)
    rows = cmp["rows"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) * max(1, len(rows)) / 2), 4))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        vals = [r["metrics"][metrics.PREFIX + n] for n in names]
        bars = ax.bar(xs, vals, width, label=r["label"])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 120)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("score (x100)")
    ax.set_title(f"deploykit eval: {cmp.get('samples', '?')} samples, baseline {cmp['baseline']}")
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(rows), 4), frameon=False)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


# --- the command --------------------------------------------------------------------------


def _data_record(files: list[Path]) -> list[dict]:
    return [{"path": str(p), "sha256": sha256_file(p)} for p in files if Path(p).is_file()]


def evaluate(
    specs: list[ModelSpec],
    samples: list[Sample],
    out: Path,
    gen: GenOptions | None = None,
    max_drop: list[MaxDrop] | None = None,
    data_files: list[Path] | None = None,
    show_progress: bool = True,
) -> dict:
    """Evaluate each model on ``samples``; with several, compare them against the first.

    One model writes its files in ``out``; several write ``out/<label>/`` each plus
    ``compare.md``, ``compare.png`` and ``compare.json`` in ``out``. The result's
    ``comparison.ok`` is false when a ``max_drop`` gate failed (see :func:`gate_error`).
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
    labels = [spec.label for spec in specs]
    for spec, name in zip(specs, names, strict=True):
        if labels.count(spec.label) > 1:  # e.g. two model.gguf from different folders
            spec.label = name
    dirs = [out] if len(specs) == 1 else [out / d for d in names]
    runs = [
        run_model(spec, samples, gen, d, data_rec, show_progress)
        for spec, d in zip(specs, dirs, strict=True)
    ]
    result: dict[str, Any] = {"out": str(out), "samples": len(samples), "models": runs}
    if len(runs) > 1:
        cmp = compare(runs, max_drop or [])
        cmp["samples"] = len(samples)
        cmp["max_drop"] = [asdict(g) for g in max_drop or []]
        atomic_write_text(out / "compare.md", table_markdown(cmp))
        bar_chart(cmp, out / "compare.png")
        atomic_write_json(out / "compare.json", cmp)
        result["comparison"] = {
            **cmp,
            "table": table_text(cmp),
            "markdown": str(out / "compare.md"),
            "chart": str(out / "compare.png"),
        }
    return result


def gate_error(result: dict) -> VerificationError | None:
    """The error to raise when a ``--max-drop`` gate failed, else None."""
    cmp = result.get("comparison")
    if not cmp or cmp["ok"]:
        return None
    parts = [
        f"{f['model']} {f['metric']} dropped {f['drop']:g} (max {f['max_drop']:g}) "
        f"vs {cmp['baseline']}"
        for f in cmp["failures"]
    ]
    return VerificationError("quality gate failed: " + "; ".join(parts), f"see {cmp['markdown']}")


def summary(result: dict) -> str:
    """Human output: LlamaFactory's ``***** predict metrics *****`` block, or the table."""
    if "comparison" in result:
        cmp = result["comparison"]
        gate = f"\nmax drop ({_gates(cmp)}): passed" if cmp.get("max_drop") and cmp["ok"] else ""
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
