"""ship and cache: the whole pipeline and its step cache."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, host_option, json_option
from deploykit.core.errors import InputError

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


@click.command(context_settings=CONTEXT)
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
    from deploykit.ollama import modelfile
    from deploykit.pipeline import ship as pipeline

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


@click.group(context_settings=CONTEXT)
def cache() -> None:
    """The ship step cache (the work directory)."""


@cache.command("list", context_settings=CONTEXT)
@click.option(
    "--work-dir", type=click.Path(path_type=Path), help="Default ~/.cache/deploykit/work."
)
@json_option
def cache_list(work_dir, as_json) -> None:
    """List cached steps with their sizes."""
    from deploykit.pipeline import ship as pipeline

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
    from deploykit.pipeline import ship as pipeline

    result = pipeline.cache_prune(work_dir, older_than)
    emit(result, as_json, f"freed {result['bytes_freed']:,} bytes ({len(result['removed'])} steps)")
