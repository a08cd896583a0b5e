"""A Modelfile for a GGUF whose TEMPLATE reproduces the model's own chat template.

``render()`` reads the model (a Hugging Face folder through :class:`ModelDir`, else the GGUF's
metadata), picks the family (exact-match detection or a name), merges the sampling parameters
(``--param`` > the model's generation_config.json > family defaults), adds the model's own
end-of-turn tokens to the family's stop strings and writes the text with
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
from deploykit.ollama import families, modelfile
from deploykit.ollama.names import MIN_VERSION, REQUIRES_SINCE, format_version, parse_version
from deploykit.ollama.params import coerce, from_generation_config

# --- what the model says about itself --------------------------------------------------------


@dataclass(frozen=True)
class ModelChat:
    """A model's chat template and special tokens, the tokens that end its turn, and its
    sampling defaults (as Ollama parameters)."""

    spec: ChatSpec
    end_tokens: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)


def from_dir(path: Path) -> ModelChat:
    """A Hugging Face model folder (chat template from .jinja, tokenizer_config.json or
    chat_template.json)."""
    md = ModelDir(path)
    if not (md.path / "tokenizer_config.json").is_file() and not md.chat_template:
        raise InputError(
            f"{md.path} has no tokenizer_config.json (and no chat template)",
            "point --model-dir at the merged (or base) Hugging Face model directory",
        )
    return ModelChat(md.chat_spec(), md.end_tokens, from_generation_config(md.sampling))


def from_gguf(path: Path) -> ModelChat:
    """A GGUF's metadata (``tokenizer.*`` keys); InputError when it is not a GGUF."""
    info = gguf_header.read(Path(path), {gguf_header.TOKENS})
    ends = [
        gguf_header.token_text(info, info.get(f"tokenizer.ggml.{kind}_token_id"))
        for kind in ("eos", "eot", "eom")
    ]
    return ModelChat(info.chat_spec(), list(dict.fromkeys(t for t in ends if t)))


def model_chat(path: Path) -> ModelChat:
    """:func:`from_dir` for a folder, :func:`from_gguf` for a file."""
    path = Path(path)
    if path.is_dir():
        return from_dir(path)
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
) -> Rendered:
    """Render the Modelfile text for ``gguf`` (nothing is written)."""
    if not gguf_header.is_gguf(Path(gguf)):
        raise InputError(f"{gguf} is not a GGUF file", "give the .gguf file to serve")
    chat = from_dir(model_dir) if model_dir else from_gguf(gguf)
    warnings: list[str] = []
    custom = template_file is not None
    fam, reference, detected = _family(chat, family, custom, warnings)

    if custom:
        go_template = modelfile.check_go_template(
            _read_text(template_file, "--template-file"), str(template_file)
        )
    else:
        assert fam is not None
        go_template = fam.template

    if system is not None:
        if fam is not None and not fam.system_role and not custom:
            raise InputError(
                f"family {fam.name} has no system role (its chat template rejects system messages)",
                "drop --system, or give a --template-file that handles one",
            )
        modelfile.check_text("SYSTEM", system)
    elif fam is not None and not custom and fam.default_system:
        system = fam.default_system

    licenses = []
    if license_file is not None:
        licenses.append(modelfile.check_text("LICENSE", _read_text(license_file, "--license")))

    parameters = _parameters(fam, chat, params or [])

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
        **content,
    )
    name = fam.name if fam else None
    return Rendered(
        text, name, detected, reference, requires=requires, warnings=warnings, **content
    )


def _parameters(
    fam: families.Family | None, chat: ModelChat, given: list[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Sampling values (``given`` > the model's > the family's), then every stop string."""
    values = {**(fam.parameters if fam else {}), **chat.sampling}
    stops = list(fam.stop if fam else ()) + chat.end_tokens
    for name, value in given:
        value = coerce(name, value)
        if name == "stop":
            stops.append(value)
        else:
            values[name] = value
    out = [(k, coerce(k, v)) for k, v in values.items()]
    return out + [("stop", coerce("stop", s)) for s in dict.fromkeys(stops)]
