"""pull: models from Hugging Face or ModelScope."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, json_option

# --- pull (issue 7) -----------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
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
    from deploykit.hub import pull as hub

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
