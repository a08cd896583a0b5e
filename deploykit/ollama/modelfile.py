"""Render an Ollama Modelfile for a GGUF from a template family, validate it, parse it back.

``render()`` picks the family (exact-match detection or a name), merges the sampling
parameters (``--param`` > the model's generation_config.json > family defaults), adds the
model's own end-of-turn tokens to the family's stop strings, validates every value against
Ollama's Modelfile rules (reference/ollama-api.md §3) and renders the family's Jinja2 file in
a sandbox. ``parse()`` reads a Modelfile with Ollama's parser rules, so tests (and users) can
check that what was written reads back as intended.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from deploykit import __version__
from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_write_text
from deploykit.ollama import families as templates

#: Valid PARAMETER names and their types at Ollama HEAD (api/types.go Options + Runner).
PARAMETER_TYPES: dict[str, str] = {
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
DEPRECATED_PARAMETERS = frozenset(
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

#: generation_config.json key -> Ollama parameter.
GENERATION_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repetition_penalty": "repeat_penalty",
}

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

_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?\d+")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


# --- parameters -----------------------------------------------------------------------------


def coerce_parameter(name: str, value: Any) -> Any:
    """``value`` as Ollama's ``api.FormatParams`` would type it; InputError when it can't."""
    if name in DEPRECATED_PARAMETERS:
        raise InputError(
            f"PARAMETER {name} is deprecated and ignored by current Ollama",
            "drop it (see reference/ollama-api.md §3 for the valid names)",
        )
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        close = difflib.get_close_matches(name.lower(), PARAMETER_TYPES, n=1)
        hint = f"did you mean {close[0]!r}? (names are case-sensitive)" if close else None
        raise InputError(
            f"unknown PARAMETER {name!r}",
            hint or "valid names: " + ", ".join(PARAMETER_TYPES),
        )
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


def parse_param_option(spec: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from ``--param`` as ``(name, typed value)``."""
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise InputError(f"--param {spec!r} is not NAME=VALUE", "e.g. --param temperature=0.7")
    return name, coerce_parameter(name, value)


def _format_value(name: str, value: Any) -> str:
    if name == "stop":
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --- text values -----------------------------------------------------------------------------


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
            "see Ollama's template docs (reference/ollama-api.md §4)",
        )
    return text


# --- what the model says about itself --------------------------------------------------------


@dataclass
class ModelInfo:
    """What deploykit needs from the model: chat template, special tokens, sampling defaults."""

    source: str
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    end_tokens: list[str] = field(default_factory=list)  # eos/eot/eom token strings
    sampling: dict[str, Any] = field(default_factory=dict)
    add_bos: bool | None = None


def _token_text(tok: Any) -> str:
    if isinstance(tok, dict):
        return str(tok.get("content") or "")
    return str(tok or "")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "check the model directory") from None


def model_info_from_dir(model_dir: Path) -> ModelInfo:
    """Chat template, special tokens and sampling from a Hugging Face model directory."""
    model_dir = Path(model_dir)
    tc_path = model_dir / "tokenizer_config.json"
    if not tc_path.is_file():
        raise InputError(
            f"{model_dir} has no tokenizer_config.json",
            "point --model-dir at the merged (or base) Hugging Face model directory",
        )
    tc = _read_json(tc_path)
    info = ModelInfo(source=str(model_dir))
    jinja_file = model_dir / "chat_template.jinja"
    template = tc.get("chat_template")
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    elif isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    info.chat_template = template if isinstance(template, str) else None
    info.bos_token = _token_text(tc.get("bos_token"))
    info.eos_token = _token_text(tc.get("eos_token"))
    info.add_bos = tc.get("add_bos_token")
    ends = [info.eos_token] if info.eos_token else []

    id_to_token: dict[int, str] = {}
    for entry in (tc.get("added_tokens_decoder") or {}).items():
        id_to_token[int(entry[0])] = _token_text(entry[1])
    tj = model_dir / "tokenizer.json"
    if tj.is_file():
        for tok in _read_json(tj).get("added_tokens", []):
            id_to_token[int(tok["id"])] = tok["content"]
    gc_path = model_dir / "generation_config.json"
    if gc_path.is_file():
        gc = _read_json(gc_path)
        eos_ids = gc.get("eos_token_id")
        for i in eos_ids if isinstance(eos_ids, list) else [eos_ids]:
            if isinstance(i, int) and i in id_to_token:
                ends.append(id_to_token[i])
        for key, name in GENERATION_CONFIG_KEYS.items():
            if isinstance(gc.get(key), int | float) and not isinstance(gc.get(key), bool):
                info.sampling[name] = gc[key]
    info.end_tokens = list(dict.fromkeys(t for t in ends if t))
    return info


