"""doctor, toolchain and demo: the pieces deploykit runs, and the demo models."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, existing, host_option, json_option, report

# --- doctor -------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@host_option
@json_option
def doctor(host: str | None, as_json: bool) -> None:
    """Check the llama.cpp tree and tools, Python packages and the Ollama server.

    Exits non-zero (3: Python packages missing, 6: the llama.cpp toolchain), naming the
    command that restores each missing piece. An unreachable Ollama server is reported but
    is not an error: building a release bundle does not need one.
    """
    from deploykit.pipeline import doctor as doctor_mod

    report(doctor_mod.run(host), as_json)


# --- toolchain ----------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def toolchain() -> None:
    """Fetch the pinned llama.cpp tree and build its tools (what `make vendor/toolchain` run)."""


@toolchain.command("vendor", context_settings=CONTEXT)
@click.option("--sdist", callback=existing("sdist"), help="Use this downloaded sdist file.")
@click.option("--force", is_flag=True, help="Extract again even if the tree is up to date.")
@json_option
def toolchain_vendor(sdist: Path | None, force: bool, as_json: bool) -> None:
    """Download the pinned llama-cpp-python sdist, verify its sha256, extract its llama.cpp
    (into vendor/llama.cpp in a checkout, else into the cache)."""
    from deploykit.llamacpp import vendor

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
    """Build llama-quantize, llama-imatrix, llama-perplexity, llama-server, llama-tokenize,
    llama-cli and llama-gguf-split into the cache (about 10 minutes on 2 cores; reused
    afterwards)."""
    from deploykit.llamacpp import build

    result = build.build(jobs=jobs, force=force)
    emit(result, as_json, f"llama.cpp tools ({result['action']}) in {result['bin_dir']}")


# --- demo ---------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def demo() -> None:
    """The embedded demo models: a tiny base and a real LoRA fine-tune of it, built offline."""


@demo.command("init", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(["qwen2", "llama", "qwen3.5", "gemma4"]),
    default="qwen2",
    show_default=True,
    help="Qwen2 (Qwen2.5 template), Llama (Llama 3.1 template), Qwen3.5 (hybrid linear "
    "attention, Qwen3.5 template) or Gemma 4 (text model, Gemma 4 template).",
)
@click.option("--force", is_flag=True, help="Replace a demo already in DIRECTORY.")
@json_option
def demo_init(directory: Path, arch: str, force: bool, as_json: bool) -> None:
    """Build DIRECTORY/base, DIRECTORY/adapter and DIRECTORY/probes.json.

    The base is a tiny model with a real tokenizer (rebuilt from llama.cpp's vocab files);
    the adapter is trained until it answers the probe prompts with fixed answers. Built
    once and cached (under a minute on 2 cores), then copied.
    """
    from deploykit.demo import models
    from deploykit.llamacpp import tree as llamacpp

    tree = llamacpp.locate_tree()
    result = models.init(directory, arch, tree.path, force=force)
    emit(
        result,
        as_json,
        f"demo base:    {result['base']}\ndemo adapter: {result['adapter']}\n"
        f"probes:       {result['probes']}",
    )
