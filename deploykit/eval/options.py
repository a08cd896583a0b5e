"""``eval``'s options, declared once (the CLI's options are generated from them), and the
models they name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploykit.core.errors import UsageError
from deploykit.core.options import option
from deploykit.data.formats import FORMATS
from deploykit.data.lf_templates import LABEL_MODES
from deploykit.ollama.names import HOST_HELP


@dataclass
class EvalOptions:
    """One ``deploykit eval`` run: the data, the model (and those to compare), decoding."""

    data: list[Path] = option(
        [], "Data file or folder (JSON/JSONL; alpaca, sharegpt or openai records); repeatable."
    )
    dataset: str | None = option(None, "Dataset name(s), comma-separated, from dataset_info.json.")
    dataset_dir: Path = option(Path("data"), "Folder holding dataset_info.json and the data files.")
    formatting: str = option(
        "auto",
        "Format of --data files (auto: from the keys of the first record).",
        choices=FORMATS,
    )
    ollama: str | None = option(None, "A model in Ollama (chat API).", metavar="NAME")
    host: str | None = option(None, HOST_HELP)
    gguf: Path | None = option(None, "A GGUF, run by llama-server.")
    hf: Path | None = option(None, "A Hugging Face model directory.")
    adapter: Path | None = option(None, "With --hf: an unmerged PEFT adapter.")
    dtype: str = option(
        "float32",
        "With --hf: the dtype the model runs in (bfloat16/float16 reproduce a half-precision "
        "LlamaFactory predict; auto: the checkpoint's).",
        choices=("float32", "bfloat16", "float16", "auto"),
    )
    labels: str = option(
        "llamafactory",
        "Label text scored against: llamafactory (as LlamaFactory decodes its labels: the "
        "answer plus what its template adds after it, e.g. Qwen's trailing newline, so its "
        "numbers are reproduced) or clean (the answer alone).",
        choices=LABEL_MODES,
    )
    template: str | None = option(
        None,
        "With --labels llamafactory: LlamaFactory's template name (its `template:`), e.g. "
        "qwen or llama3 (default: the one of each model's family, else recognised from its "
        "chat template).",
    )
    enable_thinking: bool = option(
        True,
        "Off: as LlamaFactory's enable_thinking: false, prompts render with the model's thinking "
        "switched off and a reasoning template's labels lose the empty thought.",
        flag="--enable-thinking/--no-enable-thinking",
    )
    compare: list[str] = option(
        [],
        "Also evaluate MODEL and compare it with the first (repeatable): ollama:NAME, "
        "gguf:FILE, hf:DIR[+ADAPTER], or a bare GGUF file, model/adapter dir or Ollama name.",
        metavar="MODEL",
    )
    max_drop: list[str] = option(
        [],
        "With --compare: exit 7 when a model's METRIC is below the first model's by more "
        "than VALUE points (or VALUE%, relative), e.g. bleu-4=2, rouge-l=5%. Repeatable.",
        metavar="METRIC=VALUE",
    )
    max_samples: int | None = option(None, "Use at most N records per dataset.", min=1)
    max_new_tokens: int = option(512, "Longest answer generated.", min=1)
    temperature: float = option(
        0.0, "0: greedy decoding (reproducible); above 0: sampling with --seed.", min=0.0
    )
    seed: int = option(0, "Sampling seed.")
    out: Path = option(
        Path("eval"), "Output folder (with --compare: one sub-folder per model).", kind="dir"
    )

    def specs(self):
        """The models to evaluate, the first one being the baseline."""
        from deploykit.eval import backends

        chosen = [x for x in (self.ollama, self.gguf, self.hf) if x is not None]
        if len(chosen) != 1:
            raise UsageError(
                "pass exactly one of --ollama NAME, --gguf FILE, --hf DIR",
                "see `deploykit eval --help`",
            )
        if self.adapter is not None and self.hf is None:
            raise UsageError("--adapter goes with --hf", "pass --hf BASE_DIR --adapter ADAPTER_DIR")
        if self.hf is not None:
            first = backends.hf_spec(self.hf, self.adapter)
        elif self.gguf is not None:
            first = backends.parse_spec(f"gguf:{self.gguf}")
        else:
            first = backends.parse_spec(f"ollama:{self.ollama}", self.host)
        return [first] + [backends.parse_spec(c, self.host) for c in self.compare]