def model_info_from_gguf(gguf_path: Path) -> ModelInfo:
    """Chat template and special tokens from a GGUF's metadata (``tokenizer.*`` keys)."""
    from deploykit.llamacpp import gguf_header as gguf_meta

    meta = gguf_meta.read(Path(gguf_path), {"tokenizer.ggml.tokens"})  # InputError if not GGUF

    def token(i: Any) -> str:
        return (gguf_meta.token_text(meta, i) if isinstance(i, int) else None) or ""

    info = ModelInfo(source=str(gguf_path))
    tmpl = meta.get("tokenizer.chat_template")
    info.chat_template = tmpl if isinstance(tmpl, str) else None
    info.bos_token = token(meta.get("tokenizer.ggml.bos_token_id"))
    info.eos_token = token(meta.get("tokenizer.ggml.eos_token_id"))
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    info.add_bos = bool(add_bos) if add_bos is not None else None
    ends = [token(meta.get(f"tokenizer.ggml.{k}_token_id")) for k in ("eos", "eot", "eom")]
    info.end_tokens = list(dict.fromkeys(t for t in ends if t))
    return info


# --- rendering -------------------------------------------------------------------------------


@dataclass
class Rendered:
    """A rendered Modelfile and what went into it."""

    text: str
    family: str | None
    detected: bool
    reference: str | None
    template: str
    system: str | None
    parameters: list[tuple[str, Any]]
    requires: str | None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        stops = [v for k, v in self.parameters if k == "stop"]
        return {
            "family": self.family,
            "detected": self.detected,
            "reference": self.reference,
            "system": self.system,
            "parameters": {k: v for k, v in self.parameters if k != "stop"},
            "stop": stops,
            "requires": self.requires,
            "warnings": self.warnings,
        }


def _check_gguf_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read GGUF {path}: {exc}", "give a GGUF file") from None
    if magic not in (b"GGUF", b"FUGG"):
        raise InputError(f"{path} is not a GGUF file", "give the .gguf file to serve")


def _from_path(gguf: Path, out: Path | None) -> str:
    gguf = Path(gguf).resolve()
    if out is None:
        return str(gguf)
    rel = os.path.relpath(gguf, Path(out).resolve().parent)
    path = rel if rel.startswith("..") else f"./{rel}"
    if "\n" in path or "\r" in path:
        raise InputError(f"the GGUF path {gguf} contains a newline", "rename the file")
    return path


