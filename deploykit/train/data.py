"""LlamaFactory's dataset formats, rendered through the base model's own chat template.

Records (alpaca: instruction/input/output, optional system and history; sharegpt:
conversations of from/value turns, optional system and tools; openai: messages of
role/content) become chat messages, then token ids with labels on assistant tokens only.
A malformed record raises an InputError naming its file, index and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError

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


@dataclass
class DatasetAttr:
    """One dataset: where it is and how its records are laid out (dataset_info.json entry)."""

    name: str
    paths: list[Path]
    formatting: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None


@dataclass
class Conversation:
    """Chat messages (HF format) and tool definitions of one record."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


class RecordError(ValueError):
    """What is wrong with one record (the caller adds where it is)."""


# --- finding and reading files ----------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not found:
            raise InputError(f"{path} has no .json or .jsonl files", "point at a data file")
        return found
    if not path.is_file():
        raise InputError(f"data file not found: {path}", "check the path")
    return [path]


def dataset_attrs(names: str, dataset_dir: Path) -> list[DatasetAttr]:
    """Resolve comma-separated dataset names through ``dataset_dir/dataset_info.json``."""
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{info_path} not found", "pass --dataset-dir DIR holding dataset_info.json"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {info_path}: {exc}", "fix the JSON") from None
    attrs = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        entry = info.get(name)
        if not isinstance(entry, dict):
            raise InputError(
                f"dataset {name!r} is not in {info_path}",
                f"known: {', '.join(sorted(info)) or '(none)'}",
            )
        if "file_name" not in entry:
            keys = [k for k in entry if k.endswith("_url") or k == "cloud_file_name"]
            raise InputError(
                f"dataset {name!r}: only local `file_name` entries are supported (has {keys})",
                "download the data and point file_name at it",
            )
        if entry.get("ranking"):
            raise InputError(
                f"dataset {name!r} is a ranking (preference) dataset", "train takes SFT data only"
            )
        formatting = entry.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt", "openai"):
            raise InputError(
                f"dataset {name!r}: unknown formatting {formatting!r}",
                "use alpaca, sharegpt or openai",
            )
        attrs.append(
            DatasetAttr(
                name=name,
                paths=_files(Path(dataset_dir) / entry["file_name"]),
                formatting=formatting,
                columns=dict(entry.get("columns") or {}),
                tags=dict(entry.get("tags") or {}),
                num_samples=entry.get("num_samples"),
            )
        )
    return attrs


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``[(where, record)]`` from a JSON array or a JSONL file (``where`` names the record)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "pass a UTF-8 JSON or JSONL file") from None
    stripped = text.lstrip()
    if path.suffix != ".jsonl" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON: {exc}", "fix the file") from None
        return [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}: record {len(out)} (line {n})", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}: record {len(out)} (line {n}) is not valid JSON: {exc.msg}",
                "a JSON array, or one JSON object per line (JSONL)",
            ) from None
    return out


# --- records to conversations ------------------------------------------------------------


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
        raise RecordError(f"{col['response']} is a list (ranking data); train takes SFT data")
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


def conversations(attr: DatasetAttr) -> list[Conversation]:
    """All records of one dataset as conversations (an InputError names a bad record)."""
    out: list[Conversation] = []
    for path in attr.paths:
        records = read_records(path)
        if not records:
            raise InputError(f"{path} has no records", "add at least one example")
        formatting = attr.formatting
        for where, record in records:
            try:
                if formatting == "auto":
                    formatting = detect_format(record)
                if formatting == "alpaca":
                    out.append(alpaca(record, attr.columns))
                else:
                    out.append(
                        sharegpt(record, attr.columns, attr.tags, openai=formatting == "openai")
                    )
            except RecordError as exc:
                raise InputError(
                    f"{where}: {exc}", f"fix the record, or check the {formatting} columns/tags"
                ) from None
            if attr.num_samples and len(out) >= attr.num_samples:
                return out
    return out


# --- conversations to token ids ----------------------------------------------------------


def _render(tokenizer, messages: list[dict], tools, generation: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation
    )


def segments(tokenizer, conv: Conversation) -> list[tuple[str, bool]]:
    """The rendered conversation as ``[(text, trained)]``: assistant turns are trained.

    Each assistant turn is what the template adds after the prompt for that turn
    (the generation prompt), end-of-turn marker included. Templates that rewrite earlier
    turns (e.g. dropping past reasoning) train only the last assistant turn.
    """
    msgs, tools = conv.messages, conv.tools
    turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
    out: list[tuple[str, bool]] = []
    done = ""
    for k in turns:
        prompt = _render(tokenizer, msgs[:k], tools, True)
        full = _render(tokenizer, msgs[: k + 1], tools, False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            break
        out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    else:
        return out
    k = turns[-1]  # not incremental: learn the last assistant turn only
    prompt = _render(tokenizer, msgs[:k], tools, True)
    full = _render(tokenizer, msgs[: k + 1], tools, False)
    if not full.startswith(prompt):
        raise RecordError(
            "the chat template renders the assistant turn differently from its generation "
            "prompt, so the answer's tokens cannot be found"
        )
    return [(prompt, False), (full[len(prompt) :], True)]


def encode(tokenizer, conv: Conversation, cutoff_len: int) -> Example | None:
    """Token ids and labels (-100 outside assistant turns), cut at ``cutoff_len``.

    Returns None when nothing trainable is left after the cut.
    """
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(tokenizer, conv):
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
) -> tuple[list[Example], dict[str, int]]:
    """Read every dataset and encode it; returns the examples and counts for the report."""
    attrs = [
        DatasetAttr(name=p, paths=_files(Path(p)), formatting=formatting, num_samples=max_samples)
        for p in data
    ]
    if dataset:
        attrs += dataset_attrs(dataset, Path(dataset_dir))
        for a in attrs:
            if max_samples:
                a.num_samples = min(a.num_samples or max_samples, max_samples)
    if not attrs:
        raise InputError("no training data", "pass --data FILE or --dataset NAME")
    examples: list[Example] = []
    records = skipped = 0
    for attr in attrs:
        for i, conv in enumerate(conversations(attr)):
            records += 1
            try:
                ex = encode(tokenizer, conv, cutoff_len)
            except RecordError as exc:
                raise InputError(f"{attr.name}: record {i}: {exc}", "fix the record") from None
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
