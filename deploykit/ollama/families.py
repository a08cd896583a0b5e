"""Chat-template families (data in ``modelfile_templates/``): load, validate, get, detect.

A family is two files: ``<name>.gotmpl`` (the Ollama TEMPLATE, plain Go text/template) and
``<name>.toml`` (stop strings, control tokens, default system prompt and sampling parameters,
the upstream Jinja chat templates it reproduces, and what the parity proof needs). The TOML is
validated against :class:`FamilyFile`; an unknown or misspelt key is an error naming the file
and the key. The reference Jinja templates live in ``modelfile_templates/references/``.

A family whose template no Go TEMPLATE can express names one of Ollama's built-in renderers
(``renderer``, with its ``parser``) instead and has no ``.gotmpl``: Ollama renders its prompts
with its own Go code, which CI cannot run, so such a family is proven at deploy time only
(``deploykit health --reference``), and its ``min_ollama`` is at least the first Ollama release
with that renderer and parser.

A user families folder (``$DEPLOYKIT_FAMILIES_DIR``, which ``--families-dir`` sets) adds
families in the same format; one named like a built-in overrides it (with a warning), and a user
family is proven (the parity proof, :mod:`deploykit.ollama.proof`) before its first use.

Detection renders a fixed set of probe conversations with the model's own Jinja chat template
and with each family's reference templates, the way transformers does, and picks the family
whose reference renders *every* probe identically (an error counts as an outcome too). Nothing
near is accepted; a template that matches no family gets an error naming the nearest family
(most probes identical, then the smallest edit distance on the first probe that differs) with
a short diff of that probe, the start ``deploykit templates scaffold`` builds on.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.core.paths import FAMILIES_DIR_ENV, package_data
from deploykit.model.chat_template import TemplateBoundError
from deploykit.model.probes import (
    CONVERSATIONS,
    DIFFERENCE_KINDS,
    RENDERER_DIFFERENCE_KINDS,
    render_probe,
)
from deploykit.ollama import modelfile, params
from deploykit.ollama.modelfile import PARSERS, RENDERERS
from deploykit.ollama.names import MIN_VERSION, format_version, parse_version

REFERENCES = "references"
#: The user families folder (``--families-dir`` sets it for the command's process).
_HINT_FAMILIES = "run `deploykit templates list` to see the families"
_HINT_SCHEMA = "the keys are described in modelfile_templates/README.md (Adding a family)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Reference(_Strict):
    """An upstream Jinja chat template the family reproduces (``references/<name>.jinja``)."""

    name: str = Field(pattern=rf"^{_NAME.pattern}$")
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
    #: Probes Ollama cannot render as the Jinja template does (``DIFFERENCE_KINDS``; for a
    #: renderer ``RENDERER_DIFFERENCE_KINDS``): the proof (health's, for a renderer) checks that
    #: each renders exactly in the declared way, and every other is exact.
    known_differences: list[str] = []
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: Ollama's built-in renderer and parser (then there is no .gotmpl: proven at deploy time).
    renderer: str | None = None
    parser: str | None = None

    @field_validator("known_differences")
    @classmethod
    def _differences(cls, value: list[str]) -> list[str]:
        kinds = {**DIFFERENCE_KINDS, **RENDERER_DIFFERENCE_KINDS}
        unknown = [p for p in value if p not in kinds]
        if unknown:
            raise ValueError(f"{unknown} cannot differ (only {', '.join(kinds)} may be declared)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        return [_as_value_error(params.coerce, "stop", s) for s in value]

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        out = {k: _as_value_error(params.coerce, k, v) for k, v in value.items()}
        other = sorted(set(out) - params.SAMPLING)  # num_ctx, stop: facts of the model, not
        if other:  # of its family (stop has its own key)
            raise ValueError(
                f"{other} are not sampling parameters (a family sets only "
                f"{', '.join(sorted(params.SAMPLING))})"
            )
        return out

    @field_validator("min_ollama")
    @classmethod
    def _min_ollama(cls, value: str) -> str:
        if parse_version(value) < MIN_VERSION:
            raise ValueError(f"deploykit needs Ollama >= {format_version(MIN_VERSION)} anyway")
        return value

    @field_validator("renderer")
    @classmethod
    def _renderer(cls, value: str | None) -> str | None:
        if value is not None and value not in RENDERERS:
            raise ValueError(f"Ollama has no renderer {value!r} (known: {', '.join(RENDERERS)})")
        return value

    @field_validator("parser")
    @classmethod
    def _parser(cls, value: str | None) -> str | None:
        if value is not None and value not in PARSERS:
            raise ValueError(f"Ollama has no parser {value!r} (known: {', '.join(PARSERS)})")
        return value

    @model_validator(mode="after")
    def _tool_keys(self) -> FamilyFile:
        if self.renderer is not None:
            go_only = [k for k in ("tool_call_tag", "json_spans") if getattr(self, k)]
            go_only += [
                f"known_differences {p!r}"
                for p in self.known_differences
                if p not in RENDERER_DIFFERENCE_KINDS
            ]
            if go_only:
                raise ValueError(
                    f"{', '.join(go_only)}: only for a Go TEMPLATE, not with renderer = "
                    f"{self.renderer!r} (Ollama's renderer and parser handle tools themselves)"
                )
        elif any(p not in DIFFERENCE_KINDS for p in self.known_differences):
            raise ValueError(
                f"known_differences {sorted(set(self.known_differences) - set(DIFFERENCE_KINDS))}"
                " only with a renderer (a Go TEMPLATE may declare "
                f"{', '.join(DIFFERENCE_KINDS)})"
            )
        elif self.tools and not self.tool_call_tag:
            raise ValueError("tool_call_tag is required when tools = true")
        if not self.tools and (self.tool_call_tag or self.json_spans):
            raise ValueError("tool_call_tag and json_spans are only for tools = true")
        needs = modelfile.builtin_since(self.renderer, self.parser)
        if parse_version(self.min_ollama) < needs:
            raise ValueError(
                f"min_ollama {self.min_ollama} is older than the first Ollama with renderer "
                f"{self.renderer!r} / parser {self.parser!r} ({format_version(needs)})"
            )
        return self


class Family(FamilyFile):
    """One family: its validated data, name, TEMPLATE text (None: Ollama's renderer renders it)
    and folder."""

    name: str
    template: str | None
    folder: Path
    #: From the user families folder: proven before first use.
    user: bool = False

    @property
    def proof(self) -> str:
        """How the family is proven: in CI (its Go TEMPLATE), or at deploy time (a renderer)."""
        if self.renderer is not None:
            return f"deploy time: RENDERER {self.renderer}"
        return "CI: Go TEMPLATE"

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

    def content_hash(self) -> str:
        """sha256 of everything the parity proof depends on (data, TEMPLATE, references)."""
        h = hashlib.sha256(self.model_dump_json(exclude={"folder", "user"}).encode())
        for path in self.reference_paths():
            h.update(b"\0" + _read(path).encode())
        return h.hexdigest()


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
    template = None
    if data.renderer is not None:
        if gotmpl.exists():  # it would never run: Ollama's renderer beats a TEMPLATE
            raise InputError(
                f"family {name} names renderer {data.renderer!r}, so its {gotmpl.name} would "
                "never run (Ollama renders with the renderer and ignores a TEMPLATE)",
                f"delete {gotmpl.name}, or drop renderer from {toml_path.name}",
            )
    elif not gotmpl.is_file():
        raise InputError(f"family {name} has {toml_path.name} but no {gotmpl.name}", _HINT_SCHEMA)
    else:
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
def shipped() -> dict[str, Family]:
    """The built-in families (validated once per process)."""
    return load(templates_dir())


def user_dir() -> Path | None:
    """The user families folder: ``$DEPLOYKIT_FAMILIES_DIR`` (``--families-dir``), or None."""
    value = os.environ.get(FAMILIES_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _stamp(directory: Path) -> tuple:
    """What identifies a folder's family files now (names, sizes, modification times)."""
    files = [*directory.glob("*.toml"), *directory.glob("*.gotmpl"), *directory.glob("*/*.jinja")]
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@cache
def _with_user(directory: str | None, stamp: tuple = ()) -> dict[str, Family]:
    builtin = shipped()
    if directory is None:
        return builtin
    if not Path(directory).is_dir():
        raise InputError(
            f"user template families folder not found: {directory}",
            f"check --families-dir / {FAMILIES_DIR_ENV}",
        )
    user = {n: f.model_copy(update={"user": True}) for n, f in load(Path(directory)).items()}
    for name in user:
        if name in builtin:
            ui.warn(f"user family {name} ({directory}) overrides the built-in family {name}")
    return {**user, **{n: f for n, f in builtin.items() if n not in user}}


def families() -> dict[str, Family]:
    """The families in use: the user folder's (first; each overrides a built-in of its name),
    then the built-in ones. Cached per process and folder content."""
    directory = user_dir()
    if directory is None or not directory.is_dir():
        return _with_user(str(directory) if directory else None)
    return _with_user(str(directory), _stamp(directory))  # reloaded when a file changes


def _cache_clear() -> None:
    shipped.cache_clear()
    _with_user.cache_clear()


families.cache_clear = _cache_clear  # type: ignore[attr-defined]


def control_tokens(fams: dict[str, Family] | None = None) -> list[str]:
    """Every family's control tokens, in family order, without repeats."""
    fams = families() if fams is None else fams
    return list(dict.fromkeys(t for f in fams.values() for t in f.control_tokens))


def auto_renderer(arch: str) -> tuple[str, Family | None] | None:
    """``(renderer, family)`` when Ollama sets a renderer by itself for a GGUF of architecture
    ``arch`` (``modelfile.AUTO_RENDERERS``): the family with that renderer (or a variant of it,
    ``gemma4-large`` for ``gemma4``), if there is one; None for other architectures."""
    renderer = modelfile.AUTO_RENDERERS.get(arch)
    if renderer is None:
        return None
    fams = [f for f in families().values() if f.renderer and f.renderer.startswith(renderer)]
    return renderer, next(iter(fams), None)


def get(name: str, *, prove: bool = True) -> Family:
    """The family called ``name`` (InputError listing the known ones otherwise); a user family
    is proven first unless ``prove`` is false (for showing it)."""
    fams = families()
    if name not in fams:
        raise InputError(
            f"unknown template family {name!r} (known: {', '.join(fams)})", _HINT_FAMILIES
        )
    return _checked(fams[name]) if prove else fams[name]


def _checked(fam: Family) -> Family:
    """``fam``, once a user family has passed its parity proof (per process, by content)."""
    if fam.user:
        from deploykit.ollama import proof  # proof renders families: imported when needed

        proof.require(fam)
    return fam


class DetailedInputError(InputError):
    """An InputError whose one ``error:`` line is followed by indented detail lines."""

    def __init__(self, message: str, hint: str | None = None, details: list[str] = ()) -> None:
        super().__init__(message, hint)
        self.details = list(details)

    def line(self) -> str:
        return "\n".join([super().line(), *(f"  {d}" for d in self.details)])


# --- detection -------------------------------------------------------------------------------


def _outcome(chat_template: str, probe: dict[str, Any], bos: str, eos: str) -> str:
    try:
        return "ok:" + render_probe(chat_template, probe, bos_token=bos, eos_token=eos)
    except TemplateBoundError:
        raise  # too slow or too big: refused, not an outcome to compare
    except Exception as exc:  # a template's raise_exception, a missing field, ...
        return f"error:{exc.__class__.__name__}"


@lru_cache(maxsize=1024)
def fingerprint(chat_template: str, bos_token: str = "", eos_token: str = "") -> tuple[str, ...]:
    """The outcome of every probe rendered with ``chat_template``: text, or the error class
    (cached per process: detection renders every reference once)."""
    return tuple(_outcome(chat_template, p, bos_token, eos_token) for p in CONVERSATIONS.values())


@dataclass(frozen=True)
class Nearest:
    """The family nearest to a template no family matches exactly."""

    family: Family
    reference: str
    #: Probes rendered identically, out of ``total``.
    same: int
    total: int
    #: The first probe that differs (None: every probe is identical) and its edit distance.
    probe: str | None
    distance: int
    #: That probe's rendering by the reference and by the template (``ok:``/``error:``).
    theirs: str = ""
    mine: str = ""

    @property
    def exact(self) -> bool:
        return self.same == self.total

    def diff(self, width: int = 48) -> list[str]:
        """The first differing probe, two short lines around where the two renderings part."""
        if self.probe is None:
            return []
        a, b = self.theirs, self.mine
        if a.startswith("error:") or b.startswith("error:"):
            show = [_show_outcome(a, width), _show_outcome(b, width)]
        else:
            a, b = a[3:], b[3:]
            start = len(os.path.commonprefix([a, b]))
            end = len(os.path.commonprefix([a[start:][::-1], b[start:][::-1]]))
            show = [_window(t, start, len(t) - end, width) for t in (a, b)]
        label = f"family {self.family.name}:"
        return [
            f"probe {self.probe!r}, rendered by",
            f"  {label:<{len(label) + 1}}{show[0]}",
            f"  {'the model:':<{len(label) + 1}}{show[1]}",
        ]

    def summary(self) -> str:
        return (
            f"nearest family: {self.family.name} ({self.reference}), "
            f"{self.same} of {self.total} probes identical"
        )


def _show_outcome(outcome: str, width: int) -> str:
    if outcome.startswith("error:"):
        return f"(fails: {outcome[6:]})"
    text = outcome[3:]
    return repr(text[:width]) + ("…" if len(text) > width else "")


def _window(text: str, start: int, end: int, width: int) -> str:
    """``text[start:end]`` (what differs) with ``width`` characters around it, as a repr."""
    lo, hi = max(0, start - width), min(len(text), max(end, start) + width)
    mid = text[start:end]
    if len(mid) > 2 * width:
        mid = mid[:width] + "…" + mid[-width:]
    body = repr(text[lo:start] + mid + text[max(end, start) : hi])
    return ("…" if lo else "") + body + ("…" if hi < len(text) else "")


def distance(a: str, b: str, limit: int = 4000) -> int:
    """An edit distance between two renderings: characters inserted, deleted or replaced in
    the diff of what lies between their common prefix and suffix (longer middles: their
    length)."""
    start = len(os.path.commonprefix([a, b]))
    a, b = a[start:], b[start:]
    end = len(os.path.commonprefix([a[::-1], b[::-1]]))
    a, b = a[: len(a) - end], b[: len(b) - end]
    if not a or not b or len(a) > limit or len(b) > limit:
        return max(len(a), len(b))
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def _references(fams: dict[str, Family]) -> list[tuple[Family, str, str]]:
    return [
        (fam, ref.name, _read(fam.reference_path(ref.name)))
        for fam in fams.values()
        for ref in fam.references
    ]


def _rank(mine: tuple[str, ...], fam: Family, ref: str, theirs: tuple[str, ...]) -> Nearest:
    names = list(CONVERSATIONS)
    same = sum(a == b for a, b in zip(mine, theirs, strict=True))
    first = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b), None)
    if first is None:
        return Nearest(fam, ref, same, len(names), None, 0)
    dist = distance(theirs[first], mine[first])
    return Nearest(fam, ref, same, len(names), names[first], dist, theirs[first], mine[first])


