"""A Modelfile for a GGUF whose TEMPLATE reproduces the model's own chat template.

``render()`` reads the model (a Hugging Face folder through :class:`ModelDir`, else the GGUF's
metadata), picks the family (exact-match detection or a name), merges the parameters
(``--param`` > the SYSTEM and PARAMETERs of the Modelfile LlamaFactory's export left in the model
folder > the model's generation_config.json, greedy for ``do_sample: false`` > family defaults;
num_ctx only from the training record's cutoff length), adds the model's own end-of-turn
tokens to the family's stop strings and writes the text with
:func:`modelfile.format`, which validates every value against Ollama's Modelfile rules and
parses the text back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core.errors import InputError
from deploykit.llamacpp import gguf_header
from deploykit.model.chat_template import ChatSpec
from deploykit.model.hf_dir import ModelDir
from deploykit.ollama import capabilities, families, llamafactory, modelfile
from deploykit.ollama.names import MIN_VERSION, REQUIRES_SINCE, format_version, parse_version
from deploykit.ollama.params import (
    SAMPLING,
    check_context,
    coerce,
    from_generation_config,
    is_greedy,
)

# --- what the model says about itself --------------------------------------------------------


@dataclass(frozen=True)
class ModelChat:
    """A model's chat template and special tokens, the tokens that end its turn, its
    sampling defaults (as Ollama parameters; ``greedy``: its generation_config says
    ``do_sample: false``), the context it was trained at, and the Modelfile LlamaFactory's
    export wrote beside it."""

    spec: ChatSpec
    end_tokens: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    greedy: bool = False
    context: int | None = None
    export: llamafactory.ExportModelfile | None = None


def from_dir(path: Path, *, context: bool = True, export: bool = True) -> ModelChat:
    """A Hugging Face model folder (chat template from .jinja, tokenizer_config.json or
    chat_template.json); ``context``: also read its training record's cutoff length;
    ``export``: LlamaFactory's Modelfile (a Modelfile is rendered from both; a chat template
    needs neither)."""
    md = ModelDir(path)
    if not (md.path / "tokenizer_config.json").is_file() and not md.chat_template:
        raise InputError(
            f"{md.path} has no tokenizer_config.json (and no chat template)",
            "point --model-dir at the merged (or base) Hugging Face model directory",
        )
    return ModelChat(
        md.chat_spec(),
        md.end_tokens,
        from_generation_config(md.sampling),
        greedy=is_greedy(md.sampling),
        context=md.training_context if context else None,
        export=llamafactory.read(md.path) if export else None,
    )


def from_gguf(path: Path) -> ModelChat:
    """A GGUF's metadata (``tokenizer.*`` keys); InputError when it is not a GGUF."""
    info = gguf_header.read(Path(path), {gguf_header.TOKENS})
    ends = [
        gguf_header.token_text(info, info.get(f"tokenizer.ggml.{kind}_token_id"))
        for kind in ("eos", "eot", "eom")
    ]
    return ModelChat(info.chat_spec(), list(dict.fromkeys(t for t in ends if t)))


def model_chat(path: Path, *, records: bool = True) -> ModelChat:
    """:func:`from_dir` for a folder (``records``: with its training record and LlamaFactory
    Modelfile), :func:`from_gguf` for a file."""
    path = Path(path)
    if path.is_dir():
        return from_dir(path, context=records, export=records)
    if path.is_file():
        return from_gguf(path)
    raise InputError(f"model not found: {path}", "pass a model directory or a .gguf file")


# --- rendering -------------------------------------------------------------------------------


@dataclass
class Rendered:
    """A rendered Modelfile and what went into it."""

    text: str
    family: str | None
    detected: bool
    reference: str | None
    template: str | None
    system: str | None
    parameters: list[tuple[str, Any]]
    requires: str | None
    warnings: list[str] = field(default_factory=list)
    #: Ollama's built-in renderer and parser (a family proven at deploy time), else None.
    renderer: str | None = None
    parser: str | None = None

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
            "renderer": self.renderer,
            "parser": self.parser,
            "warnings": self.warnings,
        }


def _from_path(gguf: Path, out: Path | None) -> str:
    gguf = Path(gguf).resolve()
    if out is None:
        return str(gguf)
    rel = os.path.relpath(gguf, Path(out).resolve().parent)
    path = rel if rel.startswith("..") else f"./{rel}"
    if "\n" in path or "\r" in path:
        raise InputError(f"the GGUF path {gguf} contains a newline", "rename the file")
    return path


