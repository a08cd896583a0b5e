"""LlamaFactory's record formats as chat conversations (Hugging Face message format).

alpaca: instruction/input/output, optional system, history and tools; sharegpt:
conversations of from/value turns, optional system and tools; openai: messages of
role/content. ``columns`` and ``tags`` rename the keys, as in dataset_info.json.
A malformed record raises :class:`RecordError` saying what is wrong; the caller adds where.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "alpaca", "sharegpt", "openai")
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
    "tools": "tools",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
SFT_ONLY = "ranking (preference) data is not supported; use SFT data"


@dataclass
class Conversation:
    """Chat messages (HF format) and tool definitions of one record."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


class RecordError(ValueError):
    """What is wrong with one record (the caller adds where it is)."""


def detect_format(record: Any) -> str:
    """alpaca, sharegpt or openai, from a record's keys."""
    if isinstance(record, dict):
        for key in ("conversations", "messages"):
            turns = record.get(key)
            if isinstance(turns, list) and turns and isinstance(turns[0], dict):
                return "openai" if "role" in turns[0] else "sharegpt"
        if "instruction" in record:
            return "alpaca"
    raise RecordError(
        "cannot tell its format: expected alpaca keys (instruction, output) or "
        "sharegpt/openai turns (conversations or messages)"
    )


def conversation(
    record: Any, formatting: str, columns: dict[str, str], tags: dict[str, str]
) -> Conversation:
    """One record of ``formatting`` (alpaca, sharegpt or openai) as a conversation."""
    if formatting == "alpaca":
        return alpaca(record, columns)
    return sharegpt(record, columns, tags, openai=formatting == "openai")


def _text(value: Any, what: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        raise RecordError(f"{what} must be a string, got {got}")
    return value


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"tools is not valid JSON: {exc.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RecordError("tools must be a list of function definitions")
    # LlamaFactory stores bare {"name", "description", "parameters"}; templates expect OpenAI's
    return [t if "function" in t else {"type": "function", "function": t} for t in value]


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where} is not a JSON function call: {exc.msg}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RecordError(f'{where} must be {{"name": ..., "arguments": {{...}}}}')
        args = call.get("arguments", {})
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": args}})
    return out


def alpaca(record: Any, columns: dict[str, str]) -> Conversation:
    """An alpaca record (instruction, input, output, system, history) as a conversation."""
    if not isinstance(record, dict):
        raise RecordError(f"must be a JSON object, got {type(record).__name__}")
    col = {**ALPACA_COLUMNS, **columns}
    messages: list[dict[str, Any]] = []
    system = _text(record.get(col["system"]), col["system"], required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get(col["history"]) or []
    if not isinstance(history, list):
        raise RecordError(f"{col['history']} must be a list of [prompt, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RecordError(f"{col['history']}[{i}] must be a [prompt, response] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"{col['history']}[{i}][0]")})
        messages.append(
            {"role": "assistant", "content": _text(pair[1], f"{col['history']}[{i}][1]")}
        )
    prompt = _text(record.get(col["prompt"]), col["prompt"])
    query = _text(record.get(col["query"]), col["query"], required=False)
    response = record.get(col["response"])
    if isinstance(response, list):
        raise RecordError(f"{col['response']} is a list: {SFT_ONLY}")
    messages.append({"role": "user", "content": "\n".join(t for t in (prompt, query) if t)})
    messages.append({"role": "assistant", "content": _text(response, col["response"])})
    return Conversation(messages, _tools(record.get(col["tools"])))


def sharegpt(
    record: Any, columns: dict[str, str], tags: dict[str, str], openai: bool = False
) -> Conversation:
    """A sharegpt (from/value) or openai (role/content) record as a conversation."""
    if not isinstance(record, dict):
        raise RecordError(f"must be a JSON object, got {type(record).__name__}")
    col = {**SHAREGPT_COLUMNS, **({"messages": "messages"} if openai else {}), **columns}
    tag = {**(OPENAI_TAGS if openai else SHAREGPT_TAGS), **tags}
    roles = {
        tag["user_tag"]: "user",
        tag["assistant_tag"]: "assistant",
        tag["observation_tag"]: "tool",
        tag["function_tag"]: "function_call",
        tag["system_tag"]: "system",
    }
    turns = record.get(col["messages"])
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"{col['messages']} must be a non-empty list of turns")
    messages: list[dict[str, Any]] = []
    system = _text(record.get(col["system"]), col["system"], required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        where = f"{col['messages']}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object with {tag['role_tag']!r}")
        role = roles.get(turn.get(tag["role_tag"]))
        if role is None:
            raise RecordError(
                f"{where}: unknown {tag['role_tag']} {turn.get(tag['role_tag'])!r} "
                f"(expected one of {', '.join(map(repr, roles))})"
            )
        content = turn.get(tag["content_tag"])
        if role == "function_call":
            messages.append(
                {"role": "assistant", "content": "", "tool_calls": _tool_calls(content, where)}
            )
            continue
        if role == "assistant" and turn.get("tool_calls"):  # openai-style function calls
            message = {
                "role": "assistant",
                "content": _text(content, f"{where}.{tag['content_tag']}", required=False),
                "tool_calls": _tool_calls(
                    [c.get("function", c) for c in turn["tool_calls"] if isinstance(c, dict)],
                    f"{where}.tool_calls",
                ),
            }
            messages.append(message)
            continue
        if role == "system" and i > 0 and not openai:
            raise RecordError(f"{where}: a system turn may only come first")
        messages.append({"role": role, "content": _text(content, f"{where}.{tag['content_tag']}")})
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(f"{col['messages']} has no {tag['assistant_tag']!r} turn to learn from")
    return Conversation(messages, _tools(record.get(col["tools"])))