def render(
    gguf: Path,
    *,
    model_dir: Path | None = None,
    family: str = "auto",
    template_file: Path | None = None,
    system: str | None = None,
    params: list[tuple[str, Any]] | None = None,
    license_file: Path | None = None,
    out: Path | None = None,
) -> Rendered:
    """Render the Modelfile text for ``gguf`` (nothing is written)."""
    _check_gguf_magic(gguf)
    info = model_info_from_dir(model_dir) if model_dir else model_info_from_gguf(gguf)
    warnings: list[str] = []
    fam: templates.Family | None = None
    reference: str | None = None
    detected = False
    if family == "auto":
        try:
            fam, reference = templates.detect(
                info.chat_template or "", bos_token=info.bos_token, eos_token=info.eos_token
            )
            detected = True
        except InputError:
            if template_file is None:
                raise
            warnings.append(
                "no family matched the model's chat template; stops from the model only"
            )
    else:
        fam = templates.get(family)
        if info.chat_template:
            try:
                found, _ = templates.detect(
                    info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token
                )
            except InputError:
                found = None
            if found is None or found.name != fam.name:
                warnings.append(
                    f"the model's chat template is not family {fam.name}'s "
                    f"({'it matches ' + found.name if found else 'it matches no family'})"
                )

    if template_file is not None:
        try:
            go_template = Path(template_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read --template-file {template_file}: {exc}") from None
        check_go_template(go_template, str(template_file))
    else:
        assert fam is not None
        go_template = check_go_template(fam.go_template(), f"family {fam.name}")

    if system is not None:
        if fam is not None and not fam.system_role and template_file is None:
            raise InputError(
                f"family {fam.name} has no system role (its chat template rejects system messages)",
                "drop --system, or give a --template-file that handles one",
            )
        check_text("SYSTEM", system)
    elif fam is not None and template_file is None and fam.default_system:
        system = fam.default_system

    license_text = None
    if license_file is not None:
        try:
            license_text = check_text("LICENSE", Path(license_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read --license {license_file}: {exc}") from None

    values: dict[str, Any] = {}
    for source in (fam.parameters if fam else {}, info.sampling):
        for name, value in source.items():
            values[name] = coerce_parameter(name, value)
    stops = list(fam.stop if fam else ()) + info.end_tokens
    for name, value in params or []:
        value = coerce_parameter(name, value)
        if name == "stop":
            stops.append(value)
        else:
            values[name] = value
    parameters = [(k, values[k]) for k in values]
    parameters += [("stop", coerce_parameter("stop", s)) for s in dict.fromkeys(stops)]

    requires = None
    requires_note = None
    if fam is not None and _version_tuple(fam.min_ollama) > (0, 5, 5):
        if _version_tuple(fam.min_ollama) >= (0, 14, 0):
            requires = fam.min_ollama
        else:
            requires_note = fam.min_ollama

    if fam is not None and fam.runtime_bos and info.add_bos is False:
        warnings.append(
            f"family {fam.name} expects the tokenizer to add BOS, but the model says "
            "add_bos_token=false"
        )

    env = templates.environment()
    name = fam.modelfile_template if fam and template_file is None else templates.BASE_TEMPLATE
    context = {
        "deploykit_version": __version__,
        "family": fam.name if fam else "custom",
        "references": list(fam.references) if fam else [],
        "from_path": _from_path(gguf, out),
        "requires": requires,
        "requires_note": requires_note,
        "template_text": go_template,
        "system": system,
        "parameters": [(k, _format_value(k, v)) for k, v in parameters],
        "licenses": [license_text] if license_text is not None else [],
    }
    try:
        text = env.get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise InputError(f"rendering {name} failed: {exc}", "check modelfile_templates/") from None
    back = create_request(parse(text))  # what Ollama will read must be what was meant
    if back.get("template") != go_template or back.get("system") != system:
        raise InputError(
            "the rendered Modelfile does not parse back to the same TEMPLATE/SYSTEM",
            "report this with the family and the --system text",
        )
    return Rendered(
        text=text,
        family=fam.name if fam else None,
        detected=detected,
        reference=reference,
        template=go_template,
        system=system,
        parameters=parameters,
        requires=requires,
        warnings=warnings,
    )


def write(path: Path, text: str, *, force: bool = False) -> None:
    """Write atomically; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory", "give --out a file path")
    if path.exists() and not force:
        raise InputError(f"{path} already exists", "pass --force to overwrite it")
    parse(text)  # never write what Ollama's parser would read differently
    atomic_write_text(path, text)


# --- parsing back (Ollama's parser/parser.go rules) -------------------------------------------


class ModelfileParseError(InputError):
    """The text is not a Modelfile Ollama's parser accepts."""


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

    Follows reference/ollama-api.md §3: instructions are case-insensitive letters followed by
    a space or tab; ``#`` starts a comment only where an instruction could start; a value that
    starts with ``\"\"\"`` (or ``"``) runs until a line whose trimmed buffer ends with the same
    quote; there is no escaping.
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


def create_request(commands: list[tuple[str, str]]) -> dict[str, Any]:
    """The ``/api/create`` fields ``ollama create`` would send for these commands."""
    req: dict[str, Any] = {"parameters": {}}
    for command, value in commands:
        if command == "from":
            req["from"] = value
        elif command in ("template", "system", "requires", "renderer", "parser"):
            req[command] = value
        elif command == "license":
            req.setdefault("license", []).append(value)
        elif command == "parameter":
            name, _, raw = value.partition(" ")
            typed = coerce_parameter(name, raw)
            if name == "stop":
                req["parameters"].setdefault("stop", []).append(typed)
            else:
                req["parameters"][name] = typed
        elif command == "message":
            role, _, content = value.partition(" ")
            if role not in ("system", "user", "assistant"):
                raise ModelfileParseError(
                    'message role must be one of "system", "user", or "assistant"'
                )
            req.setdefault("messages", []).append({"role": role, "content": content})
        elif command == "adapter":
            req.setdefault("adapters", []).append(value)
    return req
