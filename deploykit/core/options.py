"""Command options as data: a dataclass field declared with :func:`option` is at once the library
default, the command-line option (its help, type, choices and bounds) and a key of the command's
config file. ``deploykit.cli.options`` turns such a dataclass into Click options and reads its
config files.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    required: bool = False,
    metavar: str | None = None,
    kind: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``flag``: the option's spelling when it is not ``--field-name`` (e.g. ``--adapter`` for a
    list field called ``adapters``); ``required``: the command needs it (checked by the library,
    so that a config file may give it); ``min``/``max``: bounds for numbers; ``kind``: for a
    path, ``"file"`` or ``"dir"`` when it must be one (a usage error otherwise).
    """
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "min": min,
        "max": max,
        "required": required,
        "metavar": metavar,
        "kind": kind,
    }
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    """``--name`` of the option for field ``f``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
