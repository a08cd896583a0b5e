"""The README's command reference, generated from ``--help`` (``cog -r README.md``), so the
two cannot drift: ``make lint`` runs ``cog --check``."""

from __future__ import annotations

import click
from click.testing import CliRunner

from deploykit.cli.main import cli

WIDTH = 100


def _commands(group: click.Group, path: list[str]):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        yield [*path, name], cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, [*path, name])


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=WIDTH, prog_name="deploykit")
    assert result.exit_code == 0, result.output
    return result.output.rstrip() + "\n"


def markdown() -> str:
    """Every command's ``--help``, one collapsible block each."""
    out = ["", "```text", "$ deploykit --help", help_text([]).rstrip(), "```", ""]
    for path, cmd in _commands(cli, []):
        title = " ".join(path)
        out += [
            f"<details><summary><code>deploykit {title}</code> — {cmd.get_short_help_str(80)}"
            "</summary>",
            "",
            "```text",
            help_text(path).rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)


def family_table() -> str:
    """The built-in template families as a Markdown table, from their data (``cog`` puts it
    in the README, so the two cannot drift)."""
    from deploykit.ollama import families

    def cell(text: str) -> str:
        return text.replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")

    out = [
        "",
        "| family | description | reproduces | tools | thinking | proven |",
        "|---|---|---|---|---|---|",
    ]
    for f in families.shipped().values():
        refs = ", ".join(f"`{r}`" for r in f.reference_names)
        yes = {True: "yes", False: "—"}
        out.append(
            f"| `{f.name}` | {cell(f.description)} | {refs} | {yes[f.tools]} | "
            f"{yes[f.thinking]} | {f.proof} |"
        )
    return "\n".join(out) + "\n"
