"""The Modelfile: Ollama's parser rules, the layout deploykit writes, and the /api/create body.

``parse`` reads a Modelfile as Ollama's ``parser/parser.go`` does; ``format`` writes one (every
value checked first, so that it parses back to what was meant); ``create_request`` turns the
parsed commands into the ``/api/create`` body ``ollama create`` would send, all of it except the
digests of the uploaded files (``deploy`` adds ``files`` and ``adapters``). The rules:
https://docs.ollama.com/modelfile
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_write_text
from deploykit.ollama import params

TEMPLATE_DOCS = "https://docs.ollama.com/template"

COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
#: Commands whose value is one string field of the create request, named as the command.
_TEXT_FIELDS = ("template", "system", "requires", "renderer", "parser")
MESSAGE_ROLES = ("system", "user", "assistant")


class ModelfileParseError(InputError):
    """The text is not a Modelfile Ollama's parser accepts."""


# --- checking values --------------------------------------------------------------------------


def check_text(kind: str, text: str) -> str:
    """Reject text Ollama's parser would misread inside ``\"\"\"...\"\"\"``.

    There is no escaping: a line of the value that ends with ``\"\"\"`` ends it early, and the
    rest is parsed as instructions.
    """
    for n, line in enumerate(text.split("\n"), 1):
        if line.rstrip().endswith('"""'):
            raise InputError(
                f'{kind} text line {n} ends with """, which ends a Modelfile value early '
                "(Ollama's parser has no escaping)",
                f'reword that line of the {kind.lower()} so it does not end with """',
            )
    return text


def check_go_template(text: str, source: str) -> str:
    """A TEMPLATE must be Go text/template, not a Jinja chat template."""
    check_text("TEMPLATE", text)
    if not text.strip():
        raise InputError(f"the TEMPLATE in {source} is empty", "give a Go text/template")
    if re.search(r"\{%-?\s*(if|for|set)\b|\{\{-?\s*(bos_token|messages\b|raise_exception)", text):
        raise InputError(
            f"{source} looks like a Jinja chat template, not an Ollama (Go text/template) TEMPLATE",
            "use --family NAME, or write the TEMPLATE with Ollama's variables (.Messages, ...)",
        )
    if ".Messages" not in text and ".Prompt" not in text and ".Response" not in text:
        raise InputError(
            f"the TEMPLATE in {source} uses none of .Messages, .Prompt or .Response",
            f"see Ollama's template docs: {TEMPLATE_DOCS}",
        )
    return text


def _one_line(kind: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise InputError(f"the {kind} {value!r} contains a newline", f"give a single-line {kind}")
    return value


# --- writing ----------------------------------------------------------------------------------


def format(
    *,
    from_path: str,
    template: str,
    system: str | None = None,
    parameters: Sequence[tuple[str, Any]] = (),
    licenses: Sequence[str] = (),
    requires: str | None = None,
    header: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The Modelfile text: ``header`` comments, FROM, REQUIRES and ``notes`` comments, TEMPLATE,
    SYSTEM, PARAMETERs (typed values, in order), LICENSEs; blocks separated by a blank line."""
    lines = [f"# {_one_line('comment', c)}" for c in header]
    lines += [""] if lines else []
    lines.append(f"FROM {_one_line('FROM path', from_path)}")
    if requires:
        lines.append(f"REQUIRES {_one_line('REQUIRES version', requires)}")
    lines += [f"# {_one_line('comment', n)}" for n in notes]
    lines += ["", f'TEMPLATE """{check_text("TEMPLATE", template)}"""']
    if system is not None:
        lines += ["", f'SYSTEM """{check_text("SYSTEM", system)}"""']
    if parameters:
        lines.append("")
        for name, value in parameters:
            typed = params.coerce(name, value)
            lines.append(f"PARAMETER {name} {params.format_value(name, typed)}")
    for text in licenses:
        lines += ["", f'LICENSE """{check_text("LICENSE", text)}"""']
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, *, force: bool = False) -> None:
    """Write atomically; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory", "give --out a file path")
    if path.exists() and not force:
        raise InputError(f"{path} already exists", "pass --force to overwrite it")
    parse(text)  # never write what Ollama's parser would read differently
    atomic_write_text(path, text)


# --- parsing (Ollama's parser/parser.go rules) ------------------------------------------------


def _unquote(buf: str) -> str | None:
    """The value if ``buf`` (a value's raw text so far) is complete, else None."""
    t = buf.strip()
    if t.startswith('"""'):
        if len(t) >= 6 and t.endswith('"""'):
            return t[3:-3]
        return None
    if t.startswith('"'):
        if len(t) >= 2 and t.endswith('"'):
            return t[1:-1]
        return None
    return t


def parse(text: str) -> list[tuple[str, str]]:
    """``[(command, value)]`` as Ollama reads the Modelfile; PARAMETER values are ``"name value"``.

    Instructions are case-insensitive letters followed by a space or tab; ``#`` starts a
    comment only where an instruction could start; a value that starts with ``\"\"\"`` (or
    ``"``) runs until a line whose trimmed buffer ends with the same quote; there is no
    escaping.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"([A-Za-z]+)([ \t]+)(.*)", line.lstrip(" \t"), re.S)
        if not m:
            word = re.match(r"[A-Za-z]*", stripped).group(0)
            if word.lower() in COMMANDS:
                raise ModelfileParseError(f"missing value after {word} on line {i}")
            raise ModelfileParseError(f"invalid instruction on line {i}: {stripped[:40]!r}")
        command = m.group(1).lower()
        if command not in COMMANDS:
            raise ModelfileParseError(
                'command must be one of "from", "license", "template", "system", "adapter", '
                '"draft", "renderer", "parser", "parameter", "message", or "requires"'
            )
        rest = m.group(3)
        prefix = ""
        if command in ("parameter", "message"):
            pm = re.match(r"(\S+)[ \t]+(.*)", rest, re.S)
            if not pm:
                raise ModelfileParseError(f"{command.upper()} on line {i} needs a name and a value")
            prefix, rest = pm.group(1) + " ", pm.group(2)
        buf = rest
        while (value := _unquote(buf)) is None:
            if i >= len(lines):
                raise ModelfileParseError("unexpected EOF")
            buf += "\n" + lines[i]
            i += 1
        out.append((command, prefix + value))
    if not any(c == "from" for c, _ in out):
        raise ModelfileParseError("no FROM line")
    return out


def create_request(commands: list[tuple[str, str]], model: str | None = None) -> dict[str, Any]:
    """The ``/api/create`` body ``ollama create`` would send for these commands.

    Only fields the Modelfile sets are present. ``from`` and ``adapters`` are still the
    Modelfile's paths: uploading them and naming their digests (``files``, ``adapters``) is the
    caller's part.
    """
    req: dict[str, Any] = {} if model is None else {"model": model}
    for command, value in commands:
        if command == "from":
            req["from"] = value
        elif command in _TEXT_FIELDS:
            req[command] = value
        elif command == "license":
            req.setdefault("license", []).append(value)
        elif command == "parameter":
            name, _, raw = value.partition(" ")
            typed = params.coerce(name, raw)
            parameters = req.setdefault("parameters", {})
            if name == "stop":
                parameters.setdefault("stop", []).append(typed)
            else:
                parameters[name] = typed
        elif command == "message":
            role, _, content = value.partition(" ")
            if role not in MESSAGE_ROLES:
                raise ModelfileParseError(
                    'message role must be one of "system", "user", or "assistant"'
                )
            req.setdefault("messages", []).append({"role": role, "content": content})
        elif command == "adapter":
            req.setdefault("adapters", []).append(value)
    return req
