"""pull and merge: a base from Hugging Face or ModelScope, adapters merged into it."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import (
    CONTEXT,
    choice_option,
    emit,
    flag_option,
    json_option,
    path_option,
)


@click.command(context_settings=CONTEXT)
@click.argument("model_id")
@choice_option(
    "--source",
    ("auto", "hf", "modelscope"),
    "auto",
    "Hub; auto: ModelScope when DEPLOYKIT_HUB=modelscope or USE_MODELSCOPE_HUB=1, "
    "else Hugging Face.",
)
@click.option(
    "--revision", help="Branch, tag or commit (default: main on HF, master on ModelScope)."
)
@path_option(
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
@flag_option("--allow-pickle", "Also fetch pickled weights (*.bin, *.pt, *.pth).")
@flag_option("--force", "Replace a non-empty --out directory.")
@json_option
def pull(model_id, as_json, **options) -> None:
    """Download MODEL_ID (OWNER/NAME) from Hugging Face or ModelScope.

    Fetches what deployment needs (safetensors, JSON configs, tokenizer files, chat template,
    license), never pickled weights unless --allow-pickle. Checks every file's size and hash,
    and writes deploykit_pull.json (source, id, commit, files with sizes and sha256) beside
    them. Tokens come from HF_TOKEN / MODELSCOPE_API_TOKEN and are never printed. When the
    hub is unreachable, a cached snapshot is used.
    """
    from deploykit.hub import pull as hub

    r = hub.pull(model_id, **options)
    where = f"@{r['commit'][:12]}" if r["commit"] else f"@{r['revision']}"
    emit(r, as_json, f"{r['path']}  ({r['hub']} {r['id']}{where}, {len(r['files'])} files)")


@click.command(context_settings=CONTEXT)
@path_option(
    "--adapter",
    "adapter_dirs",
    what="adapter",
    multiple=True,
    required=True,
    help="PEFT adapter directory; repeat to merge several, in order.",
)
@click.option(
    "--base",
    help="Base model directory or hub id (default: the adapter's base_model_name_or_path).",
)
@path_option("--out", required=True, help="Output model directory.")
@choice_option(
    "--dtype",
    ("float16", "bfloat16", "float32", "auto"),
    "float16",
    "Output dtype; auto keeps the base's.",
)
@click.option("--shard-size", default="5GB", show_default=True, help="Largest output shard.")
@flag_option("--allow-overflow", "Write values beyond float16's range as inf instead of failing.")
@flag_option("--force", "Replace an existing --out directory.")
@json_option
def merge(adapter_dirs, out, as_json, **options) -> None:
    """Merge PEFT adapters into their base model, shard by shard.

    Memory stays near the size of the largest tensor: untouched tensors are copied in chunks,
    touched ones merged one at a time with the same operations as peft's merge_and_unload(),
    so the result is bit-identical. Writes safetensors shards, model.safetensors.index.json,
    config.json, generation config and tokenizer files (the adapter's own tokenizer if it
    carries one). Supports LoRA (rsLoRA, DoRA, patterns, bias, embeddings, modules_to_save,
    trainable tokens, resized vocabularies), AdaLoRA and IA3.
    """
    from deploykit.merge import merge as merge_mod

    result = merge_mod.merge(list(adapter_dirs), out, **options)
    emit(
        result,
        as_json,
        f"merged {result['tensors_changed']} tensors into {result['out']} "
        f"({result['shards']} shard(s), {result['bytes']} bytes, {result['dtype']})",
    )
