"""What Ollama's Modelfile parser does to text (``parser/parser.go``, reference §3 and §8).

It keeps a character only when Go's ``strconv.IsPrint`` is true (Unicode categories L, M, N,
P, S and U+0020), plus space, tab and the two line breaks; everything else (U+00A0, U+200B,
ZWJ, ESC, NUL, ...) is dropped without a word. Both ``\\r`` and ``\\n`` end a line. Python's
``str.isprintable`` is a different set, so the rule is spelled out here. Python's Unicode
tables may be older than the Go that built the server: a character they do not know yet is
treated as dropped (refused, never silently changed).
"""

from __future__ import annotations

import re
import unicodedata

from deploykit.core.errors import InputError

#: The blanks Ollama's parser keeps and trims around a value (Go's TrimSpace on what is kept).
BLANKS = " \t\r\n"
#: Where Ollama's parser ends a line (a CRLF pair is one line break for line numbers).
LINE_BREAK = re.compile(r"\r\n|\r|\n")

_KEPT_CATEGORIES = frozenset("LMNPS")


def is_print(ch: str) -> bool:
    """Go's ``strconv.IsPrint`` for one character."""
    return ch == " " or unicodedata.category(ch)[0] in _KEPT_CATEGORIES


def kept(ch: str) -> bool:
    """Whether Ollama's parser keeps ``ch`` inside a value."""
    return ch in BLANKS or is_print(ch)


def first_dropped(text: str) -> int | None:
    """The index of the first character of ``text`` Ollama's parser would drop, or None."""
    return next((i for i, ch in enumerate(text) if not kept(ch)), None)


def describe(ch: str) -> str:
    """``U+200B (ZERO WIDTH SPACE)``: a character as an error message names it."""
    name = unicodedata.name(ch, "")
    if not name and unicodedata.category(ch) == "Cc":
        name = "control character"
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def check_kept(kind: str, text: str) -> str:
    """``text`` unchanged, or InputError naming the first character Ollama's parser drops."""
    i = first_dropped(text)
    if i is not None:
        where = ""
        if LINE_BREAK.search(text):
            where = f" on line {len(LINE_BREAK.findall(text[:i])) + 1}"
        raise InputError(
            f"the {kind} has {describe(text[i])}{where}, which Ollama's Modelfile parser drops "
            "(it keeps only printable characters, spaces, tabs and line breaks)",
            f"remove that character from the {kind}, or write it as a visible one",
        )
    return text


def unquote(value: str) -> str | None:
    """A value's text, from its raw text with the blanks trimmed; None when it is not complete.

    ``\"\"\"...\"\"\"`` and ``"..."`` quotes are taken off; there is no escaping of any kind.
    """
    if value[:3] == '"""':
        return value[3:-3] if len(value) >= 6 and value.endswith('"""') else None
    if value[:1] == '"':
        return value[1:-1] if len(value) >= 2 and value.endswith('"') else None
    return value
