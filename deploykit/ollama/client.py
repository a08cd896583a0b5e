"""A typed client for Ollama's HTTP API (>= 0.5.5), over httpx: HTTP only.

No shelling out to the ``ollama`` CLI. Every failure becomes an :class:`OllamaError` with a
hint; every streamed line is checked for ``error`` even under HTTP 200, as Ollama reports
failures after progress that way (https://docs.ollama.com/api).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from deploykit.core.errors import OllamaError
from deploykit.core.fsutil import sha256_file
from deploykit.ollama.names import RENDER_ONLY_SINCE, format_version, resolve_host, validate_name

UPLOAD_CHUNK = 1 << 20


class Client:
    """Ollama's HTTP API. ``host`` as ``resolve_host`` accepts it (default ``$OLLAMA_HOST``)."""

    def __init__(self, host: str | None = None, timeout: float = 600.0) -> None:
        self.host = resolve_host(host)
        self._http = httpx.Client(base_url=self.host, timeout=httpx.Timeout(timeout, connect=5.0))

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
            f"talking to Ollama at {self.host} failed: {exc}", "check the server log"
        )

    @staticmethod
    def _error(resp: httpx.Response, what: str) -> OllamaError:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text.strip() or resp.reason_phrase
        hint = {
            400: "the request was refused as invalid; check names, template and parameters",
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

    def _stream(self, path: str, body: dict, what: str) -> Iterator[dict]:
        """POST with ``stream: true``; yield each NDJSON object, raising on an ``error`` line."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp, what)
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if obj.get("error"):
                        raise OllamaError(f"{what}: {obj['error']}", "see the Ollama server log")
                    yield obj
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None

    # -- endpoints

    def version(self) -> str:
        return str(self._request("GET", "/api/version", "version").json().get("version", ""))

    def tags(self) -> list[dict]:
        return self._request("GET", "/api/tags", "list models").json().get("models", [])

    def ps(self) -> list[dict]:
        return self._request("GET", "/api/ps", "list running models").json().get("models", [])

    def show(self, model: str, verbose: bool = False) -> dict:
        return self._request(
            "POST", "/api/show", f"show {model}", json={"model": model, "verbose": verbose}
        ).json()

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

    def chat(self, request: dict, on_chunk: Callable[[dict], None] | None = None) -> dict:
        """``POST /api/chat`` streamed; returns the final object with the whole ``content``."""
        parts: list[str] = []
        thinking: list[str] = []
        calls: list = []
        final: dict = {}
        for obj in self._stream("/api/chat", request, f"chat with {request['model']}"):
            msg = obj.get("message") or {}
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
        resp = self._request("POST", "/api/chat", f"render for {request['model']}", json=body)
        info = resp.json().get("_debug_info") or {}
        if "rendered_template" not in info:
            raise OllamaError(
                "the server does not support _debug_render_only",
                f"Ollama >= {format_version(RENDER_ONLY_SINCE)} renders prompts on request",
            )
        return info["rendered_template"]