def _read_text(path: Path, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {option} {path}: {exc}") from None


def _family(
    chat: ModelChat, family: str, custom: bool, warnings: list[str]
) -> tuple[families.Family | None, str | None, bool]:
    """``(family, reference, detected)`` for ``--family`` (``auto`` or a name)."""
    spec = chat.spec
    if family == "auto":
        try:
            fam, ref = families.detect(
                spec.template or "", bos_token=spec.bos_token, eos_token=spec.eos_token
            )
            return fam, ref, True
        except InputError:
            if not custom:
                raise
            warnings.append(
                "no family matched the model's chat template; stops from the model only"
            )
            return None, None, False
    fam = families.get(family)
    if spec.template:
        try:
            found, _ = families.detect(
                spec.template, bos_token=spec.bos_token, eos_token=spec.eos_token
            )
        except InputError:
            found = None
        if found is None or found.name != fam.name:
            warnings.append(
                f"the model's chat template is not family {fam.name}'s "
                f"({'it matches ' + found.name if found else 'it matches no family'})"
            )
    return fam, None, False


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
    context: int | None = None,
) -> Rendered:
    """Render the Modelfile text for ``gguf`` (nothing is written). ``context``: the context
    the model was trained at (default: the model folder's training record), written as
    num_ctx unless a ``num_ctx`` is given."""
    if not gguf_header.is_gguf(Path(gguf)):
        raise InputError(f"{gguf} is not a GGUF file", "give the .gguf file to serve")
    params = params or []
    read_context = context is None and all(name != "num_ctx" for name, _ in params)
    chat = from_dir(model_dir, context=read_context) if model_dir else from_gguf(gguf)
    warnings: list[str] = []
    custom = template_file is not None
    fam, reference, detected = _family(chat, family, custom, warnings)

    if custom:
        go_template = modelfile.check_go_template(
            _read_text(template_file, "--template-file"), str(template_file)
        )
    else:
        assert fam is not None
        go_template = fam.template  # None: Ollama's renderer renders the prompts
    builtin = {"renderer": None, "parser": None}
    if fam is not None and not custom:
        builtin = {"renderer": fam.renderer, "parser": fam.parser}
    _check_what_runs(gguf, go_template, warnings)

    if system is not None:
        if fam is not None and not fam.system_role and not custom:
            raise InputError(
                f"family {fam.name} has no system role (its chat template rejects system messages)",
                "drop --system, or give a --template-file that handles one",
            )
        modelfile.check_text("SYSTEM", system)
    elif chat.export is not None and chat.export.system is not None:
        system = _export_system(chat.export, fam, custom, warnings)
    elif fam is not None and not custom and fam.default_system:
        system = fam.default_system

    licenses = []
    if license_file is not None:
        licenses.append(modelfile.check_text("LICENSE", _read_text(license_file, "--license")))

    if chat.export is not None and go_template is not None:
        _export_notes(chat.export, go_template, fam, warnings)
    parameters = _parameters(fam, chat, params, context or chat.context, warnings)

    requires, notes = None, []
    if fam is not None and parse_version(fam.min_ollama) > MIN_VERSION:
        if parse_version(fam.min_ollama) >= REQUIRES_SINCE:
            requires = fam.min_ollama
        else:
            notes.append(
                f"needs Ollama >= {fam.min_ollama} (REQUIRES exists only from Ollama "
                f"{format_version(REQUIRES_SINCE)})"
            )

    if fam is not None and fam.runtime_bos and chat.spec.add_bos is False:
        warnings.append(
            f"family {fam.name} expects the tokenizer to add BOS, but the model says "
            "add_bos_token=false"
        )

    reproduces = f" (reproduces: {', '.join(fam.reference_names)})" if fam else ""
    content = {"template": go_template, "system": system, "parameters": parameters}
    text = modelfile.format(
        header=[
            f"Modelfile written by deploykit {__version__}",
            f"family: {fam.name if fam else 'custom'}{reproduces}",
        ],
        from_path=_from_path(gguf, out),
        requires=requires,
        notes=notes,
        licenses=licenses,
        **builtin,
        **content,
    )
    name = fam.name if fam else None
    return Rendered(
        text,
        name,
        detected,
        reference,
        requires=requires,
        warnings=warnings,
        **builtin,
        **content,
    )


