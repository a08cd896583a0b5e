"""Ollama's built-in Gemma 4 renderer and parser, for the test server (tests only).

Written in Python from Ollama's Go source (model/renderers/gemma4.go, server/
renderer_resolution.go, model/renderers/thinking.go): what a real server renders for a model
created with ``RENDERER gemma4[-small|-large]``, so the end-to-end test of the Gemma 4 demo can
check ``_debug_render_only`` against the model's own Jinja template as ``deploykit health`` does
on a real server. It is a port, not Ollama: the family stays "deploy-time proof" in
``templates list``, and a real server's renderer is what ``health --reference`` proves at deploy
time. Images are not supported (the test server takes none).
"""

from __future__ import annotations

import math
from typing import Any

Q = '<|"|>'  # Gemma 4's string delimiter
#: server/renderer_resolution.go: "gemma4" resolves to small or large by parameter count.
LARGE_MIN_PARAMETERS = 12_000_000_000
#: model/renderers/gemma4.go ``Thinking()``: think off or on, off unless asked.
THINKING = {"values": [False, True], "default": False}
RENDERERS = ("gemma4", "gemma4-small", "gemma4-large")


def resolve(name: str, parameter_count: int) -> str:
    """The renderer a model's ``renderer`` name selects (``resolveRendererName``)."""
    if name == "gemma4":
        return "gemma4-large" if parameter_count >= LARGE_MIN_PARAMETERS else "gemma4-small"
    return name


def resolve_think(think: Any) -> Any:
    """``ResolveThinking``: a boolean is kept, anything else (omitted, a level, a budget)
    takes the renderer's default or turns thinking on."""
    if isinstance(think, bool):
        return think
    if think is None or isinstance(think, str):
        return THINKING["default"]
    return True  # a token budget asks for thinking


def render(name: str, messages: list[dict], tools: list[dict], think: Any) -> str:
    """``Gemma4Renderer.Render`` for ``name`` (gemma4-small or gemma4-large)."""
    empty_block_on_nothink = name == "gemma4-large"
    out = ["<bos>"]
    has_system = bool(messages) and messages[0].get("role") in ("system", "developer")
    system = messages[0].get("content", "") if has_system else ""
    loop = messages[1:] if has_system else list(messages)
    thinks = bool(think)
    if has_system or tools or thinks:
        out.append("<|turn>system\n")
        if thinks:
            out.append("<|think|>\n")
        if system:
            out.append(system.strip())
        out += [_declaration(t.get("function") or {}) for t in tools]
        out.append("<turn|>\n")
    last_user = max((i for i, m in enumerate(loop) if m.get("role") == "user"), default=-1)
    prev_type, prev_role = "", ""
    for i, msg in enumerate(loop):
        if msg.get("role") == "tool":
            continue
        prev_type = ""
        role = "model" if msg.get("role") == "assistant" else msg.get("role", "")
        if not (role == "model" and prev_role == "assistant"):
            out.append(f"<|turn>{role}\n")
        content = msg.get("content") or ""
        if msg.get("role") == "assistant" and msg.get("thinking") and i > last_user:
            out.append(f"<|channel>thought\n{msg['thinking']}\n<channel|>")
        calls = msg.get("tool_calls") or []
        for call in calls:
            out.append(_tool_call(call.get("function") or {}))
        if calls:
            prev_type = "tool_call"
        responded = False
        if calls:
            k = i + 1
            while k < len(loop) and loop[k].get("role") == "tool":
                name_ = _response_name(loop[k], calls)
                out.append(
                    f"<|tool_response>response:{name_}{{value:"
                    f"{_arg(loop[k].get('content') or '')}}}<tool_response|>"
                )
                responded, prev_type = True, "tool_response"
                k += 1
        had_content = False
        if role == "model":
            if content:
                content = strip_thinking(content)
                out.append(content)
                had_content = content.strip() != ""
        else:
            out.append(content.strip())
            had_content = content.strip() != ""
        following = next((m.get("role", "") for m in loop[i + 1 :] if m.get("role") != "tool"), "")
        continues = role == "model" and following == "assistant" and (not calls or responded)
        if prev_type == "tool_call" and not responded:
            out.append("<|tool_response>")
        elif not continues and not (responded and not had_content and following == ""):
            out.append("<turn|>\n")
        prev_role = msg.get("role", "")
    if prev_type not in ("tool_response", "tool_call"):
        out.append("<|turn>model\n")
        if empty_block_on_nothink and not thinks:
            out.append("<|channel>thought\n<channel|>")
    elif prev_type == "tool_response" and thinks:
        out.append("<|channel>thought\n")
    return "".join(out)


