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


# --- pull (issue 7) -----------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("model_id")
@click.option(
    "--source",
    type=click.Choice(["auto", "hf", "modelscope"]),
    default="auto",
    show_default=True,
    help="Hub; auto: ModelScope when DEPLOYKIT_HUB=modelscope or USE_MODELSCOPE_HUB=1, "
    "else Hugging Face.",
)
@click.option(
    "--revision", help="Branch, tag or commit (default: main on HF, master on ModelScope)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the files to this plain directory (default: leave them in the hub's cache).",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files matching (repeatable; replaces the default deployment set).",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option(
    "--allow-pickle", is_flag=True, help="Also fetch pickled weights (*.bin, *.pt, *.pth)."
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out directory.")
@json_option
def pull(model_id, source, revision, out, include, exclude, allow_pickle, force, as_json) -> None:
    """Download MODEL_ID (OWNER/NAME) from Hugging Face or ModelScope.

    Fetches what deployment needs (safetensors, JSON configs, tokenizer files, chat template,
    license), never pickled weights unless --allow-pickle. Checks every file's size and hash,
    and writes deploykit_pull.json (source, id, commit, files with sizes and sha256) beside
    them. Tokens come from HF_TOKEN / MODELSCOPE_API_TOKEN and are never printed. When the
    hub is unreachable, a cached snapshot is used.
    """
    from . import hub

    r = hub.pull(
        model_id,
        source=source,
        revision=revision,
        out=out,
        include=include,
        exclude=exclude,
        allow_pickle=allow_pickle,
        force=force,
    )
    where = f"@{r['commit'][:12]}" if r["commit"] else f"@{r['revision']}"
    emit(r, as_json, f"{r['path']}  ({r['hub']} {r['id']}{where}, {len(r['files'])} files)")


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
    "--base",
    help="Base model directory or hub id (default: the adapter's base_model_name_or_path).",
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


# --- ship (issue 10) -------------------------------------------------------------------

SHIP_DEFAULTS_FILE = "deploykit.toml"


def _ship_config(ctx: click.Context, param, value):
    """Fill options not given on the command line from deploykit.toml ([ship] or top level)."""
    path = Path(value) if value else Path(SHIP_DEFAULTS_FILE)
    if value and not path.is_file():
        raise InputError(f"config not found: {value}", "check --config")
    if not path.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML: {exc}", "fix the config file") from None
    data = data.get("ship", data)
    by_option = {
        o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for o in p.opts
    }
    defaults = {}
    for key, v in data.items():
        name = by_option.get(key.replace("-", "_"))
        if name is None:
            raise InputError(f"{path}: unknown setting {key!r}", "use ship's option names")
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


@cli.command(context_settings=CONTEXT)
@click.option(
    "--config",
    callback=_ship_config,
    is_eager=True,
    expose_value=False,
    help="Settings file (default ./deploykit.toml if present); options win.",
)
@click.option(
    "--adapter",
    "adapter_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="PEFT adapter directory (repeat to merge several in order).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="An already merged or fully fine-tuned model directory instead of --adapter.",
)
@click.option(
    "--quant",
    "quants",
    default="q4_k_m",
    show_default=True,
    help="Quant type(s), comma-separated; each becomes tag NAME:<type>.",
)
@click.option("--base", help="Base model directory (default: the adapter's base).")
@click.option("--name", help="Ollama model name (default: from the adapter directory).")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle directory [dist/NAME].")
@click.option(
    "--target",
    type=click.Choice(["auto", "ollama", "none"]),
    default="auto",
    show_default=True,
    help="auto: create in Ollama when a server answers.",
)
@click.option("--family", default="auto", show_default=True, help="Chat template family.")
@click.option("--system", help="SYSTEM prompt for the Modelfile.")
@click.option("--param", "params", multiple=True, help="PARAMETER NAME=VALUE (repeatable).")
@click.option(
    "--outtype",
    type=click.Choice(["f16", "bf16"]),
    default="f16",
    show_default=True,
    help="GGUF type before quantization (also the merge dtype).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="Text or chat JSONL for an importance matrix.",
)
@click.option(
    "--quality-gate", type=float, help="Fail when a quant's KL divergence vs f16 exceeds this."
)
@click.option(
    "--verify",
    "verify_mode",
    type=click.Choice(["light", "full", "none"]),
    default="light",
    show_default=True,
    help="light: metadata, tokenizer, generation, probes, KLD via llama.cpp; full adds "
    "logits parity in transformers (memory ~ the model's size).",
)
@click.option(
    "--probes", type=click.Path(path_type=Path), help="probes.json with expected answers."
)
@host_option
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    help="Step cache (default ~/.cache/deploykit/work).",
)
@click.option("--force", is_flag=True, help="Redo every step; replace the bundle.")
@json_option
def ship(
    adapter_dirs,
    model_dir,
    quants,
    base,
    name,
    out,
    target,
    family,
    system,
    params,
    outtype,
    calibration,
    quality_gate,
    verify_mode,
    probes,
    host,
    work_dir,
    force,
    as_json,
) -> None:
    """Adapter to a verified, running Ollama model in one command.

    resolve base -> merge -> convert -> verify -> quantize (each type) -> verify each ->
    Modelfile -> bundle (GGUFs, Modelfile, manifest.json, README.md) -> create in Ollama +
    health check. Finished steps are reused on a re-run (after a failure, or with one more
    --quant); --force redoes them.
    """
    from . import modelfile, pipeline

    opts = pipeline.ShipOptions(
        adapters=list(adapter_dirs),
        model=model_dir,
        base=base,
        quants=[q for q in str(quants).split(",") if q.strip()],
        name=name,
        out=out,
        target=target,
        family=family,
        system=system,
        params=[modelfile.parse_param_option(p) for p in params],
        outtype=outtype,
        calibration=calibration,
        quality_gate=quality_gate,
        verify=verify_mode,
        probes=probes,
        host=host,
        work_dir=work_dir,
        force=force,
    )
    manifest = pipeline.ship(opts)
    lines = [f"{o['type']:8} {o['size']:>14,}  {o['path']}" for o in manifest["outputs"]]
    created = manifest["ollama"].get("created") or []
    lines.append(f"bundle: {Path(manifest['outputs'][0]['path']).parent}")
    lines.append("ollama: " + (", ".join(created) if created else "not created (see above)"))
    emit(manifest, as_json, "\n".join(lines))


