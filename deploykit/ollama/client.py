"""A typed client for Ollama's HTTP API (>= 0.5.5), over httpx: HTTP only.

No shelling out to the ``ollama`` CLI. Every failure becomes an :class:`OllamaError` with a
hint; every streamed line is checked for ``error`` even under HTTP 200, as Ollama reports
failures after progress that way (https://docs.ollama.com/api).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from deploykit.core.errors import OllamaError
from deploykit.core.fsutil import sha256_file
from deploykit.ollama.names import RENDER_ONLY_SINCE, format_version, resolve_host, validate_name

UPLOAD_CHUNK = 1 << 20
NOT_OLLAMA = "is that address an Ollama server? check OLLAMA_HOST or --host"
_NOT_JSON = object()


def _decode(text: str) -> Any:
    """``text`` as JSON, or ``_NOT_JSON`` (bad syntax, numbers too long, nesting too deep)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _one_line(text: Any, limit: int = 300) -> str:
    """A server's text as part of one error line: whitespace runs become one space, cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def parse_line(line: str, what: str) -> dict | None:
    """One line of an NDJSON stream: its object, or None for a blank line.

    OllamaError for a line that is not a JSON object and for an ``error`` line (Ollama reports
    a failure after progress that way, under HTTP 200).
    """
    if not line.strip():
        return None
    obj = _decode(line)
    if not isinstance(obj, dict):
        kind = "not JSON" if obj is _NOT_JSON else "JSON but not an object"
        raise OllamaError(f"{what}: a streamed line is {kind}: {_one_line(line, 80)!r}", NOT_OLLAMA)
    if obj.get("error"):
        raise OllamaError(f"{what}: {_one_line(obj['error'])}", "see the Ollama server log")
    return obj


def _check_fields(
    obj: dict,
    what: str,
    strings: tuple[str, ...] = (),
    lists: tuple[str, ...] = (),
    objects: tuple[str, ...] = (),
) -> dict:
    """``obj`` if each named field is absent, null or of its type; OllamaError otherwise."""
    for keys, kind, name in (
        (strings, str, "a string"),
        (lists, list, "a list"),
        (objects, dict, "an object"),
    ):
        for key in keys:
            if obj.get(key) is not None and not isinstance(obj[key], kind):
                raise OllamaError(f"{what}: the server's {key!r} is not {name}", NOT_OLLAMA)
    return obj


class Client:
    """Ollama's HTTP API. ``host`` as ``resolve_host`` accepts it (default ``$OLLAMA_HOST``);
    credentials in it are sent as HTTP Basic auth, and ``self.host`` shows them redacted."""

    def __init__(self, host: str | None = None, timeout: float = 600.0) -> None:
        self.host = resolve_host(host)
        self._http = httpx.Client(
            base_url=self.host.url,
            auth=self.host.auth,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing

    def _fail(self, exc: Exception) -> OllamaError:
        if isinstance(exc, httpx.ConnectError):
            return OllamaError(
                f"cannot reach Ollama at {self.host}",
                f"is `ollama serve` running at {self.host}? set OLLAMA_HOST or --host",
            )
        if isinstance(exc, httpx.TimeoutException):
            return OllamaError(
                f"Ollama at {self.host} did not answer in time",
                "the server may be busy loading a model; try again",
            )
        return OllamaError(
            f"talking to Ollama at {self.host} failed: {_one_line(exc)}", "check the server log"
        )

    @staticmethod
    def _error(resp: httpx.Response, what: str) -> OllamaError:
        obj = _decode(resp.text)
        message = obj.get("error") if isinstance(obj, dict) else None
        message = _one_line(message or resp.text.strip() or resp.reason_phrase)
        hint = {
            400: "the request was refused as invalid; check names, template and parameters",
            401: "the server refused the credentials: check user:password in OLLAMA_HOST/--host",
            403: "the server refused the credentials: check user:password in OLLAMA_HOST/--host",
            404: "check the model name; GET /api/tags lists what the server has",
            500: "see the Ollama server log",
        }.get(resp.status_code, "see the Ollama server log")
        return OllamaError(f"{what}: HTTP {resp.status_code}: {message}", hint)

    def _request(self, method: str, path: str, what: str, **kw) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None
        if resp.status_code >= 400:
            raise self._error(resp, what)
        return resp

    def _object(self, method: str, path: str, what: str, **kw) -> dict:
        """A request whose answer must be one JSON object."""
        resp = self._request(method, path, what, **kw)
        obj = _decode(resp.text)
        if not isinstance(obj, dict):
            kind = "not JSON" if obj is _NOT_JSON else "JSON but not an object"
            raise OllamaError(
                f"{what}: the answer of {self.host} is {kind}: {_one_line(resp.text, 80)!r}",
                NOT_OLLAMA,
            )
        return obj

    def _stream(self, path: str, body: dict, what: str) -> Iterator[dict]:
        """POST with ``stream: true``; yield each NDJSON object (see :func:`parse_line`)."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp, what)
                for line in resp.iter_lines():
                    if (obj := parse_line(line, what)) is not None:
                        yield obj
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None

    # -- endpoints

    def version(self) -> str:
        obj = self._object("GET", "/api/version", "version")
        return str(_check_fields(obj, "version", strings=("version",)).get("version") or "")

    def _models(self, path: str, what: str) -> list[dict]:
        models = self._object("GET", path, what).get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise OllamaError(f"{what}: the server's 'models' is not a list of objects", NOT_OLLAMA)
        return models

    def tags(self) -> list[dict]:
        return self._models("/api/tags", "list models")

    def ps(self) -> list[dict]:
        return self._models("/api/ps", "list running models")

    def show(self, model: str, verbose: bool = False) -> dict:
        what = f"show {model}"
        obj = self._object("POST", "/api/show", what, json={"model": model, "verbose": verbose})
        return _check_fields(
            obj,
            what,
            strings=("license", "modelfile", "parameters", "template", "system"),
            lists=("capabilities", "messages"),
        )

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", f"delete {model}", json={"model": model})

    def copy(self, source: str, destination: str) -> None:
        self._request(
            "POST",
            "/api/copy",
            f"copy {source}",
            json={"source": source, "destination": validate_name(destination)},
        )

    def blob_exists(self, digest: str) -> bool:
        try:
            resp = self._http.head(f"/api/blobs/{digest}")
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._error(resp, f"check blob {digest}")

    def upload_blob(
        self,
        path: Path,
        digest: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, bool]:
        """Upload ``path`` unless the server has it; returns ``(digest, uploaded)``.

        The file is hashed in one streaming pass (skipped when ``digest`` is given) and sent
        in 1 MiB chunks, so memory stays constant whatever the file's size.
        """
        path = Path(path)
        digest = digest or f"sha256:{sha256_file(path)}"
        if self.blob_exists(digest):
            return digest, False

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(UPLOAD_CHUNK):
                    if progress:
                        progress(len(block))
                    yield block

        headers = {"Content-Length": str(path.stat().st_size)}
        self._request(
            "POST", f"/api/blobs/{digest}", f"upload {path.name}", content=chunks(), headers=headers
        )
        return digest, True

    def create(self, request: dict, on_status: Callable[[dict], None] | None = None) -> None:
        """``POST /api/create`` (current API: ``model``, ``files``, ``template``, ...)."""
        validate_name(request["model"])
        last = None
        for obj in self._stream("/api/create", request, f"create {request['model']}"):
            last = obj
            if on_status:
                on_status(obj)
        if not last or last.get("status") != "success":
            raise OllamaError(
                f"create {request['model']} ended without success", "see the Ollama server log"
            )

    def push(
        self, model: str, on_status: Callable[[dict], None] | None = None, insecure: bool = False
    ) -> list[str]:
        """``POST /api/push`` streamed; returns the status lines. An ``error`` line in the
        stream (a registry that refuses the server's key) raises OllamaError."""
        validate_name(model)
        statuses: list[str] = []
        body = {"model": model, "insecure": insecure}
        for obj in self._stream("/api/push", body, f"push {model}"):
            _check_fields(obj, f"push {model}", strings=("status", "digest"))
            statuses.append(str(obj.get("status", "")))
            if on_status:
                on_status(obj)
        if not statuses or statuses[-1] != "success":
            raise OllamaError(f"push {model} ended without success", "see the Ollama server log")
        return statuses

    def chat(self, request: dict, on_chunk: Callable[[dict], None] | None = None) -> dict:
        """``POST /api/chat`` streamed; returns the final object with the whole ``content``."""
        parts: list[str] = []
        thinking: list[str] = []
        calls: list = []
        final: dict = {}
        what = f"chat with {request['model']}"
        for obj in self._stream("/api/chat", request, what):
            msg = _check_fields(obj, what, objects=("message",)).get("message") or {}
            _check_fields(msg, what, strings=("content", "thinking"), lists=("tool_calls",))
            parts.append(msg.get("content") or "")
            thinking.append(msg.get("thinking") or "")
            calls += msg.get("tool_calls") or []
            if on_chunk:
                on_chunk(obj)
            if obj.get("done"):
                final = obj
        message = {"role": "assistant", "content": "".join(parts)}
        if any(thinking):
            message["thinking"] = "".join(thinking)
        if calls:
            message["tool_calls"] = calls
        return {**final, "message": message}

    def render(self, request: dict) -> str:
        """The prompt the server renders for ``request`` (``_debug_render_only``)."""
        body = {**request, "stream": False, "_debug_render_only": True}
        what = f"render for {request['model']}"
        obj = self._object("POST", "/api/chat", what, json=body)
        _check_fields(obj, what, objects=("_debug_info",))
        info = _check_fields(obj.get("_debug_info") or {}, what, strings=("rendered_template",))
        if info.get("rendered_template") is None:
            raise OllamaError(
                "the server does not support _debug_render_only",
                f"Ollama >= {format_version(RENDER_ONLY_SINCE)} renders prompts on request",
            )
        return info["rendered_template"]
