"""What every command shares: Click settings, result printing, path checks, common options."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploykit.core.errors import InputError

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

host_option = click.option(
    "--host", help="Ollama server (default: $OLLAMA_HOST or http://127.0.0.1:11434)."
)
