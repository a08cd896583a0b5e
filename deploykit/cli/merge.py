"""merge: adapters into their base model."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, existing, json_option

# --- merge (issue 3) ----------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
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
    from deploykit.merge import merge as merge_mod

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
