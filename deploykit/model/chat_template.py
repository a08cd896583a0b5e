"""The one chat-template renderer: a model's Jinja template rendered exactly as transformers does.

Everything that renders a conversation through a model's own template (verify's probes and
tokenizer check, quantize's calibration JSONL, family detection, health's render parity, the
trainer, eval and the demo) calls :func:`render`, which is transformers'
``render_jinja_template``: the same sandbox, ``tojson`` (key order kept, no HTML escaping),
``strftime_now`` and ``raise_exception``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.core.errors import InputError


@dataclass(frozen=True)
class ChatSpec:
    """What rendering a model's chat template needs besides the conversation.

    ``add_bos``: whether the tokenizer adds BOS itself when encoding (None: not said).
    ``source``: where the template came from, for messages.
    """

    template: str | None
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool | None = None
    source: str = "the model"

    def require(self, why: str) -> str:
        """The template, or an InputError saying that ``why`` needs one."""
        if not self.template:
            raise InputError(
                f"{self.source} has no chat template {why}", "use a model that has one"
            )
        return self.template


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    **variables: Any,
) -> str:
    """``messages`` through ``template``; ``variables`` are the template's other names
    (``bos_token``, ``eos_token``, ``enable_thinking``, ...). Template errors propagate."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # as apply_chat_template: keys whose value is None are dropped
    conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
    rendered, _ = render_jinja_template(
        conversations=[conversation],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt and not continue_final_message,
        continue_final_message=continue_final_message,
        **variables,
    )
    return rendered[0]


def render_spec(spec: ChatSpec, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """:func:`render` with the spec's template, BOS and EOS."""
    template = spec.require("to render a conversation with")
    kwargs.setdefault("bos_token", spec.bos_token)
    kwargs.setdefault("eos_token", spec.eos_token)
    return render(template, messages, **kwargs)


def render_tokenizer(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """What ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` returns: the
    tokenizer's template with all its special tokens as variables."""
    if not messages:  # as apply_chat_template
        raise ValueError("Cannot apply chat template to an empty conversation.")
    try:
        template = tokenizer.get_chat_template(None, kwargs.get("tools"))
    except ValueError as exc:
        raise InputError(f"the tokenizer has no usable chat template: {exc}") from None
    variables = {**tokenizer.special_tokens_map, **kwargs}
    return render(template, messages, **variables)
