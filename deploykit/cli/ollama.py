"""Ollama: create, run, health, modelfile and templates."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deploykit.cli.options import (
    CONTEXT,
    emit,
    flag_option,
    host_option,
    json_option,
    path_option,
    report,
    warnings,
)
from deploykit.core.fsutil import check_not_input


@click.command(context_settings=CONTEXT)
@click.argument("name")
@path_option(
    "-f",
    "--file",
    "modelfile_path",
    what="Modelfile",
    required=True,
    help="The Modelfile; FROM is a GGUF path relative to it.",
)
@host_option
@json_option
def create(name: str, modelfile_path: Path, host: str | None, as_json: bool) -> None:
    """Create model NAME in Ollama from a Modelfile, through the HTTP API.

    Uploads FROM (and ADAPTER) files as blobs, skipping those the server already has, then
    creates the model with the current API (Ollama >= 0.5.5). A FROM that is not an existing
    file is an error: deploykit never pulls a model by name. In a release bundle, each file is
    checked against the bundle's manifest before anything is sent.
    """
    from deploykit.core import ui
    from deploykit.ollama import deploy
    from deploykit.pipeline.bundle import expected_digests

    result = deploy.create(
        name,
        modelfile_path,
        host,
        on_status=lambda obj: ui.info(obj.get("status", "")),
        expected=expected_digests(modelfile_path.parent),
    )
    emit(result, as_json, f"created {result['model']} at {result['host']}")


@click.command(context_settings=CONTEXT)
@click.argument("name")
@click.argument("prompt", required=False)
@click.option("--system", help="System message for this conversation.")
@host_option
@json_option
def run(name: str, prompt: str | None, system: str | None, host: str | None, as_json: bool) -> None:
    """Ask model NAME one PROMPT and stream the answer; without PROMPT, read it from piped
    stdin, or chat interactively on a terminal (an empty line or Ctrl-D ends)."""
    from deploykit.ollama import deploy

    def stream(text: str) -> None:
        if not as_json:
            click.echo(text, nl=False)

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt is None:
        deploy.chat_loop(name, system, host, lambda: input(">>> "), stream)
        return
    final = deploy.chat(name, prompt, system, host, stream)
    if as_json:
        emit(final, True)
    else:
        click.echo()


@click.command(context_settings=CONTEXT)
@click.argument("name")
@host_option
@path_option(
    "--probes",
    what="probes file",
    help="probes.json: greedy answers must equal the expected ones.",
)
@path_option(
    "--reference",
    what="reference",
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
    from deploykit.ollama import health as health_mod

    rep = health_mod.check(name, host, probes, reference, timeout)
    tps = rep.extra.get("tokens_per_second")
    report(rep, as_json, [f"tokens/s  {tps}"] if tps is not None else [])


# --- modelfile / templates ----------------------------------------------------------------


@click.command("modelfile", context_settings=CONTEXT)
@path_option("--gguf", what="GGUF file", required=True, help="The model file.")
@path_option(
    "--model-dir",
    what="model directory",
    help="HF model dir (tokenizer_config.json, generation_config.json); default: GGUF metadata.",
)
@click.option(
    "--family",
    default="auto",
    show_default=True,
    help="Template family, or `auto`: exact match of the model's chat template on probes.",
)
@path_option(
    "--template-file",
    what="template file",
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
@path_option("--license", "license_file", what="license file", help="LICENSE text.")
@path_option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("Modelfile"),
    show_default=True,
    help="Where to write the Modelfile (`-` prints it).",
)
@flag_option("--force", "Overwrite an existing --out file.")
@json_option
def modelfile_cmd(gguf, params, out, force, as_json, **options) -> None:
    """Write an Ollama Modelfile for GGUF whose TEMPLATE reproduces the model's chat template."""
    from deploykit.ollama import modelfile
    from deploykit.ollama.params import parse_option
    from deploykit.ollama.render import render

    to_stdout = str(out) == "-"
    parsed = [parse_option(p) for p in params]
    result = render(gguf, params=parsed, out=None if to_stdout else out, **options)
    warnings(result.warnings)
    if to_stdout:
        click.echo(result.text, nl=False)
        return
    check_not_input(
        out, [gguf, *(options.get(k) for k in ("model_dir", "template_file", "license_file"))]
    )
    modelfile.write(out, result.text, force=force)
    how = "detected" if result.detected else "chosen"
    emit(
        {"modelfile": str(out), **result.summary()},
        as_json,
        f"wrote {out} (family {result.family or 'custom'}, {how})",
    )


@click.group(context_settings=CONTEXT)
def templates() -> None:
    """The chat-template families Modelfiles are rendered from (modelfile_templates/)."""


@templates.command("list", context_settings=CONTEXT)
@json_option
def templates_list(as_json: bool) -> None:
    """List the families with what they support and the upstream templates they reproduce."""
    from deploykit.ollama import families

    fams = families.families().values()
    rows = [
        {
            "name": f.name,
            "description": f.description,
            "tools": f.tools,
            "thinking": f.thinking,
            "system_role": f.system_role,
            "references": f.reference_names,
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
    from deploykit.ollama import families

    f = families.get(name)
    data = {
        "name": f.name,
        "description": f.description,
        "references": f.reference_names,
        "stop": f.stop,
        "default_system": f.default_system,
        "parameters": f.parameters,
        "tools": f.tools,
        "thinking": f.thinking,
        "system_role": f.system_role,
        "min_ollama": f.min_ollama,
        "template": f.template,
    }
    human = "\n".join(
        [
            f"family:      {f.name} — {f.description}",
            f"reproduces:  {', '.join(f.reference_names)}",
            f"stop:        {', '.join(f.stop)}",
            f"system:      {f.default_system or '(none)'}",
            f"parameters:  {', '.join(f'{k}={v}' for k, v in f.parameters.items()) or '(none)'}",
            f"needs:       Ollama >= {f.min_ollama}",
            "template:",
            data["template"],
        ]
    )
    emit(data, as_json, human)
