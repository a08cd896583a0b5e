"""The ``deploykit`` command line: each command parses options, calls one library function, prints.

Failures print one line, ``error: <what> (hint: <what to do>)``, and exit with the error
class's code (see errors.py); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_CODES, DeploykitError, InputError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def emit(result: dict, as_json: bool, human: str | None = None) -> None:
    """``--json``: one object on stdout; otherwise the human summary on stdout."""
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    elif human:
        click.echo(human)


def existing(kind: str = "path"):
    """A click callback: the value(s) must exist (else an InputError, exit 3)."""

    def check(ctx, param, value):
        if value is None:
            return None
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if not Path(v).exists():
                name = param.opts[0] if param.opts else param.human_readable_name
                raise InputError(f"{kind} not found: {v}", f"check the path given to {name}")
        paths = tuple(Path(v) for v in values)
        return paths if isinstance(value, tuple) else paths[0]

    return check


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)


@click.group(
    context_settings=CONTEXT,
    epilog="Exit codes: " + ", ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + ".",
)
@click.version_option(__version__, "--version", prog_name="deploykit")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """Ship a fine-tuned model (a PEFT LoRA adapter) to a verified, running Ollama model."""


# --- doctor -------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--host", help="Ollama server (default: $OLLAMA_HOST or http://127.0.0.1:11434).")
@json_option
def doctor(host: str | None, as_json: bool) -> None:
    """Check the llama.cpp tree and tools, Python packages and the Ollama server.

    Exits non-zero, with one hint per missing required piece, when something deploykit
    needs is missing. An unreachable Ollama server is reported but is not an error.
    """
    from . import doctor as doctor_mod

    report = doctor_mod.run(host)
    if as_json:
        emit(report, True)
    else:
        for c in report["checks"]:
            mark = "ok " if c["ok"] else ("-- " if not c["required"] else "MISSING")
            what = c["version"] or c["detail"] or ""
            where = f"  {c['path']}" if c["path"] else ""
            click.echo(f"{mark:8}{c['kind']:10} {c['name']:24} {what}{where}")
    failed = [c for c in report["checks"] if c["required"] and not c["ok"]]
    for c in failed:
        click.echo(f"error: {c['name']}: {c['detail'] or 'missing'} (hint: {c['hint']})", err=True)
    if failed:
        sys.exit(3 if all(c["kind"] == "package" for c in failed) else 6)


# --- toolchain ----------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def toolchain() -> None:
    """Fetch the pinned llama.cpp tree and build its tools (what `make vendor/toolchain` run)."""


@toolchain.command("vendor", context_settings=CONTEXT)
@click.option("--sdist", callback=existing("sdist"), help="Use this downloaded sdist file.")
@click.option("--force", is_flag=True, help="Extract again even if the tree is up to date.")
@json_option
def toolchain_vendor(sdist: Path | None, force: bool, as_json: bool) -> None:
    """Download the pinned llama-cpp-python sdist, verify its sha256, extract vendor/llama.cpp."""
    from . import vendor

    result = vendor.fetch(sdist=sdist, force=force)
    emit(
        result,
        as_json,
        f"llama.cpp {result['llama_cpp_commit'][:12]} ({result['action']}) in {result['path']}",
    )


@toolchain.command("build", context_settings=CONTEXT)
@click.option(
    "--jobs", "-j", type=click.IntRange(1), help="Parallel compile jobs (default: cores)."
)
@click.option("--force", is_flag=True, help="Rebuild even if the cached tools are present.")
@json_option
def toolchain_build(jobs: int | None, force: bool, as_json: bool) -> None:
    """Build llama-quantize, llama-imatrix, llama-perplexity, llama-server, llama-tokenize and
    llama-cli into the cache (about 10 minutes on 2 cores; reused afterwards)."""
    from . import llamacpp

    result = llamacpp.build(jobs=jobs, force=force)
    emit(result, as_json, f"llama.cpp tools ({result['action']}) in {result['bin_dir']}")


# --- demo ---------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def demo() -> None:
    """The embedded demo models: a tiny base and a real LoRA fine-tune of it, built offline."""


@demo.command("init", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(["qwen2", "llama"]),
    default="qwen2",
    show_default=True,
    help="Qwen2 (ChatML template) or Llama (Llama 3.1 template).",
)
@click.option("--force", is_flag=True, help="Replace a demo already in DIRECTORY.")
@json_option
def demo_init(directory: Path, arch: str, force: bool, as_json: bool) -> None:
    """Build DIRECTORY/base, DIRECTORY/adapter and DIRECTORY/probes.json.

    The base is a tiny model with a real tokenizer (rebuilt from llama.cpp's vocab files);
    the adapter is trained until it answers the probe prompts with fixed answers. Built
    once and cached (under a minute on 2 cores), then copied.
    """
    from . import llamacpp
    from .demo import models

    tree = llamacpp.locate_tree()
    result = models.init(directory, arch, tree.path, force=force)
    emit(
        result,
        as_json,
        f"demo base:    {result['base']}\ndemo adapter: {result['adapter']}\n"
        f"probes:       {result['probes']}",
    )


# --- merge (issue 3) ----------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option(
    "--adapter",
    "adapter_dirs",
    multiple=True,
    required=True,
    callback=existing("adapter"),
    help="PEFT adapter directory; repeat to merge several, in order.",
)
@click.option(
    "--base", help="Base model directory (default: the adapter's base_model_name_or_path)."
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Output model directory."
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "bfloat16", "float32", "auto"]),
    default="float16",
    show_default=True,
    help="Output dtype; auto keeps the base's.",
)
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option(
    "--allow-overflow",
    is_flag=True,
    help="Write values beyond float16's range as inf instead of failing.",
)
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
@json_option
def merge(adapter_dirs, base, out, dtype, shard_size, allow_overflow, force, as_json) -> None:
    """Merge PEFT adapters into their base model, shard by shard.

    Memory stays near the size of the largest tensor: untouched tensors are copied in chunks,
    touched ones merged one at a time with the same operations as peft's merge_and_unload(),
    so the result is bit-identical. Writes safetensors shards, model.safetensors.index.json,
    config.json, generation config and tokenizer files (the adapter's own tokenizer if it
    carries one). Supports LoRA (rsLoRA, DoRA, patterns, bias, embeddings, modules_to_save,
    trainable tokens, resized vocabularies), AdaLoRA and IA3.
    """
    from . import merge as merge_mod

    result = merge_mod.merge(
        list(adapter_dirs),
        out,
        base=base,
        dtype=dtype,
        shard_size=shard_size,
        allow_overflow=allow_overflow,
        force=force,
    )
    emit(
        result,
        as_json,
        f"merged {result['tensors_changed']} tensors into {result['out']} "
        f"({result['shards']} shard(s), {result['bytes']} bytes, {dtype})",
    )


# --- convert / quantize / verify (issue 4) ------------------------------------------------

# --- modelfile / templates (issue 5) ------------------------------------------------------

# --- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn failures into one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DEPLOYKIT_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="deploykit", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "deploykit"
        err = UsageError(exc.format_message(), f"see `{where} --help`")
        click.echo(err.line(), err=True)
        sys.exit(err.exit_code)
    except DeploykitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(exc.line(), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(
            f"error: internal error: {exc.__class__.__name__}: {exc} "
            "(hint: rerun with --debug and report the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
