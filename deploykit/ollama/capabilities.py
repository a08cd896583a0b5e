"""Which template Ollama renders a model's prompts with: what deploykit writes must be what runs.

Ollama >= 0.30 (llama-server runner) renders the GGUF's own Jinja ``tokenizer.chat_template``
instead of a Modelfile TEMPLATE when the Jinja template has more capabilities (server/images.go
``shouldPreferChatTemplate``), and a RENDERER beats both. The capability tests are Ollama's
substring tests, reproduced here on the texts:

- Jinja (``chatTemplateCapabilities``): tools if it contains ``tools`` or ``tool_call``;
  thinking if a think-tag pair is in it (thinking/chat_template.go
  ``InferTagsFromChatTemplate``); a tool round trip if it has tools, ``tool_calls`` (or
  ``assistant_tool_call``) and a tool result (``tool_response``, ``tool_results``, a
  ``role == 'tool'`` test, ``ipython``).
- Go TEMPLATE (``goTemplateCapabilities``): tools if it uses ``.Tools``, insert if ``.Suffix``,
  thinking if it prints ``.Thinking`` (Ollama infers the tags around it from the parse tree);
  a round trip if it uses ``.Tools`` and ``.ToolCalls`` and contains ``eq .Role "tool"``,
  ``tool_response`` or ``TOOL_RESULTS``.

Both sides also have ``completion``. Ollama compares the two lists by length first.
"""

from __future__ import annotations

import re

#: The first Ollama that may render the GGUF's template instead of a Modelfile TEMPLATE.
GGUF_TEMPLATE_SINCE = (0, 30, 0)
#: ... and the first that also does so when both have tools and only the GGUF's has a round trip.
ROUND_TRIP_SINCE = (0, 30, 11)
_THINK_TAGS = (
    ("<think>", "</think>"),
    ("<|channel>", "<channel|>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
    ("<seed:think>", "</seed:think>"),
)
_TOOL_RESULTS = (
    "tool_response",
    "tool_results",
    "role'] == 'tool'",
    'role\'] == "tool"',
    "role\"] == 'tool'",
    'role"] == "tool"',
    "message.role == 'tool'",
    'message.role == "tool"',
    "ipython",
)


def _field(template: str, name: str) -> bool:
    return re.search(rf"\.{name}\b", template) is not None


def jinja_capabilities(chat_template: str) -> set[str]:
    """What Ollama reads a GGUF's Jinja chat template as supporting."""
    if not chat_template:
        return set()
    caps = {"completion"}
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.add("tools")
    tags = any(o in chat_template and c in chat_template for o, c in _THINK_TAGS)
    split = any(f"content.split({q}{c}{q})" in chat_template for _, c in _THINK_TAGS for q in "'\"")
    if tags or split:
        caps.add("thinking")
    return caps


def jinja_round_trip(chat_template: str) -> bool:
    if "tools" not in chat_template and "tool_call" not in chat_template:
        return False
    calls = "tool_calls" in chat_template or "assistant_tool_call" in chat_template
    return calls and any(s in chat_template for s in _TOOL_RESULTS)


def go_capabilities(template: str) -> set[str]:
    """What Ollama reads a Go TEMPLATE as supporting."""
    caps = {"completion"}
    if _field(template, "Tools"):
        caps.add("tools")
    if _field(template, "Suffix"):
        caps.add("insert")
    if _field(template, "Thinking"):
        caps.add("thinking")
    return caps


def go_round_trip(template: str) -> bool:
    if not (_field(template, "Tools") and _field(template, "ToolCalls")):
        return False
    return any(s in template for s in ('eq .Role "tool"', "tool_response", "TOOL_RESULTS"))


def gguf_template_wins(
    template: str, chat_template: str, version: tuple[int, ...] = ROUND_TRIP_SINCE
) -> str | None:
    """Why Ollama ``version`` (>= 0.30; default: every rule) would render ``chat_template``
    (the GGUF's) instead of the Modelfile ``template``, or None when the TEMPLATE is what runs
    (``shouldPreferChatTemplate``)."""
    if version < GGUF_TEMPLATE_SINCE:
        return None
    if not chat_template:
        return None
    jinja, go = jinja_capabilities(chat_template), go_capabilities(template)
    if len(jinja) > len(go):
        if not go_round_trip(template) or jinja_round_trip(chat_template):
            extra = ", ".join(sorted(jinja - go)) or "more capabilities"
            return f"the GGUF's chat template has {extra}, which the TEMPLATE lacks"
        return None
    same_tools = jinja == go and "tools" in go and version >= ROUND_TRIP_SINCE
    if same_tools and jinja_round_trip(chat_template) and not go_round_trip(template):
        return "the GGUF's chat template has a tool round trip (results), the TEMPLATE not"
    return None
