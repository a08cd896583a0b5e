"""LlamaFactory's chat templates as data (``llamafactory_templates.toml``): how LlamaFactory
builds an evaluation label for a model, and which deploykit families a template name means.

LlamaFactory's predict label is the assistant turn's label ids decoded with special tokens
skipped: the answer plus whatever plain text its template's assistant slot adds after it
(Qwen: ``"answer\\n"``, Llama 3: ``"answer"``).
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploykit.core.errors import InputError

DATA_FILE = Path(__file__).with_name("llamafactory_templates.toml")
CONTENT = "{{content}}"
EOS = "{{eos_token}}"
LABEL_MODES = ("llamafactory", "clean")


class LFTemplate(BaseModel):
    """One LlamaFactory template (see the data file's header for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    families: list[str] = []
    assistant: str
    special: list[str] = []
    markers: list[str] = Field(min_length=1)

    @field_validator("assistant")
    @classmethod
    def _one_content(cls, value: str) -> str:
        if value.count(CONTENT) != 1:
            raise ValueError(f"must hold {CONTENT} exactly once")
        return value

    def label(self, answer: str) -> str:
        """The label LlamaFactory scores ``answer`` against (special tokens skipped)."""
        text = self.assistant.replace(EOS, "")
        for tok in self.special:
            text = text.replace(tok, "")
        return text.replace(CONTENT, answer)

    def matches(self, chat_template: str) -> bool:
        """Whether a model's own chat template (Jinja or Go) looks like this template."""
        return all(m in chat_template for m in self.markers)


@functools.cache
def templates(path: Path = DATA_FILE) -> dict[str, LFTemplate]:
    """The templates in file order (a bad data file is an InputError naming the entry)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))["templates"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "reinstall deploykit") from None
    out = {}
    for name, entry in raw.items():
        try:
            out[name] = LFTemplate(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            first = str(exc).splitlines()
            raise InputError(
                f"{path}: template {name!r}: {' '.join(first[1:3]) or first[0]}",
                "fix the entry",
            ) from None
    return out


def get(name: str) -> LFTemplate:
    """The template LlamaFactory calls ``name`` (InputError listing the known ones)."""
    known = templates()
    if name not in known:
        raise InputError(
            f"unknown LlamaFactory template {name!r}",
            f"known here: {', '.join(known)}; or use --labels clean",
        )
    return known[name]


def detect(chat_template: str | None) -> LFTemplate | None:
    """The LlamaFactory template a model's own chat template renders as (None: unknown)."""
    if not chat_template:
        return None
    return next((t for t in templates().values() if t.matches(chat_template)), None)
