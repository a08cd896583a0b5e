"""Chat-template families (data in ``modelfile_templates/``) and exact-match family detection.

A family is two files: ``<name>.Modelfile.j2`` (extends ``_base.Modelfile.j2``; its
``template`` block holds the Ollama TEMPLATE) and ``<name>.toml`` (stop strings, default system
prompt, default sampling parameters, the upstream Jinja chat templates it reproduces).

Detection renders a fixed set of probe conversations with the model's own Jinja chat template
and with each family's reference templates, the way transformers does, and picks the family
whose reference renders *every* probe identically (an error counts as an outcome too). There
is no nearest match: a template that matches no family is reported as such.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import InputError
from .paths import PROJECT_ROOT, VENDORED_LLAMA_CPP

TEMPLATES_DIR = PROJECT_ROOT / "modelfile_templates"
BASE_TEMPLATE = "_base.Modelfile.j2"

_HINT_FAMILIES = "run `deploykit templates list` to see the families"


@dataclass(frozen=True)
class Family:
    """One chat-template family, as described by its data files."""

    name: str
    description: str
    references: tuple[str, ...]
    stop: tuple[str, ...]
    default_system: str | None
    tools: bool
    thinking: bool
    system_role: bool
    min_ollama: str
    bos_token: str
    eos_token: str
    runtime_bos: bool
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def modelfile_template(self) -> str:
        """The Jinja2 file (relative to ``modelfile_templates/``) that renders the Modelfile."""
        return f"{self.name}.Modelfile.j2"

    def go_template(self) -> str:
        """The family's Ollama TEMPLATE text (the ``template`` block of its Jinja2 file)."""
        tmpl = environment().get_template(self.modelfile_template)
        block = tmpl.blocks["template"]
        return "".join(block(tmpl.new_context({})))

    def reference_paths(self, llama_cpp: Path | None = None) -> list[Path]:
        """The reference Jinja chat templates (upstream files) this family reproduces."""
        return [reference_path(name, llama_cpp) for name in self.references]


def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment Modelfiles are rendered in (undefined names are errors)."""
    return _environment()


@cache
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def reference_path(name: str, llama_cpp: Path | None = None) -> Path:
    """``modelfile_templates/references/NAME.jinja``, else llama.cpp's ``models/templates/``."""
    local = TEMPLATES_DIR / "references" / f"{name}.jinja"
    if local.is_file():
        return local
    return (llama_cpp or VENDORED_LLAMA_CPP) / "models" / "templates" / f"{name}.jinja"


@cache
def families() -> dict[str, Family]:
    """Every family in ``modelfile_templates/``, by name."""
    out: dict[str, Family] = {}
    for meta in sorted(TEMPLATES_DIR.glob("*.toml"), key=lambda p: p.stem):
        name = meta.stem
        data = tomllib.loads(meta.read_text(encoding="utf-8"))
        if not (TEMPLATES_DIR / f"{name}.Modelfile.j2").is_file():
            raise InputError(f"family {name} has metadata but no {name}.Modelfile.j2")
        out[name] = Family(
            name=name,
            description=data["description"],
            references=tuple(data.get("references", ())),
            stop=tuple(data.get("stop", ())),
            default_system=data.get("default_system"),
            tools=bool(data.get("tools", False)),
            thinking=bool(data.get("thinking", False)),
            system_role=bool(data.get("system_role", True)),
            min_ollama=data.get("min_ollama", "0.5.5"),
            bos_token=data.get("bos_token", ""),
            eos_token=data.get("eos_token", ""),
            runtime_bos=bool(data.get("runtime_bos", False)),
            parameters=dict(data.get("parameters", {})),
        )
    return out


def get(name: str) -> Family:
    """The family called ``name`` (InputError listing the known ones otherwise)."""
    fams = families()
    if name not in fams:
        raise InputError(
            f"unknown template family {name!r} (known: {', '.join(fams)})", _HINT_FAMILIES
        )
    return fams[name]


# --- probe conversations -------------------------------------------------------------------

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
PROBES: dict[str, dict[str, Any]] = {
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


def render_jinja(
    chat_template: str,
    probe: dict[str, Any],
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render ``probe`` with a Jinja chat template exactly as transformers does.

    ``add_generation_prompt=True``, or ``continue_final_message=True`` for a conversation that
    ends in an assistant turn (what Ollama does with one). Template errors propagate.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    cont = bool(probe.get("continue"))
    kwargs: dict[str, Any] = {"bos_token": bos_token, "eos_token": eos_token}
    if probe.get("think") is not None:
        kwargs["enable_thinking"] = probe["think"]
    rendered, _ = render_jinja_template(
        conversations=[jinja_messages(probe)],
        tools=probe.get("tools"),
        chat_template=chat_template,
        add_generation_prompt=not cont,
        continue_final_message=cont,
        **kwargs,
    )
    return rendered[0]


def _outcome(chat_template: str, probe: dict[str, Any], bos: str, eos: str) -> str:
    try:
        return "ok:" + render_jinja(chat_template, probe, bos_token=bos, eos_token=eos)
    except Exception as exc:  # a template's raise_exception, a missing field, ...
        return f"error:{exc.__class__.__name__}"


def fingerprint(chat_template: str, bos_token: str = "", eos_token: str = "") -> tuple[str, ...]:
    """The outcome of every probe rendered with ``chat_template``: text, or the error class."""
    return tuple(_outcome(chat_template, p, bos_token, eos_token) for p in PROBES.values())


def detect(
    chat_template: str, *, bos_token: str = "", eos_token: str = "", llama_cpp: Path | None = None
) -> tuple[Family, str]:
    """The family one of whose reference templates renders every probe exactly as
    ``chat_template`` does; returns ``(family, reference name)``. InputError if none does."""
    if not chat_template.strip():
        raise InputError(
            "the model has no chat template to detect a family from",
            "pass --family NAME or --template-file FILE",
        )
    refs = [
        (fam, ref, path.read_text(encoding="utf-8"))
        for fam in families().values()
        for ref, path in zip(fam.references, fam.reference_paths(llama_cpp), strict=True)
        if path.is_file()
    ]
    for fam, ref, source in refs:  # the very same text: no need to render
        if source == chat_template:
            return fam, ref
    mine = fingerprint(chat_template, bos_token, eos_token)
    if all(o.startswith("error:") for o in mine):
        raise InputError(
            "the model's chat template fails on every probe conversation",
            "pass --family NAME or --template-file FILE",
        )
    for fam, ref, source in refs:
        if fingerprint(source, bos_token, eos_token) == mine:
            return fam, ref
    raise InputError(
        "the model's chat template matches no known family exactly on the probe conversations",
        "pass --family NAME (see `deploykit templates list`) or --template-file FILE",
    )
