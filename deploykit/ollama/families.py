"""Chat-template families (data in ``modelfile_templates/``): load, validate, get, detect.

A family is two files: ``<name>.gotmpl`` (the Ollama TEMPLATE, plain Go text/template) and
``<name>.toml`` (stop strings, control tokens, default system prompt and sampling parameters,
the upstream Jinja chat templates it reproduces, and what the parity proof needs). The TOML is
validated against :class:`FamilyFile`; an unknown or misspelt key is an error naming the file
and the key. The reference Jinja templates live in ``modelfile_templates/references/``.

Detection renders a fixed set of probe conversations with the model's own Jinja chat template
and with each family's reference templates, the way transformers does, and picks the family
whose reference renders *every* probe identically (an error counts as an outcome too). There
is no nearest match: a template that matches no family is reported as such.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deploykit.core.errors import InputError
from deploykit.core.paths import package_data
from deploykit.model.chat_template import TemplateBoundError
from deploykit.model.probes import CONVERSATIONS, render_probe
from deploykit.ollama import modelfile, params
from deploykit.ollama.names import MIN_VERSION, format_version, parse_version

REFERENCES = "references"
_HINT_FAMILIES = "run `deploykit templates list` to see the families"
_HINT_SCHEMA = "the keys are described in modelfile_templates/README.md (Adding a family)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Reference(_Strict):
    """An upstream Jinja chat template the family reproduces (``references/<name>.jinja``)."""

    name: str = Field(pattern=_NAME.pattern)
    #: Probes this Jinja template itself rejects (raise_exception): not comparable.
    rejects: list[str] = []

    @field_validator("rejects")
    @classmethod
    def _known_probes(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in CONVERSATIONS]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown} (probes: {', '.join(CONVERSATIONS)})")
        return value


class JsonSpan(_Strict):
    """Where Go's ``json`` output may differ from Jinja's ``tojson`` in formatting only: after
    ``lead`` one JSON value follows (then, after each ``separator``, more)."""

    lead: str = Field(min_length=1)
    separator: str | None = None


class FamilyFile(_Strict):
    """The schema of ``<name>.toml``."""

    description: str = Field(min_length=1)
    references: list[Reference] = Field(min_length=1)
    #: Stop strings (the model's own end-of-turn tokens are added to these).
    stop: list[str] = Field(min_length=1)
    #: Template tokens that must never reach a user (health's smoke chat checks them).
    control_tokens: list[str] = Field(min_length=1)
    default_system: str | None = None
    tools: bool
    thinking: bool
    system_role: bool
    #: The oldest Ollama whose template data and functions the TEMPLATE needs.
    min_ollama: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    #: The special tokens the reference templates are rendered with.
    bos_token: str
    eos_token: str
    #: The tokenizer adds BOS at run time (the reference prints it, the TEMPLATE leaves it out).
    runtime_bos: bool
    #: The text the model emits before a tool call (Ollama derives it from the TEMPLATE).
    tool_call_tag: str | None = None
    json_spans: list[JsonSpan] = []
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        return [_as_value_error(params.coerce, "stop", s) for s in value]

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: _as_value_error(params.coerce, k, v) for k, v in value.items()}

    @field_validator("min_ollama")
    @classmethod
    def _min_ollama(cls, value: str) -> str:
        if parse_version(value) < MIN_VERSION:
            raise ValueError(f"deploykit needs Ollama >= {format_version(MIN_VERSION)} anyway")
        return value

    @model_validator(mode="after")
    def _tool_keys(self) -> FamilyFile:
        if self.tools and not self.tool_call_tag:
            raise ValueError("tool_call_tag is required when tools = true")
        if not self.tools and (self.tool_call_tag or self.json_spans):
            raise ValueError("tool_call_tag and json_spans are only for tools = true")
        return self


class Family(FamilyFile):
    """One family: its validated data, name, TEMPLATE text and folder."""

    name: str
    template: str
    folder: Path

    @property
    def reference_names(self) -> list[str]:
        return [r.name for r in self.references]

    def reference_path(self, name: str) -> Path:
        return reference_path(name, self.folder)

    def reference_paths(self) -> list[Path]:
        """The reference Jinja chat templates (upstream files) this family reproduces."""
        return [self.reference_path(r.name) for r in self.references]

    def rejects(self, reference: str) -> set[str]:
        """The probes reference template ``reference`` itself rejects."""
        return {p for r in self.references if r.name == reference for p in r.rejects}

    @property
    def spans(self) -> list[tuple[str, str | None]]:
        """The JSON allowance as ``(lead, separator)`` pairs."""
        return [(s.lead, s.separator) for s in self.json_spans]


def _as_value_error(fn, *args):
    try:
        return fn(*args)
    except InputError as exc:  # pydantic reports a ValueError at the key it came from
        raise ValueError(exc.message) from None


def templates_dir() -> Path:
    """The shipped ``modelfile_templates/`` folder."""
    return package_data("modelfile_templates")


def reference_path(name: str, folder: Path | None = None) -> Path:
    """``references/NAME.jinja`` in ``folder`` (default: the shipped families' folder)."""
    return (folder or templates_dir()) / REFERENCES / f"{name}.jinja"


# --- loading ---------------------------------------------------------------------------------


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(path: Path, exc: ValidationError) -> InputError:
    """The first problem as one line; a misspelt key first (its "missing key" goes with it)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err, meant = errors[0], None
    key, msg = _key(err["loc"]), err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        schema = {"references": Reference, "json_spans": JsonSpan}.get(err["loc"][0], FamilyFile)
        close = difflib.get_close_matches(str(err["loc"][-1]), list(schema.model_fields), n=1)
        meant = (*err["loc"][:-1], close[0]) if close else None
        text = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif err["type"] == "missing":
        text = f"missing key {key!r}"
    else:
        text = f"key {key!r}: {msg}" if key else msg
    more = sum(1 for e in errors[1:] if not (e["type"] == "missing" and e["loc"] == meant))
    return InputError(f"{path}: {text}" + (f" (and {more} more)" if more else ""), _HINT_SCHEMA)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "restore the family's files") from None


def load_family(toml_path: Path) -> Family:
    """One family from ``<name>.toml`` and ``<name>.gotmpl`` beside it, validated."""
    toml_path = Path(toml_path)
    folder, name = toml_path.parent, toml_path.stem
    if not _NAME.fullmatch(name):
        raise InputError(f"{toml_path}: {name!r} is not a family name", "rename the file")
    try:
        raw = tomllib.loads(_read(toml_path))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{toml_path}: not valid TOML: {exc}", _HINT_SCHEMA) from None
    try:
        data = FamilyFile.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(toml_path, exc) from None
    gotmpl = folder / f"{name}.gotmpl"
    if not gotmpl.is_file():
        raise InputError(f"family {name} has {toml_path.name} but no {gotmpl.name}", _HINT_SCHEMA)
    text = _read(gotmpl)
    template = text[:-1] if text.endswith("\n") else text  # the file's final newline
    modelfile.check_go_template(template, str(gotmpl))
    for i, ref in enumerate(data.references):
        if not reference_path(ref.name, folder).is_file():
            raise InputError(
                f"{toml_path}: key 'references[{i}].name': {ref.name!r} has no "
                f"{REFERENCES}/{ref.name}.jinja",
                f"copy the upstream Jinja chat template there ({_HINT_SCHEMA})",
            )
    return Family(**dict(data), name=name, template=template, folder=folder)


def load(directory: Path | None = None) -> dict[str, Family]:
    """Every family in ``directory`` (default: the shipped ``modelfile_templates/``), by name."""
    if directory is None:
        return families()
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"template families folder not found: {directory}", _HINT_SCHEMA)
    for orphan in sorted(directory.glob("*.gotmpl")):
        if not orphan.with_suffix(".toml").is_file():
            raise InputError(f"{orphan} has no {orphan.stem}.toml beside it", _HINT_SCHEMA)
    tomls = sorted(directory.glob("*.toml"), key=lambda p: p.stem)
    return {p.stem: load_family(p) for p in tomls}


@cache
def families() -> dict[str, Family]:
    """The shipped families (validated once per process)."""
    return load(templates_dir())


def control_tokens(fams: dict[str, Family] | None = None) -> list[str]:
    """Every family's control tokens, in family order, without repeats."""
    fams = families() if fams is None else fams
    return list(dict.fromkeys(t for f in fams.values() for t in f.control_tokens))


def get(name: str) -> Family:
    """The family called ``name`` (InputError listing the known ones otherwise)."""
    fams = families()
    if name not in fams:
        raise InputError(
            f"unknown template family {name!r} (known: {', '.join(fams)})", _HINT_FAMILIES
        )
    return fams[name]


# --- detection -------------------------------------------------------------------------------


def _outcome(chat_template: str, probe: dict[str, Any], bos: str, eos: str) -> str:
    try:
        return "ok:" + render_probe(chat_template, probe, bos_token=bos, eos_token=eos)
    except TemplateBoundError:
        raise  # too slow or too big: refused, not an outcome to compare
    except Exception as exc:  # a template's raise_exception, a missing field, ...
        return f"error:{exc.__class__.__name__}"


def fingerprint(chat_template: str, bos_token: str = "", eos_token: str = "") -> tuple[str, ...]:
    """The outcome of every probe rendered with ``chat_template``: text, or the error class."""
    return tuple(_outcome(chat_template, p, bos_token, eos_token) for p in CONVERSATIONS.values())


def detect(
    chat_template: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    fams: dict[str, Family] | None = None,
) -> tuple[Family, str]:
    """The family one of whose reference templates renders every probe exactly as
    ``chat_template`` does; returns ``(family, reference name)``. InputError if none does."""
    if not chat_template.strip():
        raise InputError(
            "the model has no chat template to detect a family from",
            "pass --family NAME or --template-file FILE",
        )
    fams = families() if fams is None else fams
    refs = [
        (fam, ref.name, _read(fam.reference_path(ref.name)))
        for fam in fams.values()
        for ref in fam.references
    ]
    for fam, ref, source in refs:  # the very same text: no need to render
        if source == chat_template:
            return fam, ref
    mine = fingerprint(chat_template, bos_token, eos_token)
    if all(o.startswith("error:") for o in mine):
        raise InputError(
            "the model's chat template fails on every probe conversation",
            "pass --family NAME or --template-file FILE",
        )
    for fam, ref, source in refs:
        if fingerprint(source, bos_token, eos_token) == mine:
            return fam, ref
    raise InputError(
        "the model's chat template matches no known family exactly on the probe conversations",
        "pass --family NAME (see `deploykit templates list`) or --template-file FILE",
    )
