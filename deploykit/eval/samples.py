"""Evaluation samples from LlamaFactory data: the prompt is every turn before the last
assistant answer, the label is that answer.

Reading and validating records is ``deploykit.data`` (shared with the trainer); this module
only splits each conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.data.datasets import conversations, select
from deploykit.data.formats import Conversation


@dataclass
class Sample:
    """One evaluation example: chat ``messages`` to send, ``label`` to compare with."""

    where: str
    messages: list[dict[str, Any]]
    label: str
    tools: list[dict[str, Any]] | None = None


def _label(message: dict[str, Any]) -> str:
    """The reference answer as text (tool calls as their JSON, the way they are compared)."""
    content = message.get("content") or ""
    calls = message.get("tool_calls")
    if calls and not content:
        return json.dumps([c.get("function", c) for c in calls], ensure_ascii=False)
    return content


def split(conv: Conversation, where: str) -> Sample:
    """Prompt turns and label of one conversation (InputError naming ``where`` if unusable)."""
    last = max((k for k, m in enumerate(conv.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InputError(f"{where}: has no assistant answer to use as the label", "fix the record")
    prompt = conv.messages[:last]
    if not any(m["role"] in ("user", "tool") for m in prompt):
        raise InputError(
            f"{where}: has no user turn before its last assistant answer", "fix the record"
        )
    return Sample(where, prompt, _label(conv.messages[last]), conv.tools)


def load(
    data: list[Path],
    dataset: str | None = None,
    dataset_dir: Path | str = "data",
    formatting: str = "auto",
    max_samples: int | None = None,
) -> tuple[list[Sample], list[Path]]:
    """Samples from ``data`` files and ``dataset`` names (``dataset_dir/dataset_info.json``),
    and the files they came from. ``max_samples`` caps each dataset."""
    attrs = select(data, dataset, dataset_dir, formatting, max_samples)
    if not attrs:
        raise InputError("no evaluation data", "pass --data FILE or --dataset NAME")
    samples: list[Sample] = []
    for attr in attrs:
        for i, conv in enumerate(conversations(attr)):
            samples.append(split(conv, f"{attr.name}: record {i}"))
    return samples, [p for attr in attrs for p in attr.paths]
