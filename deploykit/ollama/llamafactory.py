"""The Modelfile LlamaFactory's ``llamafactory-cli export`` writes into its export folder.

It says ``FROM .`` (the safetensors folder itself, which only Ollama's own safetensors import
reads), a TEMPLATE built from LlamaFactory's template slots (with no tool calling), SYSTEM when
the template has a default one, a ``PARAMETER stop`` per end token and ``PARAMETER num_ctx
4096``. deploykit keeps what its users chose there (SYSTEM and the PARAMETERs) and renders the
TEMPLATE from the model's own chat template instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.ollama import modelfile

FILE = "Modelfile"
#: What deploykit carries over; other commands are reported as dropped.
_KEPT = ("from", "template", "system", "parameter")
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class ExportModelfile:
    """A ``FROM .`` Modelfile beside a model's weights, as Ollama's parser reads it."""

    path: Path
    template: str | None
    system: str | None
    parameters: list[tuple[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # commands not carried over (upper case)


def from_folder(value: str, modelfile_path: Path) -> Path | None:
    """The folder a FROM value names, as Ollama's CLI resolves it (``~``, or relative to the
    Modelfile), when it is one; else None (a file, or a model name)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(modelfile_path).parent / path
    return path if path.is_dir() else None


def read(folder: Path) -> ExportModelfile | None:
    """``folder/Modelfile`` when its FROM is ``folder`` itself (LlamaFactory's export), else
    None; InputError, naming the file, when Ollama's parser would refuse it."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise InputError(f"{path} is larger than {_MAX_BYTES} bytes", "is it a Modelfile?")
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "save the Modelfile as UTF-8") from None
    try:
        commands = modelfile.parse(text)
        request = modelfile.create_request(commands)
    except InputError as exc:
        raise InputError(f"{path}: {exc.message}", exc.hint) from None
    target = from_folder(request["from"], path)
    if target is None or target.resolve() != Path(folder).resolve():
        return None
    values = dict(request.get("parameters") or {})
    stops = values.pop("stop", [])
    dropped = sorted({c.upper() for c, _ in commands if c not in _KEPT})
    return ExportModelfile(
        path=path,
        template=request.get("template"),
        system=request.get("system"),
        parameters=[*values.items(), *(("stop", s) for s in stops)],
        dropped=dropped,
    )
