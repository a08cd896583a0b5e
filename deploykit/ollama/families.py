"""Chat-template families (data in ``modelfile_templates/``) and exact-match family detection.

A family is two files: ``<name>.Modelfile.j2`` (extends ``_base.Modelfile.j2``; its
``template`` block holds the Ollama TEMPLATE) and ``<name>.toml`` (stop strings, default system
prompt, default sampling parameters, the upstream Jinja chat templates it reproduces).

Detection renders a fixed set of probe conversations with the model's own Jinja chat template
and with each family's reference templates, the way transformers does, and picks the family
whose reference renders *every* probe identically (an error counts as an outcome too). There
is no nearest match: a template that matches no family is reported as such.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from deploykit.core.errors import InputError
from deploykit.core.paths import package_data
from deploykit.model.probes import CONVERSATIONS, render_probe

TEMPLATES_DIR = package_data("modelfile_templates")
BASE_TEMPLATE = "_base.Modelfile.j2"

_HINT_FAMILIES = "run `deploykit templates list` to see the families"


@dataclass(frozen=True)
class Family:
    """One chat-template family, as described by its data files."""

    name: str
    description: str
    references: tuple[str, ...]
    stop: tuple[str, ...]
    default_system: str | None
    tools: bool
    thinking: bool
    system_role: bool
    min_ollama: str
    bos_token: str
    eos_token: str
    runtime_bos: bool
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def modelfile_template(self) -> str:
        """The Jinja2 file (relative to ``modelfile_templates/``) that renders the Modelfile."""
        return f"{self.name}.Modelfile.j2"

    def go_template(self) -> str:
        """The family's Ollama TEMPLATE text (the ``template`` block of its Jinja2 file)."""
        tmpl = environment().get_template(self.modelfile_template)
        block = tmpl.blocks["template"]
        return "".join(block(tmpl.new_context({})))

    def reference_paths(self, llama_cpp: Path | None = None) -> list[Path]:
        """The reference Jinja chat templates (upstream files) this family reproduces."""
        return [reference_path(name, llama_cpp) for name in self.references]


def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment Modelfiles are rendered in (undefined names are errors)."""
    return _environment()


@cache
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def reference_path(name: str, llama_cpp: Path | None = None) -> Path:
    """``modelfile_templates/references/NAME.jinja``, else llama.cpp's ``models/templates/``."""
    local = TEMPLATES_DIR / "references" / f"{name}.jinja"
    if local.is_file():
        return local
    from deploykit.llamacpp.vendor import vendored_tree_dir

    return (llama_cpp or vendored_tree_dir()) / "models" / "templates" / f"{name}.jinja"


@cache
def families() -> dict[str, Family]:
    """Every family in ``modelfile_templates/``, by name."""
    out: dict[str, Family] = {}
    for meta in sorted(TEMPLATES_DIR.glob("*.toml"), key=lambda p: p.stem):
        name = meta.stem
        data = tomllib.loads(meta.read_text(encoding="utf-8"))
        if not (TEMPLATES_DIR / f"{name}.Modelfile.j2").is_file():
            raise InputError(f"family {name} has metadata but no {name}.Modelfile.j2")
        out[name] = Family(
            name=name,
            description=data["description"],
            references=tuple(data.get("references", ())),
            stop=tuple(data.get("stop", ())),
            default_system=data.get("default_system"),
            tools=bool(data.get("tools", False)),
            thinking=bool(data.get("thinking", False)),
            system_role=bool(data.get("system_role", True)),
            min_ollama=data.get("min_ollama", "0.5.5"),
            bos_token=data.get("bos_token", ""),
            eos_token=data.get("eos_token", ""),
            runtime_bos=bool(data.get("runtime_bos", False)),
            parameters=dict(data.get("parameters", {})),
        )
    return out


def get(name: str) -> Family:
    """The family called ``name`` (InputError listing the known ones otherwise)."""
    fams = families()
    if name not in fams:
        raise InputError(
            f"unknown template family {name!r} (known: {', '.join(fams)})", _HINT_FAMILIES
        )
    return fams[name]


def _outcome(chat_template: str, probe: dict[str, Any], bos: str, eos: str) -> str:
    try:
        return "ok:" + render_probe(chat_template, probe, bos_token=bos, eos_token=eos)
    except Exception as exc:  # a template's raise_exception, a missing field, ...
        return f"error:{exc.__class__.__name__}"


def fingerprint(chat_template: str, bos_token: str = "", eos_token: str = "") -> tuple[str, ...]:
    """The outcome of every probe rendered with ``chat_template``: text, or the error class."""
    return tuple(_outcome(chat_template, p, bos_token, eos_token) for p in CONVERSATIONS.values())


def detect(
    chat_template: str, *, bos_token: str = "", eos_token: str = "", llama_cpp: Path | None = None
) -> tuple[Family, str]:
    """The family one of whose reference templates renders every probe exactly as
    ``chat_template`` does; returns ``(family, reference name)``. InputError if none does."""
    if not chat_template.strip():
        raise InputError(
            "the model has no chat template to detect a family from",
            "pass --family NAME or --template-file FILE",
        )
    refs = [
        (fam, ref, path.read_text(encoding="utf-8"))
        for fam in families().values()
        for ref, path in zip(fam.references, fam.reference_paths(llama_cpp), strict=True)
        if path.is_file()
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
