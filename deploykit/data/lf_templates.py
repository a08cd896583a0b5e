"""LlamaFactory's chat templates as data (``llamafactory_templates.toml``): how LlamaFactory
builds an evaluation label for a model, and which deploykit families a template name means.

LlamaFactory's predict label is the assistant turn's label ids decoded with special tokens
skipped: the answer plus whatever plain text its template's assistant slot adds after it
(Qwen: ``"answer\\n"``, Llama 3: ``"answer"``), and for a reasoning template with thinking on
the empty thought in front (Qwen3: ``"<think>\\n\\n</think>\\n\\nanswer\\n"``).
"""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deploykit.core.errors import InputError

DATA_FILE = Path(__file__).with_name("llamafactory_templates.toml")
CONTENT = "{{content}}"
EOS = "{{eos_token}}"
LABEL_MODES = ("llamafactory", "clean")
#: LlamaFactory's default thought words (register_template).
THOUGHT_WORDS = ("<think>\n", "\n</think>\n\n")


def remove_thought(text: str, thought_words: tuple[str, str] = THOUGHT_WORDS) -> str:
    """``text`` without its thought blocks, as LlamaFactory's ``remove_thought``."""
    start, end = (re.escape(w) for w in thought_words)
    return re.sub(f"{start}(.*?){end}", "", text, flags=re.DOTALL).lstrip("\n")


class LFTemplate(BaseModel):
    """One LlamaFactory template (see the data file's header for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=40)
    families: list[str] = Field(default=[], max_length=16)
    assistant: str = Field(max_length=200)
    special: list[str] = Field(default=[], max_length=16)
    reasoning: bool = False
    thought_words: tuple[str, str] = THOUGHT_WORDS
    empty_thought: str | None = Field(default=None, max_length=100)
    markers: list[str] = Field(default=[], max_length=16)

    @field_validator("assistant")
    @classmethod
    def _one_content(cls, value: str) -> str:
        if value.count(CONTENT) != 1:
            raise ValueError(f"must hold {CONTENT} exactly once")
        return value

    @field_validator("special", "markers", "thought_words")
    @classmethod
    def _not_empty(cls, value):
        if not all(value):
            raise ValueError("must not hold an empty string")
        return value

    @model_validator(mode="after")
    def _thoughts_need_reasoning(self) -> LFTemplate:
        if not self.reasoning and (
            self.thought_words != THOUGHT_WORDS or self.empty_thought is not None
        ):
            raise ValueError("thought_words and empty_thought go with reasoning = true")
        return self

    def label(self, answer: str, enable_thinking: bool = True) -> str:
        """The label LlamaFactory scores ``answer`` against (special tokens skipped).

        ``enable_thinking`` (LlamaFactory's, for a reasoning template): true puts the empty
        thought in front of an answer that has none; false removes the answer's thought.
        """
        content = answer
        if self.reasoning and not enable_thinking:
            content = remove_thought(content, self.thought_words)
        text = self.assistant.replace(CONTENT, content)
        start, end = (w.strip() for w in self.thought_words)
        if self.reasoning and enable_thinking and start not in content and end not in content:
            text = (self.empty_thought or "".join(self.thought_words)) + text
        for tok in (EOS, *self.special):
            text = text.replace(tok, "")
        return text

    def same_labels(self, other: LFTemplate) -> bool:
        """Whether ``other`` builds every label (and trained answer) as this one does."""
        keys = ("assistant", "special", "reasoning", "thought_words", "empty_thought")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def matches(self, chat_template: str) -> bool:
        """Whether a model's own chat template (Jinja or Go) looks like this template."""
        return bool(self.markers) and all(m in chat_template for m in self.markers)


class _DataFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: dict[str, dict]
    #: deploykit families LlamaFactory has no template for -> why.
    no_template: dict[str, str] = {}

    @field_validator("no_template")
    @classmethod
    def _reasons(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(value.values()):
            raise ValueError("every family needs its reason")
        return value


def _error(path: Path, what: str, exc: Exception) -> InputError:
    first = str(exc).splitlines()
    detail = " ".join(first[1:3]) or first[0]
    return InputError(f"{path}: {what}: {detail}", "fix the entry")


@functools.cache
def _load(path: Path) -> tuple[dict[str, LFTemplate], dict[str, str]]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "reinstall deploykit") from None
    try:
        data = _DataFile(**raw)
    except (ValidationError, TypeError) as exc:
        raise _error(path, "the file", exc) from None
    out = {}
    for name, entry in data.templates.items():
        try:
            out[name] = LFTemplate(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            raise _error(path, f"template {name!r}", exc) from None
    both = sorted({f for t in out.values() for f in t.families} & set(data.no_template))
    if both:
        raise InputError(f"{path}: {both} are mapped and in [no_template]", "fix the entry")
    return out, data.no_template


def templates(path: Path = DATA_FILE) -> dict[str, LFTemplate]:
    """The templates in file order (a bad data file is an InputError naming the entry)."""
    return _load(path)[0]


def no_template(path: Path = DATA_FILE) -> dict[str, str]:
    """deploykit families LlamaFactory has no template for, each with the reason."""
    return _load(path)[1]


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
    """The LlamaFactory template a chat template that is no family's looks like, by its
    markers (None: none matches)."""
    if not chat_template:
        return None
    return next((t for t in templates().values() if t.matches(chat_template)), None)


def for_family(family: str, chat_template: str | None = None) -> LFTemplate | None:
    """The template a model of deploykit ``family`` uses: the first of the family's whose
    markers occur in ``chat_template``, else its first (None: the family has none)."""
    mine = [t for t in templates().values() if family in t.families]
    found = next((t for t in mine if chat_template and t.matches(chat_template)), None)
    return found or (mine[0] if mine else None)


def for_model(family: str | None, chat_template: str | None) -> LFTemplate | None:
    """The template a model uses: its deploykit ``family``'s (:func:`for_family`), else the
    one its chat template's markers say (None: a family in [no_template], or no match)."""
    if family in no_template():
        return None
    return (for_family(family, chat_template) if family else None) or detect(chat_template)
