"""``ship``'s options, declared once: the library's defaults, ``deploykit ship``'s command-line
options and the keys of ``deploykit.toml`` all come from :class:`ShipOptions`.

Kept free of heavy imports so that ``deploykit --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploykit.core.options import option
from deploykit.ollama.names import ALLOW_GGUF_TEMPLATE_HELP, HOST_HELP

CONFIG_FILE = "deploykit.toml"
OUTTYPES = ("f16", "bf16")
TARGETS = ("auto", "ollama", "none")
VERIFY_MODES = ("light", "full", "none")


@dataclass
class ShipOptions:
    """Everything ``ship`` takes; also what the manifest records as ``options``."""

    adapters: list[Path] = option(
        [], "PEFT adapter directory (repeat to merge several in order).", flag="--adapter"
    )
    model: Path | None = option(
        None,
        "An already merged or fully fine-tuned model directory instead of --adapter.",
        kind="dir",
    )
    quant: str = option("q4_k_m", "Quant type(s), comma-separated; each becomes tag NAME:<type>.")
    base: str | None = option(None, "Base model directory or hub id (default: the adapter's base).")
    name: str | None = option(None, "Ollama model name (default: from the adapter directory).")
    out: Path | None = option(None, "Bundle directory (default: dist/NAME).", kind="dir")
    target: str = option(
        "auto",
        "auto: create in Ollama when a server answers; none: stop at the bundle.",
        choices=TARGETS,
    )
    family: str = option("auto", "Chat template family (auto: detected from the model).")
    system: str | None = option(None, "SYSTEM prompt for the Modelfile.")
    params: list[str] = option([], "PARAMETER NAME=VALUE (repeatable).", flag="--param")
    outtype: str = option(
        "f16", "GGUF type before quantization (also the merge dtype).", choices=OUTTYPES
    )
    calibration: Path | None = option(None, "Text or chat JSONL for an importance matrix.")
    quality_gate: float | None = option(
        None,
        "Fail when a quant's mean KL divergence vs the f16 exceeds this (default: each "
        "type's limit, see `deploykit quantize --list-types`).",
        min=0.0,
    )
    allow_failed: str | None = option(
        None,
        "Quant type(s), comma-separated, to ship even when their checks fail (recorded in the "
        "manifest and the model card). Any other failed check stops ship.",
        metavar="TYPE[,TYPE]",
    )
    verify: str = option(
        "light",
        "light: metadata, tokenizer, generation, probes, KLD via llama.cpp; full adds logits "
        "parity in transformers (memory ~ the model's size).",
        choices=VERIFY_MODES,
    )
    probes: Path | None = option(None, "probes.json with expected answers.")
    host: str | None = option(None, HOST_HELP)
    work_dir: Path | None = option(
        None, "Step cache (default: ~/.cache/deploykit/work).", kind="dir"
    )
    allow_pickle: bool = option(
        False, "With --model: also convert pickled weights (*.bin; loading them runs code)."
    )
    allow_gguf_template: bool = option(
        False,
        ALLOW_GGUF_TEMPLATE_HELP,
    )
    force: bool = option(
        False, "Redo every step; replace files in --out that deploykit did not write."
    )
    push: list[str] = option(
        [],
        "Publish the bundle at the end of a successful ship, as `deploykit push --to TARGET` "
        "does (hf:OWNER/NAME or ollama:NAMESPACE/NAME[:TAG]; repeatable).",
        metavar="TARGET",
    )

    def quants(self) -> list[str]:
        """``--quant`` as a list of the names given."""
        return [q.strip() for q in str(self.quant).split(",") if q.strip()]
