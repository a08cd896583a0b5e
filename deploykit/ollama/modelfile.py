"""The Modelfile: Ollama's parser rules, the layout deploykit writes, and the /api/create body.

``parse`` reads a Modelfile as Ollama's ``parser/parser.go`` does, character by character
(``\r`` ends a line like ``\n``; characters its parser drops are dropped, see
:mod:`deploykit.ollama.text`); ``format`` writes one: every value is checked against those rules
first and the text is parsed back, so Ollama reads exactly what was meant; ``create_request``
turns the parsed commands into the ``/api/create`` body ``ollama create`` would send, all of it
except the digests of the uploaded files (``deploy`` adds ``files`` and ``adapters``). The
rules: https://docs.ollama.com/modelfile
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_write_text
from deploykit.ollama import params
from deploykit.ollama.text import BLANKS, LINE_BREAK, check_kept, is_print, unquote

TEMPLATE_DOCS = "https://docs.ollama.com/template"
DOCS = "https://docs.ollama.com/modelfile"

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
_TEXT_FIELDS = ("template", "system", "renderer", "parser")
MESSAGE_ROLES = ("system", "user", "assistant")
_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
_ROLE_ERROR = 'message role must be one of "system", "user", or "assistant"'
#: Ollama's built-in renderers and parsers deploykit knows, with the first release that has each
#: (model/renderers/renderer.go ``rendererForName``, model/parsers/parsers.go ``ParserForName``).
#: gemma4: v0.20.0, the Gemma 4 release; gemma4-small/-large: PR #15612 (merged 2026-04-15, the
#: day v0.20.7 was tagged), so the next release, v0.21.0 (2026-04-17), to be safe.
#: The other registered names' first releases are not pinned (``None``): they count from the
#: first Ollama with RENDERER/PARSER at all, so a Modelfile naming one is still created.
RENDERERS: dict[str, tuple[int, ...] | None] = {
    "gemma4": (0, 20, 0),
    "gemma4-small": (0, 21, 0),
    "gemma4-large": (0, 21, 0),
    **dict.fromkeys(
        [
            "qwen3-coder",
            "qwen3-vl-instruct",
            "qwen3-vl-thinking",
            "qwen3.5",
            "qwen3.8",
            "ornith",
            "cogito",
            "deepseek3.1",
            "olmo3",
            "olmo3.1",
            "olmo3-think",
            "olmo3-32b-think",
            "nemotron-3-nano",
            "nemotron-3.5-nano",
            "functiongemma",
            "glm-4.7",
            "glm-ocr",
            "lfm2",
            "lfm2-thinking",
            "laguna",
            "poolside-v1",
            "cohere",
            "glimmer",
        ]
    ),
}
PARSERS: dict[str, tuple[int, ...] | None] = {
    "gemma4": (0, 20, 0),
    **dict.fromkeys(
        [
            "qwen3-coder",
            "qwen3-vl-instruct",
            "qwen3-vl-thinking",
            "ministral",
            "passthrough",
            "harmony",
            "cogito",
            "deepseek3",
            "olmo3",
            "olmo3-think",
            "nemotron-3-nano",
            "functiongemma",
            "glm-4.7",
            "glm-ocr",
            "lfm2",
            "lfm2-thinking",
            "qwen3",
            "qwen3-thinking",
            "qwen3.5",
            "ornith",
            "laguna",
        ]
    ),
}
#: The first Ollama whose Modelfile and create request carry RENDERER and PARSER.
BUILTINS_SINCE = (0, 12, 0)
#: GGUF architectures for which Ollama sets a renderer (and parser) itself at create time when
#: the request names none (server/create.go ``createModel``). A renderer beats a TEMPLATE, so a
#: TEMPLATE for such a GGUF never runs. (Since when each is set is not pinned: always assumed.)
AUTO_RENDERERS: dict[str, str] = {
    "gemma4": "gemma4",
    "laguna": "laguna",
    "nemotron_h": "nemotron-3-nano",
    "nemotron_h_moe": "nemotron-3-nano",
    "nemotron_h_omni": "nemotron-3-nano",
}
# golang.org/x/mod/semver, which Ollama checks REQUIRES with (after adding a leading "v")
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:(?!0[0-9]+(?:[.+]|$))[0-9A-Za-z-]+)"
_BUILD = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(
    rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+{_BUILD}(?:\.{_BUILD})*)?)?)?"
)


class ModelfileParseError(InputError):
    """The text is not a Modelfile Ollama's parser accepts."""


