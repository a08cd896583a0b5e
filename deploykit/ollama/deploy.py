"""Create a model in Ollama from a Modelfile, and talk to it — through the HTTP API only."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.ollama import modelfile
from deploykit.ollama.client import Client
from deploykit.ollama.names import validate_name


def _local_file(value: str, mf_path: Path, what: str) -> Path:
    """FROM/ADAPTER as Ollama's CLI reads it: absolute, ``~``, or relative to the Modelfile."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = mf_path.parent / path
    if not path.is_file():
        raise InputError(
            f"{what} {value} in {mf_path} is not an existing file (looked at {path})",
            "deploykit creates models from local GGUF files only; it never pulls a name",
        )
    return path


def _recorded_digest(path: Path) -> str | None:
    """A sha256 written beside the file when it was produced (``FILE.sha256``), if current."""
    side = path.with_name(path.name + ".sha256")
    try:
        if side.stat().st_mtime >= path.stat().st_mtime:
            return "sha256:" + side.read_text().split()[0]
    except (OSError, IndexError):
        pass
    return None


def create(
    name: str,
    modelfile_path: Path,
    host: str | None = None,
    on_status: Callable[[dict], None] | None = None,
) -> dict:
    """Parse the Modelfile, upload its files (skipping blobs the server has), create ``name``.

    The request body is :func:`modelfile.create_request`'s; this only uploads FROM and ADAPTER
    files and names them by digest in ``files`` and ``adapters``.
    """
    validate_name(name)
    modelfile_path = Path(modelfile_path)
    try:
        text = modelfile_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read {modelfile_path}: {exc.strerror}", "pass -f Modelfile"
        ) from None
    body = modelfile.create_request(modelfile.parse(text), name)
    model = _local_file(body.pop("from"), modelfile_path, "FROM")
    adapters = [_local_file(a, modelfile_path, "ADAPTER") for a in body.pop("adapters", [])]
    started = time.monotonic()
    uploads = []
    with Client(host) as client:
        client.version()  # fail early, with the connection hint, before hashing gigabytes
        for label, paths in (("files", [model]), ("adapters", adapters)):
            for path in paths:
                size = path.stat().st_size
                with ui.progress_bar(f"uploading {path.name}", size, unit="bytes") as bar:
                    digest, sent = client.upload_blob(
                        path,
                        _recorded_digest(path),
                        progress=lambda n, bar=bar: bar.advance(bar.task_ids[0], n),
                    )
                    bar.update(bar.task_ids[0], completed=size)
                body.setdefault(label, {})[path.name] = digest
                uploads.append({"file": str(path), "digest": digest, "uploaded": sent})
        statuses: list[str] = []

        def status(obj: dict) -> None:
            statuses.append(obj.get("status", ""))
            if on_status:
                on_status(obj)

        client.create(body, status)
    return {
        "model": name,
        "host": client.host,
        "uploads": uploads,
        "statuses": statuses,
        "seconds": round(time.monotonic() - started, 2),
    }


def chat(
    name: str,
    prompt: str,
    system: str | None = None,
    host: str | None = None,
    on_text: Callable[[str], None] | None = None,
    options: dict | None = None,
) -> dict:
    """One user turn (with an optional system message); streams text to ``on_text``."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    request = {"model": name, "messages": messages, **({"options": options} if options else {})}
    with Client(host) as client:
        final = client.chat(
            request,
            lambda obj: (
                on_text((obj.get("message") or {}).get("content") or "") if on_text else None
            ),
        )
    return final


def chat_loop(
    name: str,
    system: str | None,
    host: str | None,
    read_line: Callable[[], str],
    on_text: Callable[[str], None],
) -> list[dict]:
    """An interactive chat: ``read_line()`` gives each user turn (an empty line or EOF ends
    it); each answer streams to ``on_text``. Returns the conversation."""
    history = [{"role": "system", "content": system}] if system else []
    with Client(host) as client:
        while True:
            try:
                line = read_line()
            except EOFError:
                break
            if not line.strip():
                break
            history.append({"role": "user", "content": line})
            final = client.chat(
                {"model": name, "messages": history},
                lambda o: on_text((o.get("message") or {}).get("content") or ""),
            )
            on_text("\n")
            history.append(final["message"])
    return history
