"""Post-deploy health check: is the model in Ollama really the fine-tune, answering as it should?

:func:`check` returns a :class:`Report` (its failure is a ``HealthCheckError``, exit 9); the
CLI prints it like any other report. With a reference model, *render parity* renders the whole
probe suite (``probes.CONVERSATIONS``) through the server (``_debug_render_only``) and compares
each prompt with the model's own Jinja chat template, by the rules of the CI parity proof
(:mod:`deploykit.ollama.proof`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploykit.core.errors import HealthCheckError, InputError, OllamaError
from deploykit.core.report import FAIL, PASS, SKIP, Check, Report
from deploykit.model.chat_template import ChatSpec, TemplateBoundError
from deploykit.model.probes import CONVERSATIONS, load_probe_file, render_probe
from deploykit.ollama import capabilities, families
from deploykit.ollama.client import Client
from deploykit.ollama.names import (
    MIN_VERSION,
    RENDER_ONLY_SINCE,
    format_version,
    server_version,
    with_tag,
)
from deploykit.ollama.params import parse_show
from deploykit.ollama.proof import canonical_json_spans, collated, continued, trimmed
from deploykit.ollama.render import model_chat

GREEDY = {"temperature": 0, "top_k": 1, "seed": 0, "num_predict": 64}
HINT = "see the report above; redeploy with the right template/Modelfile"
#: Characters of context a differing probe shows on each side of the first difference.
DIFF_CONTEXT = 40
#: How Ollama refuses a request the model cannot serve (400, server/routes.go ChatHandler).
REFUSED_FOR_MODEL = re.compile(r"does not support (tools|thinking)$")


def check(
    name: str,
    host: str | None = None,
    probes: Path | None = None,
    reference: Path | None = None,
    timeout: float = 120.0,
) -> Report:
    """Run every check against model ``name``. ``timeout`` bounds each request, and the render
    parity probes together."""
    report = Report("health", name, extra={"model": name}, error=HealthCheckError, hint=HINT)
    # read local inputs first: a bad --reference or --probes fails before any request
    spec = model_chat(Path(reference), records=False).spec if reference is not None else None
    answers = load_probe_file(Path(probes)).probes if probes is not None else []
    with Client(host, timeout=timeout) as client:
        report.extra["host"] = client.host
        version = client.version()
        report.extra["version"] = version
        need = format_version(MIN_VERSION)
        report.add(
            Check.of(
                "server version",
                server_version(version) >= MIN_VERSION,
                f"{version} (need >= {need})",
            )
        )
        listed = {str(m.get("name", "")).lower() for m in client.tags()}
        report.add(
            Check.of("listed", with_tag(name).lower() in listed, f"in /api/tags: {sorted(listed)}")
        )
        try:
            show = client.show(name)
        except OllamaError as exc:
            report.add(Check.of("show", False, exc.message))
            return report
        _show_checks(report, show)
        _smoke_check(report, client, name)
        if spec is not None:
            for c in render_parity(client, name, spec, show, version, timeout):
                report.add(c)
        for probe in answers:
            body = {"model": name, "messages": probe.messages, "options": GREEDY}
            if probe.think is not None:
                body["think"] = probe.think
            message = client.chat(body)["message"]
            answer = message.get("content") or ""
            thinking = (message.get("thinking") or "").strip()
            report.add(
                Check.of(
                    f"probe {probe.prompt[:30]!r}",
                    (thinking, answer) in replies(probe.answer),
                    f"expected {probe.answer!r}, got {answer!r}"
                    + (f" (thinking {thinking!r})" if thinking else ""),
                )
            )
    return report


def replies(answer: str) -> list[tuple[str, str]]:
    """The ``(thinking, content)`` replies that are ``answer`` as the model wrote it: the text
    itself, or, when it holds a ``</think>``, as Ollama's thinking parser (thinking on, tags
    inferred from the TEMPLATE) splits it: thinking before the tag, content after it, the
    whitespace around each tag eaten."""
    out = [("", answer)]
    before, tag, after = answer.partition("</think>")
    if tag:
        thinking = before.strip().removeprefix("<think>").strip()
        out.append((thinking, after.lstrip()))
    return out


def _show_checks(report: Report, show: dict) -> None:
    """Template, stops and tools. A model with a built-in RENDERER has no TEMPLATE to check:
    Ollama renders its prompts in code (render parity proves them), and its PARSER ends the
    turn and extracts tool calls."""
    template = show.get("template") or ""
    renderer, parser = show.get("renderer") or "", show.get("parser") or ""
    prompt_only = template.strip() == "{{ .Prompt }}"
    if renderer:
        report.add(Check.of("template", True, f"Ollama's built-in renderer {renderer!r}"))
    else:
        report.add(
            Check.of(
                "template",
                bool(template.strip()) and not prompt_only,
                "template is {{ .Prompt }}: the model will ramble"
                if prompt_only
                else "a real chat template",
            )
        )
    stops = parse_show(show.get("parameters") or "").get("stop") or []
    if stops or not parser:
        report.add(
            Check.of(
                "stop parameters",
                bool(stops),
                "; ".join(f'"{s}"' for s in stops)
                or "no stop parameter: generation may run past the end of turn",
            )
        )
    else:
        report.add(
            Check.of("stop parameters", True, f"none: Ollama's built-in parser {parser!r} does it")
        )
    if ".Tools" in template:
        caps = show.get("capabilities") or []
        report.add(Check.of("tools capability", "tools" in caps, f"capabilities: {caps}"))


def _smoke_check(report: Report, client: Client, name: str) -> None:
    started = time.monotonic()
    smoke = client.chat(
        {
            "model": name,
            "messages": [{"role": "user", "content": "Hello!"}],
            "options": {"num_predict": 32, "temperature": 0},
        }
    )
    text = smoke["message"]["content"]
    leaked = [t for t in families.control_tokens() if t in text]
    report.add(
        Check.of(
            "smoke chat",
            bool(text.strip()) and not leaked,
            f"{len(text)} chars in {time.monotonic() - started:.1f}s"
            + (f"; leaked control tokens {leaked}" if leaked else ""),
        )
    )
    if smoke.get("eval_count") and smoke.get("eval_duration"):
        report.extra["tokens_per_second"] = round(
            smoke["eval_count"] / smoke["eval_duration"] * 1e9, 1
        )


# --- render parity: the whole probe suite through the server ----------------------------------


def _model_messages(show: dict, probe: dict) -> list[dict]:
    """What the server puts before ``probe``'s messages (server/routes.go ChatHandler): the
    model's SYSTEM when the request does not start with a system message, then its MESSAGE
    lines."""
    system = show.get("system") or ""
    messages = [
        {"role": str(m.get("role") or "").lower(), "content": str(m.get("content") or "")}
        for m in show.get("messages") or []
        if isinstance(m, dict)
    ]
    first = probe["messages"][0]["role"] if probe["messages"] else ""
    prepend = bool(system) and first != "system"
    return ([{"role": "system", "content": system}] if prepend else []) + messages


def deployed_family(show: dict, spec: ChatSpec) -> families.Family | None:
    """The family whose comparison allowances apply: the one whose TEMPLATE (or renderer) is
    what the server runs, else the one the reference's chat template is detected as."""
    fams = families.families()
    renderer, template = show.get("renderer") or "", show.get("template") or ""
    for fam in fams.values():
        if (renderer and fam.renderer == renderer) or (
            not renderer and template and fam.template == template
        ):
            return fam
    if not spec.template:
        return None
    try:
        return families.detect(spec.template, bos_token=spec.bos_token, eos_token=spec.eos_token)[0]
    except InputError:
        return None