# --- checking values --------------------------------------------------------------------------


def check_text(kind: str, text: str) -> str:
    """Refuse text Ollama's parser would read differently inside ``\"\"\"...\"\"\"``.

    A character the parser drops is refused (it would change the text without a word); a line
    that ends with ``\"\"\"`` ends the value early (``\\r`` ends a line too, and there is no
    escaping), so the rest would be read as instructions.
    """
    check_kept(f"{kind} text", text)
    breaks = LINE_BREAK.findall(text) + [""]
    for n, (line, end) in enumerate(zip(LINE_BREAK.split(text), breaks, strict=True), 1):
        if line.rstrip(" \t").endswith('"""'):
            cr = ", and a carriage return ends a line" if end == "\r" else ""
            raise InputError(
                f'{kind} text line {n} ends with """, which ends a Modelfile value early '
                f"(Ollama's parser has no escaping{cr})",
                f'reword that line of the {kind.lower()} so it does not end with """',
            )
    return text


def check_requires(version: str) -> str:
    """A REQUIRES version as Ollama stores it (semver, no leading ``v``); InputError otherwise."""
    v = version if version.startswith("v") else "v" + version
    if not _SEMVER.fullmatch(v):
        raise InputError(
            f"REQUIRES {version!r} is not a semantic version, which Ollama refuses",
            "give the oldest Ollama version the model needs, e.g. REQUIRES 0.14.0",
        )
    return v[1:]


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


def builtin_since(renderer: str | None = None, parser: str | None = None) -> tuple[int, ...]:
    """The first Ollama release with this renderer and parser ((0,) for neither); InputError
    for a name Ollama does not have (a chat would fail with ``unknown renderer``)."""
    need: tuple[int, ...] = (0,)
    for kind, name, known in (("renderer", renderer, RENDERERS), ("parser", parser, PARSERS)):
        if name is None:
            continue
        if name not in known:
            raise InputError(
                f"unknown {kind} {name!r}: Ollama has no such built-in {kind} "
                "(an unknown renderer fails every chat)",
                f"use one of {', '.join(known)}, or a Go TEMPLATE",
            )
        need = max(need, known[name] or BUILTINS_SINCE)
    return need


