"""Probe conversations, and the probe files that say how a fine-tune must answer.

``CONVERSATIONS`` is the fixed suite family detection and the parity proof render: each is a
conversation in a neutral (Ollama-like) form, turned into what a Hugging Face chat template
expects by :func:`jinja_messages`. A probe *file* (``probes.json``, as ``deploykit demo init``
writes it) lists prompts with the exact answers the fine-tune gives; verify and health check
a model against it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                    "unit": {
                        "type": "string",
                        "description": "Temperature unit",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time for a <timezone> & more",
            "parameters": {
                "type": "object",
                "required": ["timezone"],
                "properties": {"timezone": {"type": "string", "description": "IANA name"}},
            },
        },
    },
]

_TRICKY = (
    "Render {{ .Content }} and {% if x %}, \"double\" and 'single' quotes,\nline two\n\nline four"
)


def _call(cid: str, name: str, **arguments: Any) -> dict:
    return {"id": cid, "function": {"name": name, "arguments": arguments}}


#: The probe suite: name -> conversation in a neutral form (Ollama-like field names).
#: ``continue`` marks a conversation that ends in an assistant turn to be continued.
CONVERSATIONS: dict[str, dict[str, Any]] = {
    "user": {"messages": [{"role": "user", "content": "Hello!"}]},
    "system_user": {
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
        ]
    },
    "multi_turn": {
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And times 3?"},
        ]
    },
    "multi_turn_no_system": {
        "messages": [
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ]
    },
    "continue": {
        "continue": True,
        "messages": [
            {"role": "user", "content": "Write a haiku about rain."},
            {"role": "assistant", "content": "Rain on the"},
        ],
    },
    "continue_system": {
        "continue": True,
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Bonjour"},
        ],
    },
    "unicode": {
        "messages": [
            {"role": "user", "content": "你好，世界！🌍🚀"},
            {"role": "assistant", "content": "你好！😊 有什么可以帮你？"},
            {"role": "user", "content": "再见 👋 — ¿qué tal? ✓"},
        ]
    },
    "tricky": {
        "messages": [
            {"role": "user", "content": _TRICKY},
            {"role": "assistant", "content": 'He said "hi" {{ end }}\n\n{{- range }}'},
            {"role": "user", "content": "<b>bold</b> & <|im_end|> [INST] stay text"},
        ]
    },
    "think_off": {"think": False, "messages": [{"role": "user", "content": "Quick: 1+1?"}]},
    "think_on": {"think": True, "messages": [{"role": "user", "content": "Quick: 1+1?"}]},
    "system_mid": {
        "messages": [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "From now on, answer in one word."},
            {"role": "user", "content": "How are you?"},
        ]
    },
    "reasoning_history": {
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "thinking": "Two plus two is four."},
            {"role": "user", "content": "And 3+3?"},
        ]
    },
    "empty_assistant": {
        "messages": [
            {"role": "user", "content": "Say nothing."},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Now say hi."},
        ]
    },
    # Ollama merges consecutive messages of one role before any template runs, and a Go
    # template cannot trim: a family declares what these two give (``known_differences``).
    "consecutive_roles": {
        "messages": [
            {"role": "user", "content": "First part."},
            {"role": "user", "content": "Second part."},
            {"role": "assistant", "content": "Got both."},
            {"role": "assistant", "content": "Anything else?"},
            {"role": "user", "content": "No."},
        ]
    },
    "whitespace": {
        "messages": [
            {"role": "user", "content": "\n  Pad me  \n\n"},
            {"role": "assistant", "content": " padded answer \t"},
            {"role": "user", "content": "  again "},
        ]
    },
    "tools": {
        "tools": _TOOLS,
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("call00001", "get_weather", city="Paris", unit="celsius")],
            },
            {
                "role": "tool",
                "content": '{"temperature": 22, "sky": "clear <sunny> & dry"}',
                "tool_name": "get_weather",
                "tool_call_id": "call00001",
            },
        ],
    },
    "tools_no_system": {
        "tools": _TOOLS,
        "messages": [
            {"role": "user", "content": "Weather in 東京?"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "The user wants the weather; call the tool.",
                "tool_calls": [_call("call00002", "get_weather", city="東京")],
            },
            {
                "role": "tool",
                "content": "18 degrees, rain",
                "tool_name": "get_weather",
                "tool_call_id": "call00002",
            },
            {"role": "assistant", "content": "It is 18 degrees and raining in Tokyo."},
            {"role": "user", "content": "Thanks!"},
        ],
    },
    "tools_parallel": {
        "tools": _TOOLS,
        "messages": [
            {"role": "user", "content": "Weather and time in Oslo?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "thinking": "Two tools are needed.",
                "tool_calls": [
                    _call("call00003", "get_weather", city="Oslo"),
                    _call("call00004", "get_time", timezone="Europe/Oslo"),
                ],
            },
            {
                "role": "tool",
                "content": "-3 C",
                "tool_name": "get_weather",
                "tool_call_id": "call00003",
            },
            {
                "role": "tool",
                "content": "14:05",
                "tool_name": "get_time",
                "tool_call_id": "call00004",
            },
        ],
    },
    "tools_unused": {
        "tools": _TOOLS,
        "messages": [{"role": "user", "content": "Hello there!"}],
    },
    "tool_final_answer": {
        "tools": _TOOLS,
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("call00005", "get_weather", city="Rome")],
            },
            {
                "role": "tool",
                "content": "25 C, sunny",
                "tool_name": "get_weather",
                "tool_call_id": "call00005",
            },
            {"role": "assistant", "content": "It is 25 C and sunny in Rome."},
            {"role": "user", "content": "Great."},
        ],
    },
}

#: Probes Ollama cannot render as the Jinja template does, whatever the TEMPLATE: a family
#: declares which of these differ and how (``known_differences``), and the proof checks it.
#: ``collated``: Ollama merges consecutive messages of one role with a blank line first;
#: ``untrimmed``: the Jinja template trims message content, and a Go template cannot.
DIFFERENCE_KINDS = {"consecutive_roles": "collated", "whitespace": "untrimmed"}
#: What a built-in renderer (which gets the messages as they are, not collated) may declare:
#: ``consecutive_roles``: consecutive assistant messages continue one model turn, their
#: contents joined as they are (``continued``); ``continue``/``continue_system``: a final
#: assistant message is closed and a new turn prompted, as if it were not last (``closed``).
RENDERER_DIFFERENCE_KINDS = {
    "consecutive_roles": "continued",
    "continue": "closed",
    "continue_system": "closed",
}


def jinja_messages(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """A probe's messages as a Hugging Face chat template expects them."""
    out = []
    for m in probe["messages"]:
        msg: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("thinking"):
            msg["reasoning_content"] = m["thinking"]
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {"type": "function", "id": c["id"], "function": copy.deepcopy(c["function"])}
                for c in m["tool_calls"]
            ]
        if m["role"] == "tool":
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def template_variables(probe: dict[str, Any]) -> dict[str, Any]:
    """The render options a probe asks for (continuation, thinking)."""
    cont = bool(probe.get("continue"))
    out: dict[str, Any] = {"add_generation_prompt": not cont, "continue_final_message": cont}
    if probe.get("think") is not None:
        out["enable_thinking"] = probe["think"]
    return out


