"""Create a model in Ollama from a Modelfile, and talk to it — through the HTTP API only."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from deploykit.core import ui
from deploykit.core.errors import InputError, OllamaError
from deploykit.core.fsutil import sha256_file
from deploykit.ollama import capabilities, modelfile
from deploykit.ollama.client import Client
from deploykit.ollama.names import format_version, parse_version, server_version, validate_name


def _local_file(value: str, mf_path: Path, what: str) -> Path:
    """FROM/ADAPTER as Ollama's CLI reads it: absolute, ``~``, or relative to the Modelfile."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = mf_path.parent / path
    if what == "FROM" and path.is_dir():  # LlamaFactory's export: FROM . (safetensors)
        raise InputError(
            f"{what} {value} in {mf_path} is a model folder, not a GGUF file",
            f"run deploykit ship --model {path.resolve()} to convert it and write a Modelfile "
            "with its own chat template",
        )
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


def _checked_digest(path: Path, want: str | None) -> str:
    """``sha256:<hex>`` of ``path`` from its bytes, which must be the bundle's ``want`` (None:
    the bundle's manifest does not record it, e.g. its publishing was interrupted)."""
    if want is None:
        raise InputError(
            f"the bundle's manifest does not record {path.name}'s content (the bundle is "
            "incomplete or older than this deploykit)",
            "ship it again to rewrite the bundle",
        )
    have = sha256_file(path)
    if have != want:
        raise InputError(
            f"{path} changed since deploykit wrote its bundle (sha256 {have[:16]}…, the "
            f"manifest says {want[:16]}…)",
            "ship it again, or restore the file the manifest lists",
        )
    return f"sha256:{have}"


def _what_runs(body: dict, model: Path) -> dict | None:
    """Refuse a Modelfile whose TEMPLATE Ollama would not run; the GGUF facts the server-side
    checks need (None when there is no TEMPLATE to check)."""
    modelfile.builtin_since(body.get("renderer"), body.get("parser"))
    if body.get("renderer") is not None:
        if "template" in body:
            raise InputError(
                "the Modelfile has both RENDERER and TEMPLATE: Ollama renders with the "
                "RENDERER and ignores the TEMPLATE",
                "remove one of them (deploykit modelfile writes one or the other)",
            )
        return None
    if "template" not in body:
        return None
    from deploykit.llamacpp import gguf_header
    from deploykit.ollama import families

    info = gguf_header.read(model)
    auto = families.auto_renderer(info.arch or "")
    if auto is not None:
        renderer, fam = auto
        raise InputError(
            f"Ollama sets renderer {renderer!r} itself for a {info.arch!r} GGUF, and a renderer "
            "beats a TEMPLATE: the Modelfile's TEMPLATE would never run",
            f"render the Modelfile with --family {fam.name} (RENDERER {fam.renderer})"
            if fam is not None
            else "drop the TEMPLATE: Ollama's renderer is then what runs (proven at deploy time)",
        )
    return {"chat_template": info.get("tokenizer.chat_template") or "", "gguf": model.name}


def _check_server(version: str, body: dict, facts: dict | None, allow_gguf: bool) -> None:
    """Refuse what this server is too old for, or would not run as written."""
    have = server_version(version)
    needs: list[tuple[tuple[int, ...], str]] = []
    if body.get("requires"):
        needs.append((parse_version(body["requires"]), "REQUIRES"))
    for kind in ("renderer", "parser"):
        if body.get(kind):
            need = modelfile.builtin_since(**{kind: body[kind]})
            needs.append((need, f"{kind.upper()} {body[kind]}"))
    for need, what in needs:
        if have < need:
            old = (
                "older servers silently ignore it"
                if what.startswith(("RENDERER", "PARSER"))
                else "older servers do not enforce it"
            )
            raise OllamaError(
                f"the Ollama server is {version or 'of unknown version'}, but the Modelfile's "
                f"{what} needs Ollama >= {format_version(need)} ({old})",
                f"upgrade Ollama to >= {format_version(need)}, or deploy to a newer server",
            )
    if facts is None or have < capabilities.GGUF_TEMPLATE_SINCE:
        return
    why = capabilities.gguf_template_wins(body["template"], facts["chat_template"], have)
    if why and not allow_gguf:
        raise InputError(
            f"Ollama {version} would ignore the Modelfile's TEMPLATE and render {facts['gguf']}'s "
            f"own chat template instead: {why}",
            "use the family detected for the model (--family auto) or a TEMPLATE with those "
            "capabilities; or pass --allow-gguf-template to let Ollama render the GGUF's template",
        )
    if why:
        ui.warn(f"Ollama {version} renders {facts['gguf']}'s own chat template, not the TEMPLATE")


def create(
    name: str,
    modelfile_path: Path,
    host: str | None = None,
    on_status: Callable[[dict], None] | None = None,
    expected: dict[Path, str | None] | None = None,
    allow_gguf_template: bool = False,
) -> dict:
    """Parse the Modelfile, upload its files (skipping blobs the server has), create ``name``.

    The request body is :func:`modelfile.create_request`'s; this only uploads FROM and ADAPTER
    files and names them by digest in ``files`` and ``adapters``. ``expected`` maps files (a
    release bundle's, from its manifest) to the sha256 they must have: such a file is hashed
    from its bytes and refused, before anything is sent, if it changed.

    Before anything is uploaded, the server's version is asked: a Modelfile whose REQUIRES,
    RENDERER or PARSER it is too old for is refused (old servers ignore them silently), and so
    is one whose TEMPLATE it would not run (a renderer it sets itself for the GGUF's
    architecture; on Ollama >= 0.30 a GGUF chat template with more capabilities, unless
    ``allow_gguf_template``).
    """
    validate_name(name)
    modelfile_path = Path(modelfile_path)
    try:
        text = modelfile_path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read {modelfile_path}: {exc.strerror}", "pass -f Modelfile"
        ) from None
    except UnicodeDecodeError as exc:  # Ollama would read U+FFFD there instead
        raise InputError(
            f"{modelfile_path} is not UTF-8 text (byte {exc.start})", "save the Modelfile as UTF-8"
        ) from None
    body = modelfile.create_request(modelfile.parse(text), name)
    model = _local_file(body.pop("from"), modelfile_path, "FROM")
    adapters = [_local_file(a, modelfile_path, "ADAPTER") for a in body.pop("adapters", [])]
    known = {Path(k).resolve(): v for k, v in (expected or {}).items()}
    if modelfile_path.resolve() in known:  # the Modelfile is part of the bundle too
        _checked_digest(modelfile_path, known[modelfile_path.resolve()])
    digests = {
        p: _checked_digest(p, known[p.resolve()])
        for p in [model, *adapters]
        if p.resolve() in known
    }
    facts = _what_runs(body, model)
    started = time.monotonic()
    uploads = []
    with Client(host) as client:
        # fail early, with the connection hint, before hashing gigabytes
        _check_server(client.version(), body, facts, allow_gguf_template)
        for label, paths in (("files", [model]), ("adapters", adapters)):
            for path in paths:
                size = path.stat().st_size
                with ui.progress_bar(f"uploading {path.name}", size, unit="bytes") as bar:
                    digest, sent = client.upload_blob(
                        path,
                        digests.get(path) or _recorded_digest(path),
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
