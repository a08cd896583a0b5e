"""convert, quantize and verify: GGUF files on the pinned llama.cpp."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, existing, json_option
from deploykit.core.errors import InputError, UsageError

# --- convert / quantize / verify (issue 4) ------------------------------------------------


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
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="The GGUF file to write (written to a temp name, then renamed).",
)
@click.option(
    "--outtype",
    type=click.Choice(["f16", "bf16", "f32", "q8_0", "auto"]),
    default="f16",
    show_default=True,
    help="Tensor type; auto keeps the model's 16-bit type.",
)
@click.option("--name", help="general.name in the GGUF (default: from the model).")
@click.option(
    "--metadata",
    multiple=True,
    callback=_key_values,
    metavar="KEY=VALUE",
    help="general.* metadata, e.g. author=me, license=apache-2.0 (repeatable).",
)
@json_option
def convert(
    model_dir: Path, out: Path, outtype: str, name: str | None, metadata: dict, as_json: bool
) -> None:
    """Convert a Hugging Face model folder (e.g. a merged fine-tune) to GGUF.

    Runs the pinned llama.cpp converter. Checks before starting: the architecture is
    supported (close matches listed otherwise), tokenizer files are present, the output
    folder is writable and has room. The model's own chat template is always embedded.
    """
    from deploykit.gguf import convert as convert_mod

    r = convert_mod.convert(model_dir, out, outtype=outtype, name=name, metadata=metadata)
    emit(
        r,
        as_json,
        f"{r['output']}: {r['architecture']}, {r['file_type']}, "
        f"pre-tokenizer {r['pre_tokenizer']}, chat template {r['chat_template']}, "
        f"{r['bytes']} bytes, {r['seconds']}s",
    )


@click.command(context_settings=CONTEXT)
@click.argument("src", metavar="IN.gguf", required=False, callback=existing("GGUF"))
@click.option(
    "--quant",
    "-q",
    metavar="TYPE[,TYPE...]",
    help="Quantization types, case-insensitive: q4_k_m, q5_k_m, q6_k, q8_0, iq4_xs ...",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for <name>-<TYPE>.gguf (default: beside IN).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (one type only).",
)
@click.option(
    "--imatrix",
    callback=existing("importance matrix"),
    metavar="FILE",
    help="Importance matrix file (llama-imatrix output).",
)
@click.option(
    "--calibration",
    callback=existing("calibration file"),
    metavar="FILE",
    help="Compute the importance matrix from this text file, or chat JSONL "
    '({"messages": [...]} per line) rendered through the model\'s template.',
)
@click.option(
    "--threads",
    "-t",
    type=click.IntRange(1),
    help="Threads (default: all cores for llama-quantize, half for llama-imatrix).",
)
@click.option("--list-types", is_flag=True, help="List the types llama-quantize accepts.")
@json_option
def quantize(
    src: Path | None,
    quant: str | None,
    out_dir: Path | None,
    out: Path | None,
    imatrix: Path | None,
    calibration: Path | None,
    threads: int | None,
    list_types: bool,
    as_json: bool,
) -> None:
    """Quantize a GGUF with llama-quantize into <name>-<TYPE>.gguf files.

    Types are checked against the pinned llama-quantize's own list before anything runs.
    Types that need an importance matrix on this model (IQ1/IQ2/IQ3_XXS, Q2_K_S, ...) fail
    early unless --imatrix or --calibration is given. Never leaves a partial file.
    """
    from deploykit.gguf import quantize as quantize_mod
    from deploykit.llamacpp import tree as llamacpp

    if list_types:
        types = llamacpp.quant_types()
        emit(
            {"types": types},
            as_json,
            "\n".join(f"{k:10} {v}" for k, v in types.items() if k != "COPY"),
        )
        return
    if src is None or not quant:
        raise UsageError("IN.gguf and --quant are required", "see `deploykit quantize --help`")
    if out is not None and out_dir is not None:
        raise UsageError("--out and --out-dir are alternatives", "pass only one")
    types = quantize_mod.parse_types(quant)
    r = quantize_mod.quantize(
        src,
        types,
        out_dir=out_dir,
        out=out,
        imatrix=imatrix,
        calibration=calibration,
        threads=threads,
    )
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
@click.option(
    "--reference",
    callback=existing("reference model"),
    metavar="DIR",
    help="The Hugging Face model folder the GGUF was made from: enables tokenizer "
    "parity (tokenizer.json via the tokenizers library) and logits parity. "
    "Logits parity loads the reference model into memory (float32).",
)
@click.option(
    "--probes",
    callback=existing("probes file"),
    metavar="FILE",
    help="probes.json (as `deploykit demo init` writes): greedy answers must match.",
)
@click.option(
    "--baseline",
    callback=existing("baseline GGUF"),
    metavar="F16.gguf",
    help="The f16 GGUF FILE was quantized from: measure perplexity and KL divergence.",
)
@click.option(
    "--calibration",
    callback=existing("calibration text"),
    metavar="FILE",
    help="Text for --baseline (default: the pinned llama.cpp README).",
)
@click.option(
    "--max-kld",
    type=click.FloatRange(0),
    default=0.1,
    show_default=True,
    help="With --baseline: fail (exit 7) when the mean KL divergence is higher.",
)
@click.option(
    "--threads", "-t", type=click.IntRange(1), help="llama.cpp threads (default: half the cores)."
)
@json_option
def verify(
    gguf_file: Path,
    reference: Path | None,
    probes: Path | None,
    baseline: Path | None,
    calibration: Path | None,
    max_kld: float,
    threads: int | None,
    as_json: bool,
) -> None:
    """Check a GGUF: metadata, that llama.cpp loads and generates, tokenizer and logits
    parity with --reference, exact probe answers with --probes, and quantization quality
    against --baseline. Exits 7 when a check fails; --json prints the full report."""
    from deploykit.core.errors import VerificationError
    from deploykit.gguf import verify as verify_mod

    r = verify_mod.verify(
        gguf_file,
        reference=reference,
        probes=probes,
        baseline=baseline,
        calibration=calibration,
        max_kld=max_kld,
        threads=threads,
    )
    emit(
        r,
        as_json,
        "\n".join(f"{c['status'].upper():5} {c['name']:17} {c['detail']}" for c in r["checks"]),
    )
    if not r["ok"]:
        raise VerificationError(
            f"{gguf_file} failed: {', '.join(r['failed'])}",
            "see the report above" + ("" if as_json else " (--json for details)"),
        )
