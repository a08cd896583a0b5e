"""What every command shares: Click settings, result printing, path checks, common options."""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.core.options import default_of, flag_of, option_fields
from deploykit.core.paths import FAMILIES_DIR_ENV
from deploykit.core.report import Report
from deploykit.ollama.names import HOST_HELP

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def emit(result: dict, as_json: bool, human: str | None = None) -> None:
    """``--json``: one object on stdout; otherwise the human summary on stdout."""
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    elif human:
        click.echo(human)


def report(rep: Report, as_json: bool, footer: list[str] | None = None) -> None:
    """Print any :class:`Report` (one line per check, or ``--json``); raise if it failed.

    The library decided pass or fail; this only prints and turns a failure into its exit code.
    """
    if as_json:
        emit(rep.to_dict(), True)
    else:
        for line in [*rep.lines(), *(footer or [])]:
            click.echo(line)
    rep.raise_if_failed()


def warnings(messages: list[str]) -> None:
    """Each message as one ``warning:`` line on stderr."""
    for message in messages:
        ui.warn(message)


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


def path_option(*decls: str, what: str | None = None, **kw: Any):
    """An option naming a file or folder (a ``Path``); with ``what``, it must exist (exit 3)."""
    kw.setdefault("type", click.Path(path_type=Path))
    if what is not None:
        kw["callback"] = existing(what)
    return click.option(*decls, **kw)


def choice_option(flag: str, choices: tuple[str, ...] | list[str], default: str, help: str):
    """An option with a fixed set of values and a default shown in ``--help``."""
    return click.option(
        flag, type=click.Choice(list(choices)), default=default, show_default=True, help=help
    )


def flag_option(flag: str, help: str, dest: str | None = None):
    """An on/off switch, off by default."""
    return click.option(flag, *([dest] if dest else []), is_flag=True, help=help)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)

host_option = click.option("--host", help=HOST_HELP)

#: The environment variable ``--families-dir`` sets (read by deploykit.ollama.families).


def _families_dir(ctx: click.Context, param, value):
    """Point the family loader at ``value`` for this command (restored when it ends)."""
    if value is None:
        return None
    if not Path(value).is_dir():
        raise InputError(f"families folder not found: {value}", "check --families-dir")
    previous = os.environ.get(FAMILIES_DIR_ENV)
    os.environ[FAMILIES_DIR_ENV] = str(Path(value).resolve())

    def restore() -> None:
        if previous is None:
            os.environ.pop(FAMILIES_DIR_ENV, None)
        else:
            os.environ[FAMILIES_DIR_ENV] = previous

    ctx.call_on_close(restore)
    return value


families_dir_option = click.option(
    "--families-dir",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_families_dir,
    expose_value=False,
    is_eager=True,
    help=f"User template families (the format of modelfile_templates/; also ${FAMILIES_DIR_ENV}):"
    " added to the built-in ones, overriding one of the same name; each is proven first.",
)


# --- options as data --------------------------------------------------------------------------


