"""ship and cache: the whole pipeline and its step cache."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import (
    CONTEXT,
    command_options,
    emit,
    families_dir_option,
    from_options,
    json_option,
)
from deploykit.pipeline.options import CONFIG_FILE, ShipOptions


@click.command(context_settings=CONTEXT)
@command_options(
    ShipOptions,
    default_file=CONFIG_FILE,
    section="ship",
    help=f"Settings file, TOML ([ship] table) or YAML (default ./{CONFIG_FILE} if present); "
    "command-line options win.",
)
@families_dir_option
def ship(as_json: bool, **values) -> None:
    """Adapter to a verified, running Ollama model in one command.

    resolve base -> merge -> convert -> verify -> quantize (each type) -> verify each ->
    Modelfile -> bundle (GGUFs, Modelfile, manifest.json, README.md) -> create in Ollama +
    health check (-> with --push, publish the bundle as `deploykit push` does). Finished
    steps are reused on a re-run (after a failure, or with one more --quant); --force redoes
    them.
    """
    from deploykit.pipeline import ship as pipeline

    manifest = pipeline.ship(from_options(ShipOptions, values))
    lines = [f"{o['type']:8} {o['size']:>14,}  {o['path']}" for o in manifest["outputs"]]
    created = manifest["ollama"].get("created") or []
    lines.append(f"bundle: {Path(manifest['outputs'][0]['path']).parent}")
    lines.append("ollama: " + (", ".join(created) if created else "not created (see above)"))
    for target in manifest.get("push") or []:
        what = target.get("commit") or ", ".join(p["model"] for p in target.get("pushed", []))
        lines.append(f"pushed: {target['target']} ({what or 'already up to date'})")
    emit(manifest, as_json, "\n".join(lines))


@click.group(context_settings=CONTEXT)
def cache() -> None:
    """The ship step cache (the work directory)."""


work_dir_option = click.option(
    "--work-dir", type=click.Path(path_type=Path), help="Default ~/.cache/deploykit/work."
)


@cache.command("list", context_settings=CONTEXT)
@work_dir_option
@json_option
def cache_list(work_dir, as_json) -> None:
    """List cached steps with their sizes."""
    from deploykit.pipeline import steps

    entries = steps.cache_list(work_dir)
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
@work_dir_option
@click.option("--older-than", type=float, default=0, show_default=True, help="Days.")
@json_option
def cache_prune(work_dir, older_than, as_json) -> None:
    """Remove cached steps older than --older-than days, and what killed runs left once it is
    an hour old. Only deploykit's own step directories are ever touched."""
    from deploykit.pipeline import steps

    result = steps.cache_prune(work_dir, older_than)
    emit(result, as_json, f"freed {result['bytes_freed']:,} bytes ({len(result['removed'])} steps)")