@cli.group(context_settings=CONTEXT)
def cache() -> None:
    """The ship step cache (the work directory)."""


@cache.command("list", context_settings=CONTEXT)
@click.option(
    "--work-dir", type=click.Path(path_type=Path), help="Default ~/.cache/deploykit/work."
)
@json_option
def cache_list(work_dir, as_json) -> None:
    """List cached steps with their sizes."""
    from . import pipeline

    entries = pipeline.cache_list(work_dir)
    emit(
        {"steps": entries},
        as_json,
        "\n".join(
            f"{e['bytes']:>14,}  {'done ' if e['finished'] else 'partial'}  {e['step']}"
            for e in entries
        )
        or "the work directory is empty",
    )


@cache.command("prune", context_settings=CONTEXT)
@click.option(
    "--work-dir", type=click.Path(path_type=Path), help="Default ~/.cache/deploykit/work."
)
@click.option("--older-than", type=float, default=0, show_default=True, help="Days.")
@json_option
def cache_prune(work_dir, older_than, as_json) -> None:
    """Remove cached steps (unfinished ones always)."""
    from . import pipeline

    result = pipeline.cache_prune(work_dir, older_than)
    emit(result, as_json, f"freed {result['bytes_freed']:,} bytes ({len(result['removed'])} steps)")


# --- convert / quantize / verify (issue 4) ------------------------------------------------


