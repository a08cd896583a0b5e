"""Publishing to an Ollama registry through the server's ``/api/push`` (the server holds the
user's registry key). Each quant's model ``NAME:<type>`` is created from the bundle when the
server lacks it, checked with ``/api/show`` against the bundle's Modelfile (GGUF, template,
system, parameters), copied to ``NAMESPACE/NAME:<type>`` and pushed; the first quant also
as ``NAMESPACE/NAME:latest`` (with a TAG: ``TAG-<type>`` and ``TAG``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import OllamaError, PublishError
from deploykit.ollama import modelfile
from deploykit.ollama.names import validate_name
from deploykit.ollama.params import parse_show

_DIGEST = re.compile(r"sha256[-:]([0-9a-f]{64})")


def plan(release, target) -> list[dict[str, str]]:
    """``[{local, remote}]``: the server's model for each quant and the registry name it is
    pushed as, first quant first (then again as latest / TAG)."""
    rows = []
    for o in release.outputs:
        t = o["type"].lower()
        remote = f"{target.name}:{target.tag}-{t}" if target.tag else f"{target.name}:{t}"
        rows.append({"type": o["type"], "local": f"{release.name}:{t}", "remote": remote})
    first = rows[0]
    rows.append({**first, "remote": f"{target.name}:{target.tag or 'latest'}"})
    for r in rows:
        validate_name(r["local"])
        validate_name(r["remote"])
    return rows


def _matches(show: dict, release, output: dict) -> list[str]:
    """What of the server's model differs from the bundle's Modelfile and GGUF ([] when
    nothing)."""
    text = release.checked_text(release.modelfile(output))
    want = modelfile.create_request(modelfile.parse(text))
    problems = []
    first_from = next(
        (ln for ln in str(show.get("modelfile") or "").splitlines() if ln.startswith("FROM ")), ""
    )
    m = _DIGEST.search(first_from)
    if not m or m.group(1) != output["sha256"]:
        problems.append("GGUF")
    if want.get("template") is not None and show.get("template") != want["template"]:
        problems.append("template")
    if (show.get("system") or "") != (want.get("system") or ""):
        problems.append("system")
    if parse_show(str(show.get("parameters") or "")) != (want.get("parameters") or {}):
        problems.append("parameters")
    for key in ("renderer", "parser"):
        if (show.get(key) or "") != (want.get(key) or ""):
            problems.append(key)
    if (show.get("messages") or []) != (want.get("messages") or []):
        problems.append("messages")
    lines = str(show.get("modelfile") or "").splitlines()
    if any(ln.startswith("ADAPTER ") for ln in lines):
        problems.append("adapter")
    return problems


def _progress(model: str):
    seen: set[str] = set()

    def show(obj: dict) -> None:
        status = str(obj.get("status", ""))[:120]
        if obj.get("total") and obj.get("completed") is not None:
            ui.info(f"{model}: {status} {obj['completed']:,}/{obj['total']:,}")
        elif status not in seen:
            seen.add(status)
            ui.info(f"{model}: {status}")

    return show


def push(
    release, target, *, host: str | None, allow_gguf_template: bool, force: bool = False
) -> dict[str, Any]:
    """Create (if missing), check, copy and push each quant (see the module doc). A registry
    name the server already has for another model is replaced only with ``force``."""
    from deploykit.ollama import deploy
    from deploykit.ollama.client import Client

    rows = plan(release, target)
    by_type = {o["type"]: o for o in release.outputs}
    expected = {release.folder / n: r["sha256"] for n, r in release.files.items()}
    created, pushed = [], []
    with Client(host) as client:
        for row in rows[:-1]:  # every model is made and checked before anything is pushed
            output = by_type[row["type"]]
            try:
                show = client.show(row["local"])
            except OllamaError as exc:
                if "HTTP 404" not in exc.message:
                    raise
                deploy.create(
                    row["local"],
                    Path(release.modelfile(output)),
                    host,
                    lambda s: None,
                    expected=expected,
                    allow_gguf_template=allow_gguf_template,
                )
                created.append(row["local"])
                show = client.show(row["local"])
            if problems := _matches(show, release, output):
                raise PublishError(
                    f"{row['local']} on {client.host} is not the bundle's model "
                    f"({', '.join(problems)} differ)",
                    f"replace it: deploykit create {row['local']} -f {release.modelfile(output)}",
                )
        for row in rows:  # a name the server holds for another model is not replaced silently
            try:
                existing = client.show(row["remote"])
            except OllamaError as exc:
                if "HTTP 404" not in exc.message:
                    raise
                existing = None
            problems = _matches(existing, release, by_type[row["type"]]) if existing else []
            if problems and not force:
                raise PublishError(
                    f"{row['remote']} on {client.host} is another model "
                    f"({', '.join(problems)} differ)",
                    "push to another name, or pass --force to replace it",
                )
        for row in rows:
            client.copy(row["local"], row["remote"])
            try:
                statuses = client.push(row["remote"], _progress(row["remote"]))
            except OllamaError as exc:
                if not exc.message.startswith(f"push {row['remote']}:"):
                    raise  # the server is unreachable or stopped answering: Ollama's class
                raise PublishError(
                    f"pushing {row['remote']} failed: {exc.message}",
                    "the server needs its key (~/.ollama/id_ed25519.pub) on your ollama.com "
                    "account, and the namespace must be yours",
                ) from None
            pushed.append({"model": row["remote"], "from": row["local"], "statuses": statuses})
    return {"target": str(target), "host": str(client.host), "created": created, "pushed": pushed}
