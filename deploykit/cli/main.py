"""The ``deploykit`` command line: each command parses options, calls one library function, prints.

Failures print one line, ``error: <what> (hint: <what to do>)``, and exit with the error
class's code (see ``deploykit.core.errors``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from deploykit import __version__
from deploykit.cli import eval as eval_cli
from deploykit.cli import gguf, model, ollama, push, ship, system, train
from deploykit.cli.options import CONTEXT, families_dir_option
from deploykit.core.errors import EXIT_CODES, DeploykitError, Interrupted, UsageError
from deploykit.core.memory import use_huge_pages


@click.group(
    context_settings=CONTEXT,
    epilog="Exit codes: " + ", ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + ".",
)
@click.version_option(__version__, "--version", prog_name="deploykit")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@families_dir_option
def cli(debug: bool) -> None:
    """Ship a fine-tuned model (a PEFT LoRA adapter) to a verified, running Ollama model."""


for command in (
    system.doctor,
    system.toolchain,
    system.demo,
    model.pull,
    model.merge,
    gguf.convert,
    gguf.quantize,
    gguf.verify,
    ollama.modelfile_cmd,
    ollama.templates,
    ollama.create,
    ollama.run,
    ollama.health,
    ship.ship,
    push.push,
    ship.cache,
    train.train,
    eval_cli.eval_cmd,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn failures into one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    use_huge_pages()  # before any command imports torch
    debug = "--debug" in args or os.environ.get("DEPLOYKIT_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="deploykit", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(Interrupted("aborted").line(), err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "deploykit"
        err = UsageError(exc.format_message(), f"see `{where} --help`")
        click.echo(err.line(), err=True)
        sys.exit(err.exit_code)
    except DeploykitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(exc.line(), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err = Interrupted("interrupted")
        click.echo(err.line(), err=True)
        sys.exit(err.exit_code)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(
            f"error: internal error: {exc.__class__.__name__}: {exc} "
            "(hint: rerun with --debug and report the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