def _check_what_runs(gguf: Path, template: str | None, warnings: list[str]) -> None:
    """Refuse a TEMPLATE Ollama would never run (it sets a renderer for this architecture);
    warn when Ollama >= 0.30 would render the GGUF's own template instead (create refuses)."""
    if template is None:
        return
    info = gguf_header.read(Path(gguf))
    auto = families.auto_renderer(info.arch or "")
    if auto is not None:
        renderer, fam = auto
        raise InputError(
            f"Ollama sets renderer {renderer!r} itself for a {info.arch!r} GGUF, and a "
            "renderer beats a TEMPLATE: this TEMPLATE would never run",
            f"use --family {fam.name} (it writes RENDERER {fam.renderer}) without --template-file"
            if fam is not None
            else "deploykit has no family with that renderer yet: create the model from the GGUF "
            "without a TEMPLATE (Ollama's renderer then runs, proven at deploy time only)",
        )
    why = capabilities.gguf_template_wins(template, info.get("tokenizer.chat_template") or "")
    if why:
        warnings.append(
            f"on Ollama >= 0.30 this TEMPLATE is not what runs: {why}, so Ollama renders the "
            "GGUF's own chat template (`deploykit create` refuses it without "
            "--allow-gguf-template)"
        )


def _export_system(
    export: llamafactory.ExportModelfile,
    fam: families.Family | None,
    custom: bool,
    warnings: list[str],
) -> str | None:
    """The SYSTEM of LlamaFactory's Modelfile, kept (unless the family has no system role)."""
    system = export.system
    if fam is not None and not fam.system_role and not custom:
        warnings.append(
            f"the SYSTEM of {export.path} is dropped: family {fam.name}'s chat template has no "
            "system role"
        )
        return None
    default = fam.default_system if fam is not None and not custom else None
    if default and system != default:
        warnings.append(
            f"the SYSTEM of {export.path} is kept; the model's chat template's default differs"
        )
    return modelfile.check_text("SYSTEM", system)


def _export_notes(
    export: llamafactory.ExportModelfile,
    template: str,
    fam: families.Family | None,
    warnings: list[str],
) -> None:
    """Say where the TEMPLATE written differs from LlamaFactory's, and what is not kept."""
    if export.template is not None and export.template.strip() != template.strip():
        source = f"family {fam.name}'s" if fam is not None else "the given one"
        lacks = (
            "; LlamaFactory's has no tool calling"
            if fam is not None and fam.tools and ".Tools" not in export.template
            else ""
        )
        warnings.append(
            f"the TEMPLATE of {export.path} is replaced by {source}, which reproduces the "
            f"model's chat template{lacks}"
        )
    if export.dropped:
        warnings.append(f"{', '.join(export.dropped)} of {export.path} not carried over")


def _parameters(
    fam: families.Family | None,
    chat: ModelChat,
    given: list[tuple[str, Any]],
    context: int | None,
    warnings: list[str],
) -> list[tuple[str, Any]]:
    """Values (``given`` > LlamaFactory's Modelfile > the model's > the family's), then every
    stop string. The model's generation_config with ``do_sample: false`` stands for greedy
    decoding: none of the family's sampling set then. num_ctx only where it is known: given,
    the training ``context``, or (without one) LlamaFactory's Modelfile; else Ollama sizes it."""
    family = {
        k: v
        for k, v in (fam.parameters if fam else {}).items()
        if not (chat.greedy and k in SAMPLING)
    }
    values = {**family, **chat.sampling}
    if context is not None:
        values["num_ctx"] = check_context(context, "the training context")
    stops = list(fam.stop if fam else ()) + chat.end_tokens
    if chat.export is not None:
        for name, value in chat.export.parameters:
            value = coerce(name, value)  # outside text: checked as any PARAMETER is
            if name == "stop":
                stops.append(value)
                continue
            if name == "num_ctx":  # LlamaFactory writes a fixed 4096: the training record wins
                value = check_context(value, f"PARAMETER num_ctx of {chat.export.path}")
                if context is not None:
                    if value != values["num_ctx"]:
                        warnings.append(
                            f"PARAMETER num_ctx {value} of {chat.export.path} is replaced by "
                            f"the training context {values['num_ctx']}"
                        )
                    continue
            if name in values and values[name] != value:
                warnings.append(
                    f"PARAMETER {name} {value} of {chat.export.path} is kept "
                    f"(deploykit would write {values[name]})"
                )
            values[name] = value
    for name, value in given:
        value = coerce(name, value)
        if name == "stop":
            stops.append(value)
        else:
            values[name] = value
    out = [(k, coerce(k, v)) for k, v in values.items()]
    return out + [("stop", coerce("stop", s)) for s in dict.fromkeys(stops)]