def _one_line(kind: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise InputError(f"the {kind} {value!r} contains a newline", f"give a single-line {kind}")
    return value


def _bare(kind: str, value: str) -> str:
    """A value written without quotes (FROM, REQUIRES) must read back as itself."""
    check_kept(kind, _one_line(kind, value))
    if unquote(value.strip(BLANKS)) != value:
        raise InputError(
            f"the {kind} {value!r} would be read back differently by Ollama's parser "
            "(it trims blanks around a value and reads a leading quote as quoting)",
            f"give a {kind} without leading or trailing blanks and not starting with a quote",
        )
    return value


# --- writing ----------------------------------------------------------------------------------


def format(
    *,
    from_path: str,
    template: str | None,
    system: str | None = None,
    parameters: Sequence[tuple[str, Any]] = (),
    licenses: Sequence[str] = (),
    requires: str | None = None,
    header: Sequence[str] = (),
    notes: Sequence[str] = (),
    renderer: str | None = None,
    parser: str | None = None,
) -> str:
    """The Modelfile text: ``header`` comments, FROM, REQUIRES and ``notes`` comments, RENDERER
    and PARSER or TEMPLATE, SYSTEM, PARAMETERs (typed values, in order), LICENSEs; blocks
    separated by a blank line.

    Exactly one of ``template`` and ``renderer`` (Ollama's renderer beats a TEMPLATE, so both
    would write a TEMPLATE that never runs). InputError when a value would not read back as
    given under Ollama's rules.
    """
    if (template is None) == (renderer is None):
        raise InputError(
            "a Modelfile needs a TEMPLATE or a RENDERER, and not both "
            "(Ollama renders with the RENDERER and ignores the TEMPLATE)",
            "give --template-file, or a family with a renderer",
        )
    builtin_since(renderer, parser)
    typed = [(name, params.coerce(name, value)) for name, value in parameters]
    requires = check_requires(_bare("REQUIRES version", requires)) if requires else None
    lines = [f"# {_one_line('comment', c)}" for c in header]
    lines += [""] if lines else []
    lines.append(f"FROM {_bare('FROM path', from_path)}")
    if requires:
        lines.append(f"REQUIRES {requires}")
    lines += [f"# {_one_line('comment', n)}" for n in notes]
    if renderer is not None:
        lines += ["", f"RENDERER {_bare('RENDERER name', renderer)}"]
        if parser is not None:
            lines.append(f"PARSER {_bare('PARSER name', parser)}")
    else:
        assert template is not None
        if parser is not None:
            lines += ["", f"PARSER {_bare('PARSER name', parser)}"]
        lines += ["", f'TEMPLATE """{check_text("TEMPLATE", template)}"""']
    if system is not None:
        lines += ["", f'SYSTEM """{check_text("SYSTEM", system)}"""']
    if typed:
        lines.append("")
        lines += [f"PARAMETER {n} {params.format_value(n, v)}" for n, v in typed]
    for text in licenses:
        lines += ["", f'LICENSE """{check_text("LICENSE", text)}"""']
    text = "\n".join(lines) + "\n"
    meant: dict[str, Any] = {"from": from_path}
    if requires:
        meant["requires"] = requires
    for key, value in (("renderer", renderer), ("parser", parser), ("template", template)):
        if value is not None:
            meant[key] = value
    if system is not None:
        meant["system"] = system
    for name, value in typed:
        if name == "stop":
            meant.setdefault("parameters", {}).setdefault("stop", []).append(value)
        else:
            meant.setdefault("parameters", {})[name] = value
    if licenses:
        meant["license"] = list(licenses)
    if create_request(parse(text)) != meant:  # the checks above should make this impossible
        raise InputError(
            "the Modelfile would not parse back to the values given",
            "report this with the --system, --param and --license values",
        )
    return text


def write(path: Path, text: str, *, force: bool = False) -> None:
    """Write atomically; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory", "give --out a file path")
    if path.exists() and not force:
        raise InputError(f"{path} already exists", "pass --force to overwrite it")
    parse(text)  # never write what Ollama's parser would refuse
    atomic_write_text(path, text)


# --- parsing (Ollama's parser/parser.go, one character at a time) -----------------------------

_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)
_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_PARAM_NAME = _ALPHA | frozenset("0123456789_")


class _Value:
    """A value's characters as they are read; whether it is complete is tested in constant time
    (only its trimmed text's first and last three characters and its length matter)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix, self.chars = prefix, []
        self.first = self.last = -1  # the first and last non-blank characters

    def add(self, ch: str) -> None:
        if ch not in BLANKS:
            self.first = len(self.chars) if self.first < 0 else self.first
            self.last = len(self.chars)
        self.chars.append(ch)

    def trimmed(self, short: bool = False) -> str:
        """The text without its outer blanks; ``short``: its first and last three characters."""
        if self.first < 0:
            return ""
        lo, hi = self.first, self.last + 1
        if short and hi - lo > 6:
            return "".join(self.chars[lo : lo + 3] + self.chars[hi - 3 : hi])
        return "".join(self.chars[lo:hi])

    def done(self) -> str | None:
        """``prefix`` + the value if it is complete here (at a line break or the end), else None."""
        if unquote(self.trimmed(short=True)) is None:
            return None
        return self.prefix + unquote(self.trimmed())


def _fail(message: str, hint: str = f"see {DOCS}") -> ModelfileParseError:
    return ModelfileParseError(message, hint)


def parse(text: str) -> list[tuple[str, str]]:
    """``[(command, value)]`` as Ollama reads the Modelfile; PARAMETER values are ``"name value"``,
    MESSAGE values ``"role text"``.

    An instruction is ASCII letters followed by a space or tab (case-insensitive); ``#`` starts a
    comment only where an instruction could start; a value runs to a line break (``\\r`` or
    ``\\n``) at which its text, blanks trimmed, is complete: it starts with ``\"\"\"`` (or ``"``)
    and ends with the same quote, or starts with neither. There is no escaping, and characters
    Ollama's parser drops (see :mod:`deploykit.ollama.text`) are dropped.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    out: list[tuple[str, str]] = []
    state, command, value = _NIL, "", _Value()
    buf: list[str] = []  # the instruction, PARAMETER name or MESSAGE role being read
    line, start, prev, cmd_line = 1, 0, "", 1

    def bad_name(at: int) -> ModelfileParseError:
        word = "".join(buf)
        if word.lower() in COMMANDS and (at >= len(text) or text[at] in "\r\n"):
            return _fail(
                f"missing value after {word.upper()} on line {line}",
                f"write {word.upper()} and its value on one line",
            )
        snippet = LINE_BREAK.split(text[start:], maxsplit=1)[0].strip(BLANKS)
        return _fail(f"invalid instruction on line {line}: {snippet[:40]!r}")

    def no_value(what: str) -> ModelfileParseError:
        needs, example = {
            "PARAMETER": ("a name and a value", "PARAMETER temperature 0.7"),
            "MESSAGE": ("a role and a text", "MESSAGE user Hello"),
        }[what]
        return _fail(f"{what} on line {line} needs {needs}", f"e.g. {example}")

    for i, ch in enumerate(text):
        if state == _NIL:
            if ch == "#":
                state = _COMMENT
            elif ch not in BLANKS:
                state, start, cmd_line, buf = _NAME, i, line, [ch] if is_print(ch) else []
        elif state == _NAME:
            if ch in _ALPHA:
                buf.append(ch)
            elif ch in " \t":
                command = "".join(buf).lower()
                if command not in COMMANDS:
                    raise _fail(f"line {line}: {_INVALID_COMMAND}")
                state = {"parameter": _PARAMETER, "message": _MESSAGE}.get(command, _VALUE)
                buf, value = [], _Value()
            else:
                raise bad_name(i)
        elif state == _PARAMETER:
            if ch in _PARAM_NAME:
                buf.append(ch)
            elif ch in " \t":
                state, value = _VALUE, _Value("".join(buf) + " ")
            elif ch in "\r\n":
                raise no_value("PARAMETER")
            else:
                raise _fail(
                    f"PARAMETER name on line {line} has {ch!r}: a name is letters, digits and _",
                    f"valid names: {params.DOCS}",
                )
        elif state == _MESSAGE:
            if ch in _ALPHA:
                buf.append(ch)
            elif ch in " \t" and "".join(buf) in MESSAGE_ROLES:
                state, value = _VALUE, _Value("".join(buf) + " ")
            elif ch in "\r\n":
                raise no_value("MESSAGE")
            else:
                raise _fail(f"line {line}: {_ROLE_ERROR}", "e.g. MESSAGE user Hello")
        elif state == _VALUE:
            if ch in "\r\n" and (done := value.done()) is not None:
                out.append((command, done))
                state = _NIL
            elif ch in BLANKS or is_print(ch):
                value.add(ch)
        elif ch in "\r\n":  # the end of a comment
            state = _NIL
        if ch == "\n" and prev != "\r" or ch == "\r":
            line += 1
        prev = ch

    if state == _VALUE:
        if (done := value.done()) is None:
            quote = '"""' if value.trimmed(short=True).startswith('"""') else '"'
            raise _fail(
                f"unexpected EOF: the {command.upper()} value on line {cmd_line} starts with "
                f"{quote} but no line ends with {quote}",
                f"end the value's last line with {quote}; no other line of it may end with "
                f"{quote}, as there is no escaping",
            )
        out.append((command, done))
    elif state == _NAME:
        raise bad_name(len(text))
    elif state in (_PARAMETER, _MESSAGE):
        raise no_value("PARAMETER" if state == _PARAMETER else "MESSAGE")
    if not any(c == "from" for c, _ in out):
        raise _fail("no FROM line", "start the Modelfile with FROM ./model.gguf")
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
        elif command == "requires":
            req["requires"] = check_requires(value)
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
            req.setdefault("messages", []).append({"role": role, "content": content})
        elif command == "adapter":
            req.setdefault("adapters", []).append(value)
    return req