def strip_thinking(text: str) -> str:
    """``stripThinking``: drop ``<|channel>...<channel|>`` blocks (an unclosed one and all
    after it), then trim."""
    kept = []
    while True:
        start = text.find("<|channel>")
        if start < 0:
            kept.append(text)
            break
        kept.append(text[:start])
        end = text.find("<channel|>", start)
        if end < 0:
            break
        text = text[end + len("<channel|>") :]
    return "".join(kept).strip()


def parse(text: str) -> tuple[str, str]:
    """model/parsers/gemma4.go, as far as the test server needs it: the thought channel at the
    start of the output is the thinking, the rest the content. Tool calls are not parsed (the
    demo model makes none): they stay in the content."""
    head = "<|channel>thought\n"
    if text.startswith(head):
        end = text.find("<channel|>")
        if end < 0:
            return text[len(head) :], ""
        return text[len(head) : end], text[end + len("<channel|>") :]
    return "", text


def _response_name(msg: dict, calls: list[dict]) -> str:
    name = msg.get("tool_name") or "unknown"
    wanted = msg.get("tool_call_id")
    if wanted:
        for call in calls:
            if call.get("id") == wanted:
                return (call.get("function") or {}).get("name", "")
    return name


# -- tool declarations: api.Tool as Go decodes it, then gemma4.go's schema writer --------------


def _types(value: Any) -> list[str]:
    """api.PropertyType from JSON: a string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _tool_property(raw: Any) -> dict:
    """api.ToolProperty: only its fields survive Go's decoding (others are dropped)."""
    raw = raw if isinstance(raw, dict) else {}
    prop: dict[str, Any] = {"type": _types(raw.get("type"))}
    if isinstance(raw.get("description"), str):
        prop["description"] = raw["description"]
    if isinstance(raw.get("enum"), list):
        prop["enum"] = raw["enum"]
    if raw.get("items") is not None:
        prop["items"] = raw["items"]  # `any`: kept as JSON
    if isinstance(raw.get("properties"), dict):
        prop["properties"] = {k: _tool_property(v) for k, v in raw["properties"].items()}
    if isinstance(raw.get("required"), list):
        prop["required"] = [r for r in raw["required"] if isinstance(r, str)]
    if isinstance(raw.get("anyOf"), list):
        prop["anyOf"] = [_tool_property(b) for b in raw["anyOf"]]
    return prop


def _any_of_types(prop: dict) -> list[str] | None:
    """``simpleAnyOfTypes``: a union of bare type branches, deduplicated."""
    if not prop.get("anyOf"):
        return None
    out: list[str] = []
    for branch in prop["anyOf"]:
        bare = (
            not branch.get("anyOf")
            and branch["type"]
            and not any(
                branch.get(k) for k in ("items", "description", "enum", "properties", "required")
            )
        )
        if not bare:
            return None
        out += [t for t in branch["type"] if t not in out]
    return out or None


