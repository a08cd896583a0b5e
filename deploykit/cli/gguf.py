"""convert, quantize and verify: GGUF files on the pinned llama.cpp."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import (
    CONTEXT,
    choice_option,
    emit,
    existing,
    flag_option,
    json_option,
    path_option,
    report,
)
from deploykit.core.errors import InputError, UsageError
from deploykit.gguf.convert import OUTTYPES


def _key_values(ctx, param, values):
    out = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--metadata {item!r} is not KEY=VALUE", "e.g. --metadata author=me")
        out[key.strip()] = value
    return out


@click.command(context_settings=CONTEXT)
@click.argument("model_dir", callback=existing("model folder"))
@path_option(
    "--out",
    "-o",
    required=True,
    help="The GGUF file to write (written to a temp name, then renamed).",
)
@choice_option("--outtype", OUTTYPES, "f16", "Tensor type; auto keeps the model's 16-bit type.")
@click.option("--name", help="general.name in the GGUF (default: from the model).")
@click.option(
    "--metadata",
    multiple=True,
    callback=_key_values,
    metavar="KEY=VALUE",
    help="general.* metadata, e.g. author=me, license=apache-2.0 (repeatable).",
)
@path_option(
    "--adapter",
    "adapter_dirs",
    what="adapter",
    multiple=True,
    help="PEFT adapter to merge into MODEL_DIR (its base) as the GGUF is written, with no "
    "merged copy on disk; repeat to merge several, in order.",
)
@flag_option("--allow-pickle", "Also convert pickled weights (*.bin; loading them runs code).")
@flag_option("--force", "Replace an existing --out file.")
@json_option
def convert(model_dir, adapter_dirs, as_json: bool, **options) -> None:
    """Convert a Hugging Face model folder (e.g. a merged fine-tune) to GGUF.

    Runs the pinned llama.cpp converter. Checks before starting: the architecture is
    supported (close matches listed otherwise), tokenizer files are present, the output
    folder is writable and has room. The model's own chat template is always embedded.

    With --adapter, MODEL_DIR is the base: each tensor is merged (as `deploykit merge` does,
    bit for bit) while the converter writes it; the GGUF equals merging, then converting.
    Adapters whose fused merge is not proven are merged to a temporary folder first (said).
    """
    from deploykit.gguf import convert as convert_mod

    if adapter_dirs:
        from deploykit.pipeline import fused

        if options.pop("allow_pickle"):
            raise UsageError(
                "--allow-pickle does not apply with --adapter (merges need safetensors)"
            )
        r = fused.convert_with_adapters(Path(model_dir), list(adapter_dirs), **options)
    else:
        r = convert_mod.convert(model_dir, **options)
    emit(
        r,
        as_json,
        f"{r['output']}: {r['architecture']}, {r['file_type']}, "
        f"pre-tokenizer {r['pre_tokenizer']}, chat template {r['chat_template']}, "
        f"{r['bytes']} bytes, {r['seconds']}s" + (f", merge {r['merge']}" if adapter_dirs else ""),
    )


@click.command(context_settings=CONTEXT)
@click.argument("src", metavar="IN.gguf", required=False, callback=existing("GGUF"))
@click.option(
    "--quant",
    "-q",
    metavar="TYPE[,TYPE...]",
    help="Quantization types, case-insensitive: q4_k_m, q5_k_m, q6_k, q8_0, iq4_xs ...",
)
@path_option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for <name>-<TYPE>.gguf (default: beside IN).",
)
@path_option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (one type only).",
)
@path_option(
    "--imatrix",
    what="importance matrix",
    metavar="FILE",
    help="Importance matrix file (llama-imatrix output).",
)
@path_option(
    "--calibration",
    what="calibration file",
    metavar="FILE",
    help="Compute the importance matrix from this text file, or chat JSONL "
    '({"messages": [...]} per line) rendered through the model\'s template.',
)
@click.option(
    "--threads",
    "-t",
    type=click.IntRange(1),
    help="Threads (default: all cores).",
)
@flag_option("--force", "Replace existing output files.")
@flag_option("--list-types", "List the types llama-quantize accepts.")
@json_option
def quantize(src, quant, list_types: bool, as_json: bool, **options) -> None:
    """Quantize a GGUF with llama-quantize into <name>-<TYPE>.gguf files.

    Types are checked against the pinned llama-quantize's own list before anything runs.
    Types that need an importance matrix on this model (IQ1/IQ2/IQ3_XXS, Q2_K_S, ...) fail
    early unless --imatrix or --calibration is given. Never leaves a partial file.
    """
    from deploykit.gguf import quantize as quantize_mod
    from deploykit.llamacpp import tools

    if list_types:
        types = tools.quant_types()
        from deploykit.gguf.verify import kld_limits

        limits = kld_limits()
        listing = "\n".join(
            f"{k:10} {v}" + (f"  [ship/verify: mean KLD <= {limits[k]}]" if k in limits else "")
            for k, v in types.items()
            if k != "COPY"
        )
        emit({"types": types, "kld_limits": limits}, as_json, listing)
        return
    if src is None or not quant:
        raise UsageError("IN.gguf and --quant are required", "see `deploykit quantize --help`")
    if options["out"] is not None and options["out_dir"] is not None:
        raise UsageError("--out and --out-dir are alternatives", "pass only one")
    r = quantize_mod.quantize(src, quantize_mod.parse_types(quant), **options)
    emit(
        r,
        as_json,
        "\n".join(
            f"{o['output']}: {o['type']}, {o['bytes']} bytes, {o['seconds']}s"
            + (" (imatrix)" if o["imatrix"] else "")
            for o in r["outputs"]
        ),
    )


@click.command(context_settings=CONTEXT)
@click.argument("gguf_file", metavar="FILE.gguf", callback=existing("GGUF"))
@path_option(
    "--reference",
    what="reference model",
    metavar="DIR",
    help="The Hugging Face model folder the GGUF was made from: enables tokenizer "
    "parity (tokenizer.json via the tokenizers library) and logits parity. "
    "Logits parity loads the reference model into memory (float32).",
)
@path_option(
    "--probes",
    what="probes file",
    metavar="FILE",
    help="probes.json (as `deploykit demo init` writes): greedy answers must match.",
)
@path_option(
    "--baseline",
    what="baseline GGUF",
    metavar="F16.gguf",
    help="The f16 GGUF FILE was quantized from: measure perplexity and KL divergence.",
)
@path_option(
    "--calibration",
    what="calibration text",
    metavar="FILE",
    help="Text for --baseline (default: the pinned llama.cpp README).",
)
@click.option(
    "--max-kld",
    type=click.FloatRange(0),
    help="With --baseline: fail (exit 7) when the mean KL divergence is higher "
    "(default: the limit for the quant's type, e.g. 0.1 for Q4_K_M, 0.005 for Q8_0; "
    "see `deploykit quantize --list-types`).",
)
@click.option(
    "--threads",
    "-t",
    type=click.IntRange(1),
    help="llama.cpp threads (default: half the cores for llama-server, all for llama-perplexity).",
)
@json_option
def verify(gguf_file, as_json: bool, **options) -> None:
    """Check a GGUF: metadata, that llama.cpp loads and generates, tokenizer and logits
    parity with --reference, exact probe answers with --probes, and quantization quality
    against --baseline. Exits 7 when a check fails; --json prints the full report."""
    from deploykit.gguf import verify as verify_mod

    report(verify_mod.verify(gguf_file, **options), as_json)
