"""push: publish a verified release bundle."""

from __future__ import annotations

from pathlib import Path

import click

from deploykit.cli.options import CONTEXT, emit, flag_option, host_option, json_option
from deploykit.ollama.names import ALLOW_GGUF_TEMPLATE_HELP
from deploykit.pipeline.push import TARGET_HELP


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--to", "targets", multiple=True, metavar="TARGET", help=f"{TARGET_HELP} (repeatable)."
)
@flag_option("--private", "Create a new hub repo as private (hubs only).")
@click.option(
    "--revision",
    help="Hub branch to commit to (default main, ModelScope master); created when missing "
    "on Hugging Face.",
)
@click.option("--commit-message", help="Hub commit message (default: names the bundle).")
@flag_option("--dry-run", "Check the bundle, list what would go where, print the card; offline.")
@click.option("--base-model", help="The base's hub id for the card (default: from the bundle).")
@click.option("--license", "license_id", help="License id for the card (default: the base's).")
@flag_option("--force", "Push to a repo whose card names another base model.")
@flag_option("--allow-failed", "Publish a bundle with quants shipped by `ship --allow-failed`.")
@host_option
@flag_option("--allow-gguf-template", ALLOW_GGUF_TEMPLATE_HELP)
@json_option
def push(bundle, targets, license_id, as_json, **values) -> None:
    """Publish release BUNDLE (the folder `ship` wrote) to Hugging Face, ModelScope or an
    Ollama registry.

    Every file is checked against the bundle's manifest before anything is sent; a bundle
    whose verification or health check failed is refused. A hub repo gets the bundle's files,
    a model card (README.md), the `template`/`system`/`params` files the Hub's Ollama
    integration reads and a manifest without local paths; a second push of the same bundle
    makes no commit. An Ollama target pushes NAMESPACE/NAME:<type> per quant and :latest
    through the server at --host. Tokens come from the clients' own login (HF_TOKEN,
    `hf auth login`, MODELSCOPE_API_TOKEN); they are never printed.
    """
    from deploykit.pipeline import push as pipeline

    opts = pipeline.PushOptions(license=license_id, **values)
    result = pipeline.push(bundle, list(targets), opts)
    lines = []
    for t in result["targets"]:
        if t.get("dry_run"):
            lines.append(f"would push to {t['target']}:")
            for f in t.get("files", []):
                lines.append(f"  {f['size']:>14,}  {f['path']}")
            for name in t.get("split") or {}:
                lines.append(f"  {name} would be split into parts (llama-gguf-split)")
            for m in t.get("models", []):
                lines.append(f"  {m['local']} -> {m['remote']}")
            if t.get("card"):
                lines += ["", "--- README.md ---", t["card"]]
        elif "commit" in t:
            done = f"commit {t['commit'][:12]}" if t["commit"] else "already up to date, no commit"
            lines.append(f"{t['target']}@{t['revision']}: {done}")
        else:
            lines.append(f"{t['target']}: pushed " + ", ".join(p["model"] for p in t["pushed"]))
    emit(result, as_json, "\n".join(lines))