def _schema_value(prop: dict, top: bool) -> dict:
    """``topLevelTypedSchemaValueFromToolProperty`` (top) / ``schemaValueFromToolProperty``."""
    out: dict[str, Any] = {}
    types = prop["type"] or _any_of_types(prop)
    if types:
        if len(types) == 1:
            out["type"] = types[0]
        elif top:  # the upstream template stringifies the upper-cased list
            out["type"] = "[" + ", ".join(f"'{t.upper()}'" for t in types) + "]"
        else:
            out["type"] = list(types)
    if prop.get("description"):
        out["description"] = prop["description"]
    if prop.get("enum"):
        out["enum"] = prop["enum"]
    if "items" in prop:
        out["items"] = prop["items"]
    if "properties" in prop:
        props = prop["properties"]
        out["properties"] = (
            {k: _schema_value(v, True) for k, v in props.items()} if top else _Typed(props)
        )
    if prop.get("required"):
        out["required"] = prop["required"]
    return out


class _Typed(dict):
    """A nested *api.ToolPropertiesMap (not a JSON object): ``asSchemaMap`` converts it."""


def _as_map(value: Any) -> dict | None:
    if isinstance(value, _Typed):
        return {k: _schema_value(v, False) for k, v in value.items()}
    if isinstance(value, dict):
        return value
    return None


def _type_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.upper()]
    if isinstance(value, list):
        return [v.upper() for v in value if isinstance(v, str)]
    return []


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _quoted_list(items: list[str]) -> str:
    return "[" + ",".join(Q + s + Q for s in items) + "]"


def _declaration(fn: dict) -> str:
    """``renderToolDeclaration``."""
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else None
    ptype = params.get("type") if isinstance(params.get("type"), str) else ""
    required = _strings(params.get("required"))
    out = f"<|tool>declaration:{fn.get('name', '')}{{description:{Q}{fn.get('description', '')}{Q}"
    if props is not None or ptype:
        parts = []
        if props:
            typed = {k: _schema_value(_tool_property(v), True) for k, v in props.items()}
            parts.append("properties:{" + _properties(typed) + "}")
        if required:
            parts.append("required:" + _quoted_list(required))
        if ptype:
            parts.append(f"type:{Q}{ptype.upper()}{Q}")
        out += ",parameters:{" + ",".join(parts) + "}"
    return out + "}<tool|>"


def _properties(props: dict) -> str:
    """``writeSchemaProperties``: sorted by name, each ``name:{...}``."""
    written = []
    for name in sorted(props):
        prop = _as_map(props[name])
        if prop is None:
            continue
        parts = []
        if isinstance(prop.get("description"), str) and prop["description"]:
            parts.append(f"description:{Q}{prop['description']}{Q}")
        types = _type_names(prop.get("type"))
        first = types[0] if types else ""
        if first == "STRING":
            enum = prop.get("enum") if isinstance(prop.get("enum"), list) else []
            if enum:
                parts.append("enum:[" + ",".join(Q + _go_value(v) + Q for v in enum) + "]")
        elif first == "ARRAY":
            items = _as_map(prop.get("items"))
            if items:
                parts.append("items:{" + _items(items) + "}")
        if prop.get("nullable") is True:
            parts.append("nullable:true")
        if first == "OBJECT":
            nested = _as_map(prop.get("properties"))
            if nested is None:
                standard = {"description", "type", "properties", "required", "nullable"}
                nested = {k: v for k, v in prop.items() if k not in standard}
            parts.append("properties:{" + _properties(nested) + "}")
            required = _strings(prop.get("required"))
            if required:
                parts.append("required:" + _quoted_list(required))
        if types:
            typed = f"{Q}{types[0]}{Q}" if len(types) == 1 else _quoted_list(types)
            parts.append("type:" + typed)
        written.append(name + ":{" + ",".join(parts) + "}")
    return ",".join(written)