def _key_values(ctx, param, values):
    out = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--metadata {item!r} is not KEY=VALUE", "e.g. --metadata author=me")
        out[key.strip()] = value
    return out


@cli.command(context_settings=CONTEXT)
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
    from . import convert as convert_mod

    r = convert_mod.convert(model_dir, out, outtype=outtype, name=name, metadata=metadata)
    emit(
        r,
        as_json,
        f"{r['output']}: {r['architecture']}, {r['file_type']}, "
        f"pre-tokenizer {r['pre_tokenizer']}, chat template {r['chat_template']}, "
        f"{r['bytes']} bytes, {r['seconds']}s",
    )


@cli.command(context_settings=CONTEXT)
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
    from . import llamacpp
    from . import quantize as quantize_mod

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


@cli.command(context_settings=CONTEXT)
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
    from . import verify as verify_mod
    from .errors import VerificationError

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


# --- train (issue 8) ---------------------------------------------------------------------


def _train_config(ctx, param, value):
    """``--config FILE.yaml``: its values become the defaults, so command-line options win."""
    if value is not None:
        from .train.args import load_config

        ctx.default_map = {**(ctx.default_map or {}), **load_config(Path(value))}
    return value


def _train_command(func):
    from .train.args import click_options

    func = click_options(func)
    func = click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        callback=_train_config,
        is_eager=True,
        expose_value=False,
        help="YAML file of options (ours, or a LlamaFactory training config); "
        "command-line options win over it.  [default: none]",
    )(func)
    return json_option(func)


@cli.command(context_settings=CONTEXT)
@_train_command
def train(as_json: bool, **options) -> None:
    """Fine-tune a base model with a PEFT method; write an adapter directory.

    \b
    Methods (all from peft, trained with transformers.Trainer):
      lora        LoRA (--lora-rank/--lora-alpha/--lora-dropout/--lora-target, --layers)
      dora        weight-decomposed LoRA        rslora    rank-stabilised LoRA (alpha/sqrt(r))
      loraplus    LoRA+: B matrices get --loraplus-lr-ratio x the learning rate
      adalora     AdaLoRA: ranks differ per module (budget from --adalora-init-r to --lora-rank)
      ia3         IA3: learned rescaling vectors
      prefix      prefix tuning: virtual key/values at every layer, through an MLP
      ptuning-v2  P-tuning v2: prefix at every layer, no reparameterisation
      prompt      prompt tuning: virtual tokens at the input only
      ptuning     P-tuning: virtual tokens from an MLP or LSTM prompt encoder
    The bottleneck adapter (Houlsby) is not in peft and is out of scope.

    \b
    Data: LlamaFactory's alpaca or sharegpt records (JSON or JSONL) via --data, or names
    from --dataset-dir/dataset_info.json via --dataset. Rendered through the base's own
    chat template; the loss covers assistant tokens only.

    \b
    Output (--out): the peft adapter with the tokenizer and base_model_name_or_path,
    train_args.yaml, trainer_log.jsonl (step, loss, lr) and training_loss.png.
    LoRA-family and IA3 outputs go to `deploykit merge`; prefix/prompt/p-tuning ones
    cannot be merged into weights. Multi-GPU: `accelerate launch -m deploykit train ...`.
    """
    from .train import run
    from .train.args import TrainArgs

    options["data"] = list(options.get("data") or ())
    r = run.train(TrainArgs(**options))
    emit(
        r,
        as_json,
        f"{r['method']} adapter in {r['out']}: {r['steps']} steps, loss {r['train_loss']}, "
        f"{r['tokens_per_second']} tokens/s",
    )


# --- eval (issue 9) -----------------------------------------------------------------------


