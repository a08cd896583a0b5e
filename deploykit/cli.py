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


# --- Ollama: create / run / health (issue 6) -------------------------------------------

host_option = click.option(
    "--host", help="Ollama server (default: $OLLAMA_HOST or http://127.0.0.1:11434)."
)


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "-f",
    "--file",
    "modelfile_path",
    required=True,
    callback=existing("Modelfile"),
    help="The Modelfile; FROM is a GGUF path relative to it.",
)
@host_option
@json_option
def create(name: str, modelfile_path: Path, host: str | None, as_json: bool) -> None:
    """Create model NAME in Ollama from a Modelfile, through the HTTP API.

    Uploads FROM (and ADAPTER) files as blobs, skipping those the server already has, then
    creates the model with the current API (Ollama >= 0.5.5). A FROM that is not an existing
    file is an error: deploykit never pulls a model by name.
    """
    from . import deploy, ui

    result = deploy.create(
        name, modelfile_path, host, on_status=lambda obj: ui.info(obj.get("status", ""))
    )
    emit(result, as_json, f"created {result['model']} at {result['host']}")


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@click.argument("prompt", required=False)
@click.option("--system", help="System message for this conversation.")
@host_option
@json_option
def run(name: str, prompt: str | None, system: str | None, host: str | None, as_json: bool) -> None:
    """Ask model NAME one PROMPT and stream the answer; without PROMPT, read it from piped
    stdin, or chat interactively on a terminal (an empty line or Ctrl-D ends)."""
    from . import deploy

    def stream(text: str) -> None:
        if not as_json:
            click.echo(text, nl=False)

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt is not None:
        final = deploy.chat(name, prompt, system, host, stream)
        if as_json:
            emit(final, True)
        else:
            click.echo()
        return
    history = [{"role": "system", "content": system}] if system else []
    from .ollama import Client

    with Client(host) as client:
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                break
            if not line.strip():
                break
            history.append({"role": "user", "content": line})
            final = client.chat(
                {"model": name, "messages": history},
                lambda o: stream((o.get("message") or {}).get("content") or ""),
            )
            click.echo()
            history.append(final["message"])


@cli.command(context_settings=CONTEXT)
@click.argument("name")
@host_option
@click.option(
    "--probes",
    type=click.Path(path_type=Path),
    callback=existing("probes file"),
    help="probes.json: greedy answers must equal the expected ones.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    callback=existing("reference"),
    help="Model dir or GGUF whose chat template the server's rendering must equal.",
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per request.")
@json_option
def health(name, host, probes, reference, timeout, as_json) -> None:
    """Check that model NAME is deployed and behaves: server version >= 0.5.5, model listed, a
    real template with stop parameters (and tools capability when the template handles
    tools), a smoke chat without leaked control tokens, tokens/s; with --reference, the
    prompt the server renders equals the model's own chat template rendering; with --probes,
    the fine-tune's expected answers. Exits 9 when any check fails."""
    from . import health as health_mod
    from .errors import HealthCheckError

    report = health_mod.check(name, host, probes, reference, timeout)
    if as_json:
        emit(report, True)
    else:
        for c in report["checks"]:
            click.echo(f"{'ok ' if c['ok'] else 'FAIL'}  {c['name']:28} {c['detail']}")
        if "tokens_per_second" in report:
            click.echo(f"      {'tokens/s':28} {report['tokens_per_second']}")
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    if failed:
        raise HealthCheckError(
            f"{name} failed {len(failed)} check(s): {', '.join(failed)}",
            "see the report above; redeploy with the right template/Modelfile",
        )


# --- modelfile / templates (issue 5) ------------------------------------------------------


@cli.command("modelfile", context_settings=CONTEXT)
@click.option("--gguf", required=True, callback=existing("GGUF file"), help="The model file.")
@click.option(
    "--model-dir",
    callback=existing("model directory"),
    help="HF model dir (tokenizer_config.json, generation_config.json); default: GGUF metadata.",
)
@click.option(
    "--family",
    default="auto",
    show_default=True,
    help="Template family, or `auto`: exact match of the model's chat template on probes.",
)
@click.option(
    "--template-file",
    callback=existing("template file"),
    help="Use this Ollama (Go) TEMPLATE instead of the family's.",
)
@click.option("--system", help="SYSTEM prompt (default: the family's, if its template has one).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="PARAMETER (repeatable; `stop` adds a stop string). Wins over generation_config.json.",
)
@click.option("--license", "license_file", callback=existing("license file"), help="LICENSE text.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("Modelfile"),
    show_default=True,
    help="Where to write the Modelfile (`-` prints it).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@json_option
def modelfile_cmd(
    gguf: Path,
    model_dir: Path | None,
    family: str,
    template_file: Path | None,
    system: str | None,
    params: tuple[str, ...],
    license_file: Path | None,
    out: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Write an Ollama Modelfile for GGUF whose TEMPLATE reproduces the model's chat template."""
    from . import modelfile

    to_stdout = str(out) == "-"
    parsed = [modelfile.parse_param_option(p) for p in params]
    result = modelfile.render(
        gguf,
        model_dir=model_dir,
        family=family,
        template_file=template_file,
        system=system,
        params=parsed,
        license_file=license_file,
        out=None if to_stdout else out,
    )
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if to_stdout:
        click.echo(result.text, nl=False)
        return
    modelfile.write(out, result.text, force=force)
    how = "detected" if result.detected else "chosen"
    emit(
        {"modelfile": str(out), **result.summary()},
        as_json,
        f"wrote {out} (family {result.family or 'custom'}, {how})",
    )


@cli.group(context_settings=CONTEXT)
def templates() -> None:
    """The chat-template families Modelfiles are rendered from (modelfile_templates/)."""


@templates.command("list", context_settings=CONTEXT)
@json_option
def templates_list(as_json: bool) -> None:
    """List the families with what they support and the upstream templates they reproduce."""
    from . import templates as templates_mod

    fams = templates_mod.families().values()
    rows = [
        {
            "name": f.name,
            "description": f.description,
            "tools": f.tools,
            "thinking": f.thinking,
            "system_role": f.system_role,
            "references": list(f.references),
        }
        for f in fams
    ]
    human = "\n".join(f"{r['name']:10} {r['description']}" for r in rows)
    emit({"families": rows}, as_json, human)


@templates.command("show", context_settings=CONTEXT)
@click.argument("name")
@json_option
def templates_show(name: str, as_json: bool) -> None:
    """Show a family's metadata and its Ollama TEMPLATE."""
    from . import templates as templates_mod

    f = templates_mod.get(name)
    data = {
        "name": f.name,
        "description": f.description,
        "references": list(f.references),
        "stop": list(f.stop),
        "default_system": f.default_system,
        "parameters": f.parameters,
        "tools": f.tools,
        "thinking": f.thinking,
        "system_role": f.system_role,
        "min_ollama": f.min_ollama,
        "template": f.go_template(),
    }
    human = "\n".join(
        [
            f"family:      {f.name} — {f.description}",
            f"reproduces:  {', '.join(f.references)}",
            f"stop:        {', '.join(f.stop)}",
            f"system:      {f.default_system or '(none)'}",
            f"parameters:  {', '.join(f'{k}={v}' for k, v in f.parameters.items()) or '(none)'}",
            f"needs:       Ollama >= {f.min_ollama}",
            "template:",
            data["template"],
        ]
    )
    emit(data, as_json, human)


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