def _items(items: dict) -> str:
    """``writeSchemaItemsSpec``."""
    parts = []
    for key in sorted(items):
        value = items[key]
        if value is None:
            continue
        if key == "properties":
            nested = _as_map(value)
            parts.append("properties:{" + (_properties(nested) if nested else "") + "}")
        elif key == "required":
            parts.append("required:" + _quoted_list(_strings(value)))
        elif key == "type":
            types = _type_names(value)
            if len(types) == 1:
                parts.append(f"type:{Q}{types[0]}{Q}")
            elif types:
                parts.append("type:" + _quoted_list(types))
            else:
                parts.append("")  # Go writes the comma and nothing after it
        else:
            parts.append(f"{key}:{_schema(value)}")
    return ",".join(parts)


def _number(v: float | int) -> str:
    if isinstance(v, int) or (math.isfinite(v) and v == int(v)):
        return str(int(v))
    return repr(v)


def _go_value(v: Any) -> str:
    """Go's ``%v`` for a JSON value (an enum member)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return _number(v)
    return str(v)


def _value(value: Any, quote_keys: bool) -> str:
    """``formatSchemaValue`` (keys quoted) and ``formatArgValue`` (keys bare)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return Q + value + Q
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, dict):
        key = (lambda k: f"{Q}{k}{Q}") if quote_keys else str
        body = ",".join(f"{key(k)}:{_value(value[k], quote_keys)}" for k in sorted(value))
        return "{" + body + "}"
    if isinstance(value, list):
        return "[" + ",".join(_value(v, quote_keys) for v in value) + "]"
    return str(value)


def _schema(value: Any) -> str:
    return _value(value, quote_keys=True)


def _arg(value: Any) -> str:
    return _value(value, quote_keys=False)


def _tool_call(fn: dict) -> str:
    """``formatToolCall``: arguments sorted by name."""
    args = fn.get("arguments") if isinstance(fn.get("arguments"), dict) else {}
    body = ",".join(f"{k}:{_arg(args[k])}" for k in sorted(args))
    return f"<|tool_call>call:{fn.get('name', '')}{{{body}}}<tool_call|>"


class ThinkingParser:
    """thinking/parser.go ``Parser``: splits generated text at the inferred thinking tags
    (leading whitespace before and after each tag is eaten)."""

    def __init__(self, opening: str, closing: str) -> None:
        self.opening, self.closing = opening, closing
        self.state = "looking"
        self.acc = ""

    def add(self, content: str) -> tuple[str, str]:
        """``AddContent``: the thinking and the content ``content`` completes."""
        self.acc += content
        thinking, rest = [], []
        more = True
        while more:
            t, r, more = self._eat()
            thinking.append(t)
            rest.append(r)
        return "".join(thinking), "".join(rest)

    def _eat(self) -> tuple[str, str, bool]:
        trimmed = self.acc.lstrip()
        if self.state == "looking":
            if trimmed.startswith(self.opening):
                self.acc = trimmed[len(self.opening) :].lstrip()
                self.state = "thinking" if self.acc else "started"
                return "", "", True
            if self.opening.startswith(trimmed) or not trimmed:
                return "", "", False
            self.state, rest, self.acc = "done", self.acc, ""
            return "", rest, False
        if self.state == "started":
            if not trimmed:
                return "", "", False
            self.state, self.acc = "thinking", trimmed
            return "", "", True
        if self.state == "thinking":
            acc = self.acc
            at = acc.find(self.closing)
            if at >= 0:
                rest = acc[at + len(self.closing) :].lstrip()
                self.acc = ""
                self.state = "done" if rest else "done-eating"
                return acc[:at], rest, False
            keep = next(
                (i for i in range(min(len(self.closing), len(acc)), 0, -1)
                 if acc.endswith(self.closing[:i])),
                0,
            )  # fmt: skip
            self.acc = acc[len(acc) - keep :] if keep else ""
            return acc[: len(acc) - keep], "", False
        if self.state == "done-eating":
            if trimmed:
                self.state = "done"
            self.acc = ""
            return "", trimmed, False
        rest, self.acc = self.acc, ""
        return "", rest, False
