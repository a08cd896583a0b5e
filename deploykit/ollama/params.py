"""Ollama's model parameters: the one table of names and types, and every conversion of a value.

A value comes from ``--param NAME=VALUE``, a model's ``generation_config.json``, a family's
defaults, a Modelfile's ``PARAMETER`` line or ``/api/show``'s ``parameters`` text; each is typed
here the way Ollama types it (``api.FormatParams``) and written back the way a Modelfile needs.
The valid names are Ollama's ``api.Options`` and ``api.Runner`` fields (:data:`DOCS`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

from deploykit.core.errors import InputError
from deploykit.model.hf_dir import MAX_CONTEXT
from deploykit.ollama.text import check_kept, unquote

DOCS = "https://docs.ollama.com/modelfile#valid-parameters-and-values"

#: Valid PARAMETER names and their types at Ollama HEAD (api/types.go Options + Runner).
TYPES: dict[str, str] = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "[string]",
}

#: Dropped by current Ollama with a warning (some were valid up to v0.6.x).
DEPRECATED = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

#: generation_config.json key (transformers' name) -> Ollama parameter.
GENERATION_CONFIG = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repetition_penalty": "repeat_penalty",
}

#: The Ollama parameters that stand for generation_config.json settings: a family's sampling set.
SAMPLING = frozenset(GENERATION_CONFIG.values())
#: ``do_sample: false`` is greedy decoding, which Ollama does at temperature 0.
GREEDY = {"temperature": 0.0}
#: Settings transformers still applies when decoding greedily (logits processors, not sampling).
GREEDY_KEEPS = frozenset({"repetition_penalty"})

_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?\d+")


def coerce(name: str, value: Any) -> Any:
    """``value`` as Ollama's ``api.FormatParams`` would type it; InputError when it can't."""
    if name in DEPRECATED:
        raise InputError(
            f"PARAMETER {name} is deprecated and ignored by current Ollama",
            f"drop it (valid names: {DOCS})",
        )
    kind = TYPES.get(name)
    if kind is None:
        close = difflib.get_close_matches(name.lower(), TYPES, n=1)
        hint = f"did you mean {close[0]!r}? (names are case-sensitive)" if close else None
        raise InputError(f"unknown PARAMETER {name!r}", hint or "valid names: " + ", ".join(TYPES))
    text = value if isinstance(value, str) else None
    bad = InputError(
        f"PARAMETER {name} must be {kind}, got {value!r}", f"give {name} a valid {kind}"
    )
    if kind == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if text is not None and _INT_RE.fullmatch(text.strip()):
            return int(text)
        raise bad
    if kind == "float":
        if isinstance(value, bool):
            raise bad
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(f):
            raise bad
        return f
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text in _BOOL_TRUE:
            return True
        if text in _BOOL_FALSE:
            return False
        raise bad
    # stop: a string; no newline (a PARAMETER value ends at the line's end), not empty
    if not isinstance(value, str) or not value or "\n" in value or "\r" in value:
        raise InputError(
            f"PARAMETER stop must be a non-empty single-line string, got {value!r}",
            "give each stop string on its own --param stop=TEXT",
        )
    return value


def parse_option(spec: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from ``--param`` as ``(name, typed value)``; a value a Modelfile cannot
    carry is refused here, before any work starts."""
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise InputError(f"--param {spec!r} is not NAME=VALUE", "e.g. --param temperature=0.7")
    typed = coerce(name, value)
    if name == "num_ctx":
        check_context(typed, "--param num_ctx")
    format_value(name, typed)
    return name, typed


def is_greedy(generation_config: dict[str, Any]) -> bool:
    """Whether a generation_config.json says ``do_sample: false`` (greedy decoding)."""
    return generation_config.get("do_sample") is False


def from_generation_config(sampling: dict[str, Any]) -> dict[str, Any]:
    """The Ollama parameters a model's generation_config.json settings stand for, typed.

    With ``do_sample: false`` that is greedy decoding (temperature 0): its temperature, top_p,
    top_k... are not used (transformers ignores them too), its repetition penalty still is.
    """
    greedy = is_greedy(sampling)
    out = {
        GENERATION_CONFIG[key]: coerce(GENERATION_CONFIG[key], value)
        for key, value in sampling.items()
        if key in GENERATION_CONFIG and (not greedy or key in GREEDY_KEEPS)
    }
    return {**GREEDY, **out} if greedy else out


def check_context(value: Any, source: str) -> int:
    """A context length (num_ctx) as a whole number of tokens from 1 to :data:`MAX_CONTEXT`."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONTEXT
    if not ok:
        raise InputError(
            f"{source} must be a whole number of tokens from 1 to {MAX_CONTEXT}, got {value!r}",
            "give the context length the model was trained with, e.g. num_ctx=4096",
        )
    return value


def format_value(name: str, value: Any) -> str:
    """A typed value as a Modelfile ``PARAMETER`` line writes it (stop strings quoted).

    InputError for a stop string Ollama's parser would read back differently: one with a
    character it drops, or one that starts with two double quotes (quoted, it starts with
    three, which opens a value that only a line ending in three closes).
    """
    if name == "stop":
        check_kept(f"stop string {value!r}", value)
        written = f'"{value}"'
        if unquote(written) != value:
            raise InputError(
                f"PARAMETER stop {value!r} cannot be written in a Modelfile: quoted, it starts "
                'with """, which Ollama\'s parser reads as an unterminated """ value',
                'give a stop string that does not start with two double quotes ("")',
            )
        return written
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_show(text: str) -> dict[str, Any]:
    """``/api/show``'s ``parameters`` text (``name<spaces>value`` lines, strings Go-quoted).

    Known names are typed as :func:`coerce` types them; ``stop`` is a list; an unknown name
    keeps its text (a newer server may know more names than this table).
    """
    out: dict[str, Any] = {}
    for line in text.splitlines():
        name, _, raw = line.strip().partition(" ")
        raw = raw.strip()
        if not name or not raw:
            continue
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            try:
                raw = json.loads(raw)
            except ValueError:  # a Go escape JSON does not know (\x..): keep the text
                raw = raw[1:-1]
        try:
            value = coerce(name, raw)
        except InputError:
            value = raw
        if name == "stop":
            out.setdefault("stop", []).append(value)
        else:
            out[name] = value
    return out
