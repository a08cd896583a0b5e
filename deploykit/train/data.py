"""Conversations as training examples: rendered through the base model's own chat template,
token ids with labels on assistant tokens only.

Reading LlamaFactory data (alpaca, sharegpt, openai; dataset_info.json) is ``deploykit.data``;
rendering is the one renderer, ``deploykit.model.chat_template``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deploykit.core.errors import InputError
from deploykit.data.datasets import conversations, select
from deploykit.data.formats import Conversation, RecordError
from deploykit.data.lf_templates import THOUGHT_WORDS, remove_thought
from deploykit.model.chat_template import render_tokenizer

#: The template variables of LlamaFactory's ``enable_thinking: false``.
NO_THINKING = {"enable_thinking": False}


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def _render(tokenizer, messages: list[dict], tools, generation: bool, variables: dict) -> str:
    return render_tokenizer(
        tokenizer, messages, tools=tools, add_generation_prompt=generation, **variables
    )


def without_thinking(conv: Conversation, thought_words: tuple[str, str] = THOUGHT_WORDS):
    """``conv`` as LlamaFactory's ``enable_thinking: false`` trains it: every assistant
    answer without its thought."""
    messages = [
        {**m, "content": remove_thought(m["content"], thought_words)}
        if m["role"] == "assistant" and isinstance(m.get("content"), str)
        else m
        for m in conv.messages
    ]
    return replace(conv, messages=messages)


def segments(
    tokenizer, conv: Conversation, variables: dict[str, Any] | None = None
) -> list[tuple[str, bool]]:
    """The rendered conversation as ``[(text, trained)]``: assistant turns are trained.

    Each assistant turn is what the template adds after the prompt for that turn
    (the generation prompt), end-of-turn marker included. Templates that rewrite earlier
    turns (e.g. dropping past reasoning) train only the last assistant turn. ``variables``
    go to the template (``enable_thinking``).
    """
    msgs, tools, variables = conv.messages, conv.tools, variables or {}
    turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
    out: list[tuple[str, bool]] = []
    done = ""
    for k in turns:
        prompt = _render(tokenizer, msgs[:k], tools, True, variables)
        full = _render(tokenizer, msgs[: k + 1], tools, False, variables)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            break
        out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    else:
        return out
    k = turns[-1]  # not incremental: learn the last assistant turn only
    prompt = _render(tokenizer, msgs[:k], tools, True, variables)
    full = _render(tokenizer, msgs[: k + 1], tools, False, variables)
    if not full.startswith(prompt):
        raise RecordError(
            "the chat template renders the assistant turn differently from its generation "
            "prompt, so the answer's tokens cannot be found"
        )
    return [(prompt, False), (full[len(prompt) :], True)]


def encode(
    tokenizer,
    conv: Conversation,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    enable_thinking: bool = True,
    thought_words: tuple[str, str] = THOUGHT_WORDS,
) -> Example | None:
    """Token ids and labels (-100 outside assistant turns), cut at ``cutoff_len``.

    ``train_on_prompt``: every token is trained; ``mask_history``: only the last assistant
    turn is; ``enable_thinking`` false: answers lose their thought and the template renders
    with ``enable_thinking=False`` (LlamaFactory's options). Returns None when nothing
    trainable is left after the cut.
    """
    ids: list[int] = []
    labels: list[int] = []
    if enable_thinking:
        parts = segments(tokenizer, conv)
    else:
        parts = segments(tokenizer, without_thinking(conv, thought_words), NO_THINKING)
    if mask_history:
        last = max(k for k, (_, trained) in enumerate(parts) if trained)
        parts = [(text, trained and k == last) for k, (text, trained) in enumerate(parts)]
    if train_on_prompt:
        parts = [(text, True) for text, _ in parts]
    for text, trained in parts:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
        if len(ids) >= cutoff_len:
            break
    ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    if all(t == -100 for t in labels):
        return None
    return Example(ids, labels)


def load(
    tokenizer,
    data: list[str],
    dataset: str | None,
    dataset_dir: str,
    formatting: str,
    cutoff_len: int,
    max_samples: int | None = None,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    enable_thinking: bool = True,
    thought_words: tuple[str, str] = THOUGHT_WORDS,
) -> tuple[list[Example], dict[str, int]]:
    """Read every dataset and encode it; returns the examples and counts for the report."""
    attrs = select(data, dataset, dataset_dir, formatting, max_samples)
    if not attrs:
        raise InputError("no training data", "pass --data FILE or --dataset NAME")
    examples: list[Example] = []
    records = skipped = 0
    for attr in attrs:
        for i, conv in enumerate(conversations(attr)):
            records += 1
            try:
                ex = encode(
                    tokenizer, conv, cutoff_len, train_on_prompt, mask_history,
                    enable_thinking, thought_words,
                )  # fmt: skip
            except RecordError as exc:
                raise InputError(f"{attr.name}: record {i}: {exc}", "fix the record") from None
            except InputError:
                raise
            except Exception as exc:  # the template itself failed (jinja raise_exception)
                raise InputError(
                    f"{attr.name}: record {i}: the chat template cannot render it: {exc}",
                    "check the roles and their order against the model's chat template",
                ) from None
            if ex is None:
                skipped += 1
            else:
                examples.append(ex)
    if not examples:
        raise InputError(
            f"none of the {records} records has an assistant token within --cutoff-len "
            f"{cutoff_len}",
            "raise --cutoff-len",
        )
    tokens = sum(len(e.input_ids) for e in examples)
    return examples, {"records": records, "skipped": skipped, "tokens": tokens}
