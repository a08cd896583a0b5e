"""Post-deploy health check: is the model in Ollama really the fine-tune, answering as it should?

:func:`check` returns a :class:`Report` (its failure is a ``HealthCheckError``, exit 9); the
CLI prints it like any other report.
"""

from __future__ import annotations

import time
from pathlib import Path

from deploykit.core.errors import DeploykitError, HealthCheckError, OllamaError
from deploykit.core.report import SKIP, Check, Report
from deploykit.model.chat_template import ChatSpec, render_spec
from deploykit.model.probes import load_probe_file
from deploykit.ollama import families
from deploykit.ollama.client import Client
from deploykit.ollama.names import (
    MIN_VERSION,
    RENDER_ONLY_SINCE,
    format_version,
    parse_version,
    with_tag,
)
from deploykit.ollama.params import parse_show
from deploykit.ollama.render import model_chat

RENDER_PROBE = [{"role": "user", "content": "What is deploykit?"}]
GREEDY = {"temperature": 0, "top_k": 1, "seed": 0, "num_predict": 64}
HINT = "see the report above; redeploy with the right template/Modelfile"


def check(
    name: str,
    host: str | None = None,
    probes: Path | None = None,
    reference: Path | None = None,
    timeout: float = 120.0,
) -> Report:
    """Run every check against model ``name``."""
    report = Report("health", name, extra={"model": name}, error=HealthCheckError, hint=HINT)
    # read local inputs first: a bad --reference or --probes fails before any request
    spec = model_chat(Path(reference)).spec if reference is not None else None
    answers = load_probe_file(Path(probes)).probes if probes is not None else []
    with Client(host, timeout=timeout) as client:
        report.extra["host"] = client.host
        version = client.version()
        report.extra["version"] = version
        need = format_version(MIN_VERSION)
        report.add(
            Check.of(
                "server version",
                parse_version(version) >= MIN_VERSION,
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
            report.add(_render_check(client, name, spec, version, _model_messages(show)))
        for probe in answers:
            got = client.chat({"model": name, "messages": probe.messages, "options": GREEDY})
            answer = got["message"]["content"]
            report.add(
                Check.of(
                    f"probe {probe.prompt[:30]!r}",
                    answer == probe.answer,
                    f"expected {probe.answer!r}, got {answer!r}",
                )
            )
    return report


def _show_checks(report: Report, show: dict) -> None:
    template = show.get("template") or ""
    prompt_only = template.strip() == "{{ .Prompt }}"
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
    report.add(
        Check.of(
            "stop parameters",
            bool(stops),
            "; ".join(f'"{s}"' for s in stops)
            or "no stop parameter: generation may run past the end of turn",
        )
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


def _model_messages(show: dict) -> list[dict]:
    """What the server puts before a request's messages: the model's SYSTEM (for a request
    without a system message) and its MESSAGE lines, in that order (server/routes.go)."""
    system = show.get("system") or ""
    messages = [
        {"role": str(m.get("role") or ""), "content": str(m.get("content") or "")}
        for m in show.get("messages") or []
        if isinstance(m, dict)
    ]
    return ([{"role": "system", "content": system}] if system else []) + messages


def _render_check(
    client: Client, name: str, spec: ChatSpec, version: str, before: list[dict]
) -> Check:
    """The prompt the server renders for a user turn equals the model's own chat template
    rendering the same conversation: ``before`` (what the deployed model adds) and the turn."""
    if parse_version(version) < RENDER_ONLY_SINCE:
        return Check("render parity", SKIP, f"Ollama {version} cannot render a prompt on request")
    if not spec.template:
        return Check.of("render parity", False, f"{spec.source} has no chat template to compare")
    from jinja2 import TemplateError

    got = client.render({"model": name, "messages": RENDER_PROBE})
    try:
        want = render_spec(spec, before + RENDER_PROBE)
    except (TemplateError, DeploykitError) as exc:  # e.g. a template that refuses a system turn
        return Check.of("render parity", False, f"{spec.source} cannot render it: {exc}")
    bos = spec.bos_token
    if bos and spec.add_bos is not False and want.startswith(bos) and not got.startswith(bos):
        want = want[len(bos) :]  # the runner adds BOS when tokenizing; Ollama templates omit it
    if got == want:
        return Check.of("render parity", True, "the server renders the model's own chat template")
    at = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    return Check.of(
        "render parity",
        False,
        f"prompt differs from the chat template at char {at}: server {got[at : at + 40]!r}"
        f" vs template {want[at : at + 40]!r}",
    )