def _plain(tp: Any) -> tuple[Any, bool]:
    """(element type, is a list) of an annotation, without ``| None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def dataclass_options(cls: type):
    """Decorate a Click command with one option per :func:`core.options.option` field of
    ``cls``, in field order (``--help`` shows each default); values keep the field names."""
    hints = typing.get_type_hints(cls)

    def decorate(func):
        for f in reversed(option_fields(cls)):
            meta = f.metadata
            tp, many = _plain(hints[f.name])
            default = default_of(f)
            kw: dict[str, Any] = {"help": meta["help"], "show_default": True}
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
            if tp is bool:
                kw.update(default=default, show_default=False)
                if "/" not in flag_of(f):  # --x/--no-x is a boolean flag by itself
                    kw["is_flag"] = True
                if "default" not in kw["help"] and isinstance(default, bool):
                    kw["help"] += f"  [default: {'on' if default else 'off'}]"
            else:
                bounded = meta.get("min") is not None or meta.get("max") is not None
                if meta.get("choices"):
                    kw["type"] = click.Choice(meta["choices"])
                elif tp is int:
                    kw["type"] = click.IntRange(meta["min"], meta["max"]) if bounded else int
                elif tp is float:
                    kw["type"] = click.FloatRange(meta["min"], meta["max"]) if bounded else float
                elif tp is Path:
                    kind = meta.get("kind")
                    kw["type"] = click.Path(
                        path_type=Path, file_okay=kind != "dir", dir_okay=kind != "file"
                    )
                if many:
                    kw.update(multiple=True, show_default=False)
                else:
                    kw["default"] = default
                if meta.get("required"):
                    kw["help"] += "  [required]"
                    kw["show_default"] = False
                elif default in (None, []) and "default:" not in kw["help"]:
                    kw["help"] += "  [default: none]"
                    kw["show_default"] = False
            func = click.option(flag_of(f), f.name, **kw)(func)
        return func

    return decorate


def from_options(cls: type, values: dict[str, Any]):
    """An instance of ``cls`` from Click's values (tuples of repeated options become lists)."""
    kwargs = {}
    for f in option_fields(cls):
        value = values.get(f.name, default_of(f))
        kwargs[f.name] = list(value) if isinstance(value, tuple) else value
    return cls(**kwargs)


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file as a mapping: TOML (``.toml``), else YAML (``.yaml``, ``.yml``, and
    ``.json``, which YAML reads too), by suffix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config not found: {path}", "check --config")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml", ".json"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise InputError(
                f"{path}: unknown config format {suffix or '(no suffix)'}",
                "use a .toml, .yaml or .json file",
            )
    except InputError:
        raise
    except Exception as exc:  # tomllib / yaml parse errors, bad UTF-8, unreadable file
        raise InputError(f"cannot read config {path}: {exc}", "fix the config file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a mapping of settings", "write one `name = value` each")
    return data


def config_values(
    cls: type,
    path: Path,
    *,
    section: str | None = None,
    dialect: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The settings of config file ``path`` as field values of ``cls``.

    Keys are a field's name or its option's name (dashes or underscores); ``section`` is a
    table the settings may sit in (``[ship]``); ``dialect`` first translates another tool's
    keys (LlamaFactory's YAML) into ours. Unknown keys are an error naming them.
    """
    data = read_config_file(path)
    if section and isinstance(data.get(section), dict):
        data = data[section]
    if dialect is not None:
        data = dialect(data, str(path))
    names = {}
    for f in option_fields(cls):
        names[f.name] = f.name
        names[flag_of(f).lstrip("-").replace("-", "_")] = f.name
    out, unknown = {}, []
    for key, value in data.items():
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            unknown.append(str(key))
        else:
            out[name] = value
    if unknown:
        raise InputError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}",
            "use the command's option names (see its --help)",
        )
    return out


def command_options(cls: type, **config: Any):
    """Every option of ``cls`` (:func:`dataclass_options`), ``--config`` (with ``config`` as
    :func:`config_option`'s settings) and ``--json``, in that order in ``--help``."""

    def decorate(func):
        return config_option(cls, **config)(dataclass_options(cls)(json_option(func)))

    return decorate


def config_option(
    cls: type,
    *,
    default_file: str | None = None,
    section: str | None = None,
    dialect: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
    help: str = "Settings file (TOML or YAML); command-line options win over it.",
):
    """``--config FILE``: its settings become the command's defaults, so options given on the
    command line win. ``default_file`` is read from the current directory when present."""

    def callback(ctx: click.Context, param, value):
        path = Path(value) if value else Path(default_file) if default_file else None
        if path is None or (not value and not path.is_file()):
            return None
        values = config_values(cls, path, section=section, dialect=dialect)
        ctx.default_map = {**(ctx.default_map or {}), **values}
        return path

    return click.option(
        "--config",
        callback=callback,
        is_eager=True,
        expose_value=False,
        type=click.Path(dir_okay=False),
        help=help,
    )