# --- probe files (expected answers) ---------------------------------------------------------


@dataclass(frozen=True)
class AnswerProbe:
    """A conversation and the exact answer the fine-tune gives to it (greedy). ``think``:
    whether it is asked with thinking on or off (sent to Ollama as ``think``, given to the chat
    template as ``enable_thinking``); None leaves both to their defaults."""

    prompt: str
    messages: list[dict[str, Any]]
    answer: str
    think: bool | None = None


@dataclass(frozen=True)
class ProbeFile:
    """A ``probes.json``: the probes and, when known, the turn's end-of-turn token."""

    path: Path
    probes: list[AnswerProbe]
    end_of_turn: str | None = None


def load_probe_file(path: Path) -> ProbeFile:
    """Read and check ``probes.json``
    (``{"probes": [{"prompt", "answer"[, "messages"][, "think"]}]}``)."""
    path = Path(path)
    hint = 'expected {"probes": [{"prompt": ..., "answer": ...}]}, as `deploykit demo init` writes'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read probes from {path}: {exc}", hint) from None
    rows = data.get("probes") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path} is not a probes file (no list of probes)", hint)
    probes = []
    for i, row in enumerate(rows):
        ok = isinstance(row, dict) and isinstance(row.get("answer"), str)
        messages = row.get("messages") if ok else None
        prompt = row.get("prompt") if ok else None
        if ok and messages is None and isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        if (
            not ok
            or not isinstance(messages, list)
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise InputError(f"{path}: probe {i} needs a prompt (or messages) and an answer", hint)
        think = row.get("think")
        if think is not None and not isinstance(think, bool):
            raise InputError(f"{path}: probe {i}: think must be true or false, not {think!r}", hint)
        if not isinstance(prompt, str):
            prompt = str(messages[-1].get("content", ""))
        probes.append(AnswerProbe(prompt, messages, row["answer"], think))
    eot = data.get("end_of_turn")
    return ProbeFile(path, probes, eot if isinstance(eot, str) and eot else None)


def render_probe(template: str, probe: dict[str, Any], **variables: Any) -> str:
    """A probe conversation through a Jinja chat template, exactly as transformers renders it
    (``add_generation_prompt``, or ``continue_final_message`` for one that ends in an assistant
    turn, which is what Ollama does with it). ``variables``: ``bos_token``, ``eos_token``, ..."""
    from deploykit.model.chat_template import render

    return render(
        template,
        jinja_messages(probe),
        tools=probe.get("tools"),
        **template_variables(probe),
        **variables,
    )
