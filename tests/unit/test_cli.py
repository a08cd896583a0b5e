"""Every command has working --help; bad usage and bad input give one `error:` line."""

from __future__ import annotations

import click
import pytest

from deploykit import __version__
from deploykit.cli.main import cli
from tests.support.cli import invoke, run_cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


ALL_COMMANDS = sorted(_commands(cli))


def test_top_level_help_lists_commands_and_exit_codes():
    proc = invoke("--help")
    assert proc.returncode == 0
    for name in cli.commands:
        assert name in proc.stdout
    assert "Exit codes:" in proc.stdout and "9 health check failed" in proc.stdout


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_each_subcommand_has_help(command):
    proc = invoke(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: deploykit {' '.join(command)}")


def test_version():
    proc = invoke("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bogus"], 2, "error: No such option '--bogus'."),
        (["doctor", "--frobnicate"], 2, "error: No such option '--frobnicate'."),
        (["no-such-command"], 2, "error: No such command 'no-such-command'."),
        (["demo", "init"], 2, "error: Missing argument 'DIRECTORY'."),
        (
            ["toolchain", "vendor", "--sdist", "/no/such.tar.gz"],
            3,
            "error: sdist not found: /no/such.tar.gz (hint: check the path given to --sdist)",
        ),
    ],
)
def test_bad_usage_is_one_error_line(args, code, message):
    proc = invoke(*args)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_debug_shows_the_traceback():
    proc = run_cli("--debug", "toolchain", "vendor", "--sdist", "/no/such.tar.gz")
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: sdist not found")


def test_demo_init_refuses_to_overwrite(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "mine.txt").write_text("user data")
    proc = invoke("demo", "init", str(tmp_path))
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"error: {tmp_path / 'base'} already exists (hint:")
    assert (tmp_path / "base" / "mine.txt").read_text() == "user data"