@contextlib.contextmanager
def jinja_today(day: dt.date) -> Iterator[None]:
    """Render Jinja templates as if today were ``day`` (their ``strftime_now``).

    The server prints *its* date (Go ``currentDate``), which differs from ours across a time
    zone or midnight; transformers' ``strftime_now`` reads ``datetime.now()`` of its module.
    """
    import transformers.utils.chat_template_utils as chat_utils

    real = chat_utils.datetime

    class _Day(real):
        @classmethod
        def now(cls, tz=None):
            return real.combine(day, real.now(tz).time(), tzinfo=tz)

    chat_utils.datetime = _Day
    try:
        yield
    finally:
        chat_utils.datetime = real


def _first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def short_diff(got: str, want: str) -> str:
    """Where the server's prompt first differs from the template's, with some context."""
    at = _first_difference(got, want)
    lo, hi = max(0, at - DIFF_CONTEXT // 2), at + DIFF_CONTEXT
    line = got.count("\n", 0, at) + 1
    return f"differs at char {at} (line {line}): server {got[lo:hi]!r} vs template {want[lo:hi]!r}"


def _result(probe: str, result: str, detail: str) -> dict[str, str]:
    return {"probe": probe, "result": result, "detail": detail}


def _jinja(spec: ChatSpec, conversation: dict[str, Any], day: dt.date | None = None) -> str:
    with jinja_today(day) if day else contextlib.nullcontext():
        return render_probe(
            str(spec.template), conversation, bos_token=spec.bos_token, eos_token=spec.eos_token
        )


def _comparable(text: str, spec: ChatSpec, spans: list, bos: bool) -> str:
    """``text`` as compared: without a leading BOS unless ``bos``, JSON spans canonical."""
    b = spec.bos_token
    if b and not bos and spec.add_bos is not False and text.startswith(b):
        text = text[len(b) :]  # the runner adds BOS when tokenizing; the prompt has none
    return canonical_json_spans(text, spans) if spans else text


def _outcome(
    client: Client,
    name: str,
    spec: ChatSpec,
    show: dict,
    fam,
    probe_name: str,
    probe: dict,
    thinks: bool | None = False,
) -> dict[str, str]:
    """One probe: rendered by the Jinja template (first: it may reject it) and the server.
    ``thinks``: the server turns thinking on for a request without ``think`` (a thinking model
    with a TEMPLATE), so the Jinja side renders that probe with thinking on too; None: the
    server's built-in renderer picks its own default (which differs between renderers and
    Ollama releases), so that probe matches the Jinja render with thinking on or off, and the
    result names which."""
    differences = fam.known_differences if fam else []
    conversation = {**probe, "messages": _model_messages(show, probe) + probe["messages"]}
    either = thinks is None and probe.get("think") is None
    if thinks and probe.get("think") is None:
        conversation["think"] = True
    declared = probe_name in differences
    if declared and fam.renderer:  # the renderer's own ways (RENDERER_DIFFERENCE_KINDS)
        if probe_name == "consecutive_roles":
            conversation = continued(conversation)
        else:  # continue, continue_system: the final assistant message is closed
            conversation = {**conversation, "continue": False}
    elif declared and probe_name == "consecutive_roles":
        conversation = collated(conversation)  # Ollama merges them; so does this Jinja input
    try:
        want = _jinja(spec, conversation)
    except TemplateBoundError:
        raise
    except Exception as exc:  # raise_exception, a missing field, ...
        why = f"the model's chat template rejects it ({type(exc).__name__}: {exc})"
        return _result(probe_name, "skipped", _one_line(why))
    sent = trimmed(probe) if probe_name == "whitespace" and probe_name in differences else probe
    body: dict[str, Any] = {"model": name, "messages": sent["messages"]}
    for key in ("tools", "think"):
        if sent.get(key) is not None:
            body[key] = sent[key]
    try:
        got = client.render(body)
    except OllamaError as exc:
        if REFUSED_FOR_MODEL.search(exc.message):  # a server that does not list capabilities
            return _result(probe_name, "skipped", f"the server refuses it: {exc.message}")
        return _result(probe_name, "error", f"the server refused it: {exc.message}")
    spans = fam.spans if fam and probe.get("tools") else []
    bos = bool(spec.bos_token) and got.startswith(spec.bos_token)
    got, want = _comparable(got, spec, spans, bos), _comparable(want, spec, spans, bos)
    if got != want and "strftime_now" in str(spec.template):  # the server's day may not be ours
        today = dt.date.today()
        for day in (today - dt.timedelta(days=1), today + dt.timedelta(days=1)):
            if got == _comparable(_jinja(spec, conversation, day), spec, spans, bos):
                return _result(probe_name, "ok", f"identical (the server's date is {day})")
    if got == want:
        return _result(probe_name, "ok", "as declared" if declared else "identical")
    if either:  # the renderer's default may be thinking on or off: name the one that matched
        for on in (True, False):
            try:
                other = _jinja(spec, {**conversation, "think": on})
            except TemplateBoundError:
                raise
            except Exception:
                continue
            if got == _comparable(other, spec, spans, bos):
                state = "on" if on else "off"
                return _result(
                    probe_name, "ok", f"identical (the renderer's default: thinking {state})"
                )
    return _result(probe_name, "differs", short_diff(got, want))


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def render_parity(
    client: Client,
    name: str,
    spec: ChatSpec,
    show: dict,
    version: str,
    timeout: float = 120.0,
    probes: dict[str, dict[str, Any]] | None = None,
) -> list[Check]:
    """Render every probe (default ``CONVERSATIONS``) through the server and compare each with
    the model's own chat template: one ``render parity`` check (its data lists every probe as
    ``ok``, ``differs``, ``error`` or ``skipped``, with why) and one failing check per probe that
    differs. One request per probe; together they stop after ``timeout`` seconds, and after the
    server refuses two probes in a row with the same error.

    The rules are the CI parity proof's: identical text, except JSON spans the family declares
    (compared parsed, probes with tools only), probes the Jinja template itself rejects
    (skipped) and the family's ``known_differences`` (consecutive_roles: the Jinja of the
    collated conversation; whitespace: the server is sent trimmed content). What the server adds
    (SYSTEM, MESSAGE lines) is added on the Jinja side too; a BOS the tokenizer adds at run time
    is not in the server's prompt; Jinja's date is retried as the day before and after ours.
    Probes Ollama refuses for this model (tools without the tools capability, ``think: true``
    without thinking) are skipped.
    """
    title = "render parity"
    if server_version(version) < RENDER_ONLY_SINCE:
        return [Check(title, SKIP, f"Ollama {version} cannot render a prompt on request")]
    if not spec.template:
        return [Check.of(title, False, f"{spec.source} has no chat template to compare")]
    fam = deployed_family(show, spec)
    listed = show.get("capabilities")
    caps = listed if isinstance(listed, list) else ["tools", "thinking"]  # then the server says
    results: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    stop = None
    own = capabilities.jinja_capabilities(str(spec.template))
    for probe_name, probe in (CONVERSATIONS if probes is None else probes).items():
        lost = next((c for c in ("tools", "thinking") if c in own and c not in caps), None)
        needs = "tools" if probe.get("tools") else "thinking" if probe.get("think") else None
        if needs and needs not in caps:
            refused = "a request with tools" if needs == "tools" else "think=true"
            why = f"the model has no {needs} capability: Ollama refuses {refused}"
            if needs == lost:  # the fine-tune has it: the deployed model lost it
                why = f"the model's own chat template has {needs}, the deployed model not"
                results.append(_result(probe_name, "differs", why))
                continue
        elif stop or time.monotonic() > deadline:  # a probe not compared is not a pass
            why = stop or f"the render checks ran past the {timeout:g}s timeout"
            results.append(_result(probe_name, "error", f"not tried: {why}"))
            continue
        else:
            thinks = None if show.get("renderer") and "thinking" in caps else "thinking" in caps
            outcome = _outcome(client, name, spec, show, fam, probe_name, probe, thinks)
            last = next((r for r in reversed(results) if r["result"] != "skipped"), None)
            if outcome["result"] == "error" and last and last["detail"] == outcome["detail"]:
                stop = "the server refused the two probes before it the same way"
            results.append(outcome)
            continue
        results.append(_result(probe_name, "skipped", why))
    failed = [
        Check.of(f"{title}: {r['probe']}", False, r["detail"])
        for r in results
        if r["result"] in ("differs", "error")
    ]
    return [_summary(title, results, fam), *failed]


def _summary(title: str, results: list[dict[str, str]], fam: families.Family | None) -> Check:
    by = {k: [r["probe"] for r in results if r["result"] == k] for k in ("ok", "skipped")}
    bad = [r["probe"] for r in results if r["result"] in ("differs", "error")]
    skipped = by["skipped"]
    more = f", {len(skipped)} skipped ({', '.join(skipped)})" if skipped else ""
    data = {"family": fam.name if fam else None, "probes": results}
    if bad:
        detail = f"{len(bad)} of {len(results)} probes differ or fail: {', '.join(bad)}{more}"
        return Check(title, FAIL, detail, data)
    if not by["ok"]:
        return Check(title, FAIL, f"no probe could be compared{more}", data)
    detail = f"{len(by['ok'])} probes render as the model's own chat template{more}"
    return Check(title, PASS, detail, data)