def nearest(
    chat_template: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    fams: dict[str, Family] | None = None,
) -> Nearest | None:
    """The family reference nearest to ``chat_template``: most probes rendered identically,
    then the smallest edit distance on the first probe that differs (None: no families)."""
    fams = families() if fams is None else fams
    mine = fingerprint(chat_template, bos_token, eos_token)
    scored = [
        (fam, ref, fingerprint(source, bos_token, eos_token))
        for fam, ref, source in _references(fams)
    ]
    return _nearest(mine, scored)


def _nearest(mine, scored) -> Nearest | None:
    if not scored:
        return None
    best = max(sum(a == b for a, b in zip(mine, t, strict=True)) for _, _, t in scored)
    tied = [
        _rank(mine, fam, ref, theirs)
        for fam, ref, theirs in scored
        if sum(a == b for a, b in zip(mine, theirs, strict=True)) == best
    ]
    return min(tied, key=lambda n: n.distance)  # min keeps the first (family order) of equals


def detect(
    chat_template: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    fams: dict[str, Family] | None = None,
) -> tuple[Family, str]:
    """The family one of whose reference templates renders every probe exactly as
    ``chat_template`` does; returns ``(family, reference name)`` (a user family proven first).
    InputError if none does, naming the nearest family with a short diff."""
    if not chat_template.strip():
        raise InputError(
            "the model has no chat template to detect a family from",
            "pass --family NAME or --template-file FILE",
        )
    fams = families() if fams is None else fams
    refs = _references(fams)
    for fam, ref, source in refs:  # the very same text: no need to render
        if source == chat_template:
            return _checked(fam), ref
    mine = fingerprint(chat_template, bos_token, eos_token)
    if all(o.startswith("error:") for o in mine):
        raise InputError(
            "the model's chat template fails on every probe conversation",
            "pass --family NAME or --template-file FILE",
        )
    scored = []
    for fam, ref, source in refs:
        theirs = fingerprint(source, bos_token, eos_token)
        if theirs == mine:
            return _checked(fam), ref
        scored.append((fam, ref, theirs))
    near = _nearest(mine, scored)
    raise DetailedInputError(
        "the model's chat template matches no known family exactly on the probe conversations"
        + (f" ({near.summary()})" if near else ""),
        "start a family from the nearest: `deploykit templates scaffold --model-dir DIR`; or "
        "pass --family NAME (see `deploykit templates list`) or --template-file FILE",
        near.diff() if near else [],
    )


def family_of(chat_template: str | None) -> str | None:
    """The built-in family whose TEMPLATE or (by detection) reference Jinja ``chat_template``
    is; None when it is no family's."""
    if not chat_template or not chat_template.strip():
        return None
    fams = shipped()
    for fam in fams.values():  # an Ollama model made from a family shows its TEMPLATE
        if fam.template is not None and fam.template.strip() == chat_template.strip():
            return fam.name
    try:
        return detect(chat_template, fams=fams)[0].name
    except InputError:
        return None
