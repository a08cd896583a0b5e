"""The one chat-template renderer: a model's Jinja template rendered exactly as transformers does.

Everything that renders a conversation through a model's own template (verify's probes and
tokenizer check, quantize's calibration JSONL, family detection, health's render parity, the
trainer, eval and the demo) calls :func:`render`, which is transformers'
``render_jinja_template``: the same sandbox, ``tojson`` (key order kept, no HTML escaping),
``strftime_now`` and ``raise_exception``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deploykit.core.errors import InputError

#: Bounds on rendering model-supplied Jinja (a template is code from outside): seconds per
#: render and characters of output. ``DEPLOYKIT_TEMPLATE_TIMEOUT`` and
#: ``DEPLOYKIT_TEMPLATE_MAX_CHARS`` change them.
TIMEOUT_ENV, MAX_CHARS_ENV = "DEPLOYKIT_TEMPLATE_TIMEOUT", "DEPLOYKIT_TEMPLATE_MAX_CHARS"
DEFAULT_TIMEOUT, DEFAULT_MAX_CHARS = 10.0, 1_000_000


class TemplateBoundError(InputError):
    """A chat template took too long or wrote too much (it is refused, not waited for)."""


def _bound(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise InputError(f"{name} must be a number", f"e.g. {name}={default:g}") from None
    return value if value > 0 else default


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TemplateBoundError in the block after ``seconds`` (main thread only: signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TemplateBoundError(
            f"the chat template took longer than {seconds:g} s to render",
            f"the template loops too much; if it is right, raise {TIMEOUT_ENV}",
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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


@contextlib.contextmanager
def _out_of_memory() -> Iterator[None]:
    """A template that asks for more memory than there is (``'x' * 10**12``) is refused."""
    try:
        yield
    except MemoryError:
        raise TemplateBoundError(
            "the chat template ran out of memory while rendering", "the template is broken"
        ) from None


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
    (``bos_token``, ``eos_token``, ``enable_thinking``, ...). Template errors propagate; a
    render that takes too long or writes too much is a TemplateBoundError."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # as apply_chat_template: keys whose value is None are dropped
    conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
    with _time_limit(_bound(TIMEOUT_ENV, DEFAULT_TIMEOUT)), _out_of_memory():
        rendered, _ = render_jinja_template(
            conversations=[conversation],
            tools=tools,
            chat_template=template,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
            **variables,
        )
    limit = int(_bound(MAX_CHARS_ENV, DEFAULT_MAX_CHARS))
    if len(rendered[0]) > limit:
        raise TemplateBoundError(
            f"the chat template wrote {len(rendered[0]):,} characters (at most {limit:,})",
            f"the template is broken; if it is right, raise {MAX_CHARS_ENV}",
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