@cli.command("eval", context_settings=CONTEXT)
@click.option(
    "--data",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Data file or folder (JSON/JSONL; alpaca, sharegpt or openai records); repeatable.",
)
@click.option("--dataset", help="Dataset name(s), comma-separated, from dataset_info.json.")
@click.option(
    "--dataset-dir",
    default="data",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder holding dataset_info.json and the data files.",
)
@click.option(
    "--formatting",
    type=click.Choice(["auto", "alpaca", "sharegpt", "openai"]),
    default="auto",
    show_default=True,
    help="Format of --data files (auto: from the keys of the first record).",
)
@click.option("--ollama", "ollama_name", metavar="NAME", help="A model in Ollama (chat API).")
@host_option
@click.option("--gguf", type=click.Path(path_type=Path), help="A GGUF, run by llama-server.")
@click.option("--hf", type=click.Path(path_type=Path), help="A Hugging Face model directory.")
@click.option(
    "--adapter", type=click.Path(path_type=Path), help="With --hf: an unmerged PEFT adapter."
)
@click.option(
    "--compare",
    multiple=True,
    metavar="MODEL",
    help="Also evaluate MODEL and compare it with the first (repeatable): ollama:NAME, "
    "gguf:FILE, hf:DIR[+ADAPTER], or a bare GGUF file, model/adapter dir or Ollama name.",
)
@click.option(
    "--max-drop",
    multiple=True,
    metavar="METRIC=VALUE",
    help="With --compare: exit 7 when a model's METRIC is below the first model's by more "
    "than VALUE points (or VALUE%, relative), e.g. bleu-4=2, rouge-l=5%. Repeatable.",
)
@click.option("--max-samples", type=click.IntRange(1), help="Use at most N records per dataset.")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Longest answer generated.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="0: greedy decoding (reproducible); above 0: sampling with --seed.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval"),
    show_default=True,
    help="Output folder (with --compare: one sub-folder per model).",
)
@json_option
def eval_cmd(
    data,
    dataset,
    dataset_dir,
    formatting,
    ollama_name,
    host,
    gguf,
    hf,
    adapter,
    compare,
    max_drop,
    max_samples,
    max_new_tokens,
    temperature,
    seed,
    out,
    as_json,
) -> None:
    """Predict LlamaFactory data with a deployed model and score it as LlamaFactory does.

    \b
    The prompt is every turn before a record's last assistant answer; the label is that
    answer. Writes generated_predictions.jsonl ({prompt, predict, label} per line) and
    predict_results.json (predict_bleu-4, predict_rouge-1/2/l, predict_runtime,
    predict_samples_per_second, predict_steps_per_second): ROUGE F-scores over jieba words
    (rouge-chinese), BLEU-4 over characters (nltk, smoothing method3), x100, averaged.
    With --compare: a table of deltas against the first model, compare.md and compare.png.
    Ctrl-C keeps the predictions made so far.
    """
    from . import eval_data
    from . import evaluate as ev

    chosen = [x for x in (ollama_name, gguf, hf) if x is not None]
    if len(chosen) != 1:
        raise UsageError(
            "pass exactly one of --ollama NAME, --gguf FILE, --hf DIR",
            "see `deploykit eval --help`",
        )
    if adapter is not None and hf is None:
        raise UsageError("--adapter goes with --hf", "pass --hf BASE_DIR --adapter ADAPTER_DIR")
    gates = [ev.parse_max_drop(x) for x in max_drop]
    if hf is not None:
        first = ev.hf_spec(hf, adapter)
    elif gguf is not None:
        first = ev.parse_spec(f"gguf:{gguf}")
    else:
        first = ev.parse_spec(f"ollama:{ollama_name}", host)
    specs = [first] + [ev.parse_spec(c, host) for c in compare]
    samples, files = eval_data.load(list(data), dataset, dataset_dir, formatting, max_samples)
    gen = ev.GenOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = ev.evaluate(specs, samples, out, gen, gates, data_files=files)
    emit(result, as_json, ev.summary(result))
    err = ev.gate_error(result)
    if err is not None:
        raise err


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
