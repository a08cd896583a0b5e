"""Ollama: create, run, health, modelfile and templates."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deploykit.cli.options import (
    CONTEXT,
    emit,
    families_dir_option,
    flag_option,
    host_option,
    json_option,
    path_option,
    report,
    warnings,
)
from deploykit.core.fsutil import check_not_input
from deploykit.ollama.names import ALLOW_GGUF_TEMPLATE_HELP


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
@flag_option(
    "--allow-gguf-template",
    ALLOW_GGUF_TEMPLATE_HELP,
)
@json_option
def create(
    name: str, modelfile_path: Path, host: str | None, allow_gguf_template: bool, as_json: bool
) -> None:
    """Create model NAME in Ollama from a Modelfile, through the HTTP API.

    Uploads FROM (and ADAPTER) files as blobs, skipping those the server already has, then
    creates the model with the current API (Ollama >= 0.5.5). A FROM that is not an existing
    file is an error: deploykit never pulls a model by name. In a release bundle, each file is
    checked against the bundle's manifest before anything is sent.

    The server's version is asked first: a Modelfile whose REQUIRES, RENDERER or PARSER it is
    too old for is refused (older servers ignore them silently), and so is a TEMPLATE the
    server would not run: Ollama sets its own renderer for some architectures (Gemma 4), and
    from 0.30 renders the GGUF's chat template instead of a TEMPLATE with fewer capabilities.
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
        allow_gguf_template=allow_gguf_template,
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
@families_dir_option
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
@families_dir_option
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
@families_dir_option
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
            "proof": f.proof,
            "renderer": f.renderer,
            "parser": f.parser,
            "source": str(f.folder) if f.user else "built-in",
        }
        for f in fams
    ]
    width = max((len(r["name"]) for r in rows), default=10)
    proof = max((len(r["proof"]) for r in rows), default=10)
    human = "\n".join(
        f"{r['name']:{width}}  {r['proof']:{proof}}  {r['description']}" for r in rows
    )
    emit({"families": rows}, as_json, human)


@templates.command("show", context_settings=CONTEXT)
@click.argument("name")
@families_dir_option
@json_option
def templates_show(name: str, as_json: bool) -> None:
    """Show a family's metadata and its Ollama TEMPLATE."""
    from deploykit.ollama import families

    f = families.get(name, prove=False)
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
        "proof": f.proof,
        "renderer": f.renderer,
        "parser": f.parser,
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
            f"proven:      {f.proof}",
            *(
                [f"renderer:    {f.renderer} (parser {f.parser or 'none'}), Ollama's own code"]
                if f.template is None
                else ["template:", f.template]
            ),
        ]
    )
    emit(data, as_json, human)


@templates.command("scaffold", context_settings=CONTEXT)
@path_option(
    "--model-dir",
    what="model directory",
    required=True,
    help="HF model dir whose chat template no family matches.",
)
@path_option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="User families folder to write to  [default: $DEPLOYKIT_FAMILIES_DIR, else ./families]",
)
@click.option("--name", help="Family name  [default: from the model folder's name]")
@flag_option("--force", "Overwrite the family's files if they exist.")
@json_option
def templates_scaffold(model_dir, out, name, force, as_json) -> None:
    """Start a family for the model's chat template from the nearest family: writes NAME.toml,
    NAME.gotmpl (the nearest family's) and references/NAME.jinja (the model's template) for
    you to finish, then prove with `deploykit templates prove`."""
    from deploykit.ollama import families, scaffold

    out = out or families.user_dir() or Path("families")
    check_not_input(out, [model_dir])
    result = scaffold.scaffold(model_dir, out, name, force=force)
    near = result.nearest
    data = {
        "family": result.name,
        "folder": str(result.folder),
        "files": [str(f) for f in result.files],
        "nearest": {
            "family": near.family.name,
            "reference": near.reference,
            "same": near.same,
            "total": near.total,
            "first_difference": near.probe,
        },
        "next_steps": result.next_steps(),
    }
    human = "\n".join([f"wrote {f}" for f in result.files] + result.next_steps())
    emit(data, as_json, human)


@templates.command("prove", context_settings=CONTEXT)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@families_dir_option
@json_option
def templates_prove(names: tuple[str, ...], as_json: bool) -> None:
    """Run the parity proof (needs Go): each family's TEMPLATE, through a Go helper with
    Ollama's data model, must render the probe conversations as its reference Jinja templates
    do. Prints per-probe results; exits 7 when any fails. Default: the --families-dir families
    (else every family)."""
    from deploykit.core.errors import VerificationError
    from deploykit.ollama import families, proof

    fams = families.families()
    if not names:
        user = [n for n, f in fams.items() if f.user]
        names = tuple(user or fams)
    chosen = [families.get(n, prove=False) for n in names]
    binary = proof.helper() if any(f.template is not None for f in chosen) else None
    proofs = [p for f in chosen for p in proof.prove(f, binary=binary)]
    failed = [p for p in proofs if not p.ok]
    if as_json:
        emit({"ok": not failed, "proofs": [p.to_dict() for p in proofs]}, True)
    else:
        click.echo("\n".join(line for p in proofs for line in p.lines()))
    if failed:
        raise VerificationError(
            f"{len(failed)} of {len(proofs)} parity proofs failed: "
            + ", ".join(f"{p.family} against {p.reference}" for p in failed),
            "edit the TEMPLATE (.gotmpl) or declare rejects / json_spans / known_differences "
            "(modelfile_templates/README.md)",
        )
