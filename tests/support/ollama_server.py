"""An Ollama-compatible test server (tests only): the API contract of Ollama 0.33, strictly.

The Ollama binary cannot be installed on our machines or in CI. This server implements the
endpoints deploykit uses as reference/ollama-api.md documents them — status codes, error
texts, NDJSON streaming with in-stream errors, create status lines — renders prompts with the
Go ``text/template`` helper (Ollama's engine and data model) and generates real text with the
vendored ``llama-server`` on the created GGUF.

    python -m tests.support.ollama_server --port 0      # prints the URL it listens on
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VERSION = "0.33.0"
DEFAULT_TEMPLATE = "{{ .Prompt }}"
DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_PARTS = {
    "host": (r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", 350),
    "namespace": (r"[A-Za-z0-9_][A-Za-z0-9_-]*", 80),
    "model": (r"[A-Za-z0-9_][A-Za-z0-9_.-]*", 80),
    "tag": (r"[A-Za-z0-9_][A-Za-z0-9_.-]*", 80),
}
#: Options and their JSON types (api/types.go); checked at chat time, not at create.
OPTION_TYPES = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "int",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
}


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_name(name: str) -> str | None:
    """The full ``host/namespace/model:tag`` (lower-cased), or None if Ollama rejects it."""
    rest, tag = name, "latest"
    if ":" in name and name.rfind(":") > name.rfind("/"):
        rest, tag = name.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3 or not all(parts):
        return None
    full = dict(zip(("host", "namespace", "model")[3 - len(parts) :], parts, strict=True))
    full = {"host": "registry.ollama.ai", "namespace": "library", **full, "tag": tag}
    for part, value in full.items():
        pattern, limit = _PARTS[part]
        if not re.fullmatch(pattern, value) or len(value) > limit:
            return None
    return f"{full['host']}/{full['namespace']}/{full['model']}:{full['tag']}".lower()


def short(full: str) -> str:
    return full.removeprefix("registry.ollama.ai/").removeprefix("library/")


def _typed_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            or (isinstance(value, float) and value.is_integer())
        )
    if kind == "float32":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def merged_options(params: dict, options: dict) -> dict:
    """Model parameters overlaid with request options, type-checked like Options.FromMap."""
    out = {**params, **(options or {})}
    for key, value in out.items():
        kind = OPTION_TYPES.get(key)
        if kind and not _typed_ok(kind, value):
            raise APIError(500, f'option "{key}" must be of type {kind}')
    return out


class State:
    """Blobs, models and the llama-servers generating for them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.servers = contextlib.ExitStack()
        self.running: dict[str, Any] = {}
        self._go: Path | None = None
        self._details: dict[str, dict] = {}

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def go(self) -> Path:
        if self._go is None:
            from deploykit.ollama import gotemplate

            self._go = gotemplate.build()
        return self._go

    def check_template(self, template: str) -> None:
        if ".Messages" not in template:
            return  # legacy .Prompt templates are rendered below without Go
        from deploykit.ollama import gotemplate

        try:
            gotemplate.render(self.go(), template, [])
        except ValueError as exc:
            message = str(exc).removeprefix("template error:").strip()
            raise APIError(400, f"template error: {message}") from None

    def render(self, model: dict, messages: list[dict], tools: list | None) -> str:
        template = model.get("template") or DEFAULT_TEMPLATE
        if ".Messages" not in template:  # the legacy path: one user prompt
            prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            return template.replace("{{ .Prompt }}", prompt).replace("{{ .System }}", system)
        from deploykit.ollama import gotemplate

        case = {"messages": messages, "tools": tools or [], "date": "2026-01-01"}
        result = gotemplate.render(self.go(), template, [case])[0]
        if "error" in result:
            raise APIError(500, f"template: {result['error']}")
        return result["output"]

    def details(self, digest: str) -> dict:
        """GGUF facts for a model blob (read once: parsing a 150k-token vocab takes seconds)."""
        with self.lock:
            if digest not in self._details:
                self._details[digest] = _gguf_details(self.blob(digest))
            return self._details[digest]

    def server(self, digest: str):
        with self.lock:
            if digest not in self.running:
                from deploykit.llamacpp.server import serve

                self.running[digest] = self.servers.enter_context(
                    serve(self.blob(digest), ctx_size=2048)
                )
            return self.running[digest]


def _gguf_details(path: Path) -> dict:
    from deploykit.llamacpp import gguf_header as gguf_meta

    meta = gguf_meta.read(path, {"tokenizer.ggml.tokens"})
    arch = meta.arch or ""
    return {
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": meta.get("general.size_label", ""),
        "quantization_level": meta.file_type or "",
        "_add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "_bos_text": gguf_meta.token_text(meta, meta.get("tokenizer.ggml.bos_token_id")) or "",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, *args) -> None:
        pass

    # -- responses

    def _send(self, status: int, body: Any = None, ctype: str = "application/json") -> None:
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if self._unread():  # a body we did not read would be parsed as the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _unread(self) -> bool:
        return int(self.headers.get("Content-Length") or 0) > getattr(self, "_read", 0)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _line(self, obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n == 0:
            raise APIError(400, "missing request body")
        self._read = n
        try:
            return json.loads(self.rfile.read(n))
        except ValueError:
            raise APIError(400, "invalid JSON body") from None

    def _model(self, name: str | None) -> tuple[str, dict]:
        if not name:
            raise APIError(400, "model is required")
        full = parse_name(name)
        model = self.state.models.get(full) if full else None
        if model is None:
            raise APIError(404, f"model '{name}' not found")
        return full, model

    # -- dispatch

    def _dispatch(self) -> None:
        self._read = 0
        path = self.path.split("?")[0]
        routes = {
            ("GET", "/"): lambda: self._send(200, b"Ollama is running", "text/plain"),
            ("HEAD", "/"): lambda: self._send(200, b"Ollama is running", "text/plain"),
            ("GET", "/api/version"): lambda: self._send(200, {"version": VERSION}),
            ("HEAD", "/api/version"): lambda: self._send(200, {"version": VERSION}),
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/copy"): self.copy,
        }
        try:
            if path.startswith("/api/blobs/"):
                return self.blobs(path.removeprefix("/api/blobs/"))
            handler = routes.get((self.command, path))
            if handler is None:
                return self._send(404, b"404 page not found", "text/plain")
            handler()
        except APIError as exc:
            self._error(exc.status, exc.message)

    do_GET = do_HEAD = do_POST = do_DELETE = _dispatch

    # -- endpoints

    def blobs(self, digest: str) -> None:
        if not DIGEST.match(digest):
            raise APIError(400, "invalid digest format")
        digest = "sha256:" + digest[7:].lower()
        path = self.state.blob(digest)
        if self.command == "HEAD":
            return (
                self._send(200) if path.exists() else self._error(404, f'blob "{digest}" not found')
            )
        if self.command != "POST":
            raise APIError(405, "method not allowed")
        if path.exists():
            return self._send(200)  # the body is not read
        n = int(self.headers.get("Content-Length") or 0)
        h = hashlib.sha256()
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as fh:
            left = n
            while left > 0:
                chunk = self.rfile.read(min(1 << 20, left))
                if not chunk:
                    break
                h.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        self._read = n
        got = "sha256:" + h.hexdigest()
        tmp.replace(self.state.blob(got))
        if got != digest:
            raise APIError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        self._send(201)

    def create(self) -> None:
        req = self._body()
        name = req.get("model") or req.get("name") or ""
        files = req.get("files") or {}
        for key, digest in {**files, **(req.get("adapters") or {})}.items():
            if key.startswith("/") or ".." in key.split("/") or not key:
                raise APIError(400, "file path must be relative")
            if not digest:
                raise APIError(400, "invalid digest format")
        full = parse_name(name)
        if full is None:
            raise APIError(400, "invalid model name")
        if not req.get("from") and not files:
            raise APIError(400, "neither 'from' or 'files' was specified")
        if req.get("from"):
            raise APIError(500, f"pull model manifest: file does not exist ({req['from']})")
        if "template" in req:
            self.state.check_template(req["template"])
        self._stream_start()
        try:
            for digest in files.values():
                path = self.state.blob(digest)
                self._line({"status": "parsing GGUF"})
                if not path.exists():
                    raise APIError(500, f"open {path}: no such file or directory")
                with open(path, "rb") as fh:
                    if fh.read(4) != b"GGUF":
                        raise APIError(400, "supplied file was not in GGUF format")
                self._line({"status": f"using existing layer {digest}"})
            layers = {
                k: req[k]
                for k in ("template", "system", "parameters", "license", "messages")
                if req.get(k) not in (None, "", {}, [])
            }
            for value in layers.values():
                digest = "sha256:" + hashlib.sha256(json.dumps(value).encode()).hexdigest()
                self._line({"status": f"creating new layer {digest}"})
            model_digest = next(iter(files.values()))
            license_ = req.get("license") or []
            self.state.models[full] = {
                "digest": model_digest,
                "template": req.get("template"),
                "system": req.get("system", ""),
                "parameters": req.get("parameters") or {},
                "license": [license_] if isinstance(license_, str) else list(license_),
                "messages": req.get("messages") or [],
                "details": self.state.details(model_digest),
                "modified_at": datetime.now(UTC).isoformat(),
                "size": self.state.blob(model_digest).stat().st_size,
            }
            self._line({"status": "writing manifest"})
            self._line({"status": "success"})
        except APIError as exc:  # progress was written: the error is an NDJSON line under 200
            self._line({"error": exc.message})
        self._stream_end()

    def _entry(self, full: str, m: dict) -> dict:
        details = {k: v for k, v in m["details"].items() if not k.startswith("_")}
        return {
            "name": short(full),
            "model": short(full),
            "modified_at": m["modified_at"],
            "size": m["size"],
            "digest": m["digest"].removeprefix("sha256:"),
            "details": {"parent_model": "", **details},
        }

    def tags(self) -> None:
        self._send(200, {"models": [self._entry(f, m) for f, m in self.state.models.items()]})

    def ps(self) -> None:
        running = [
            self._entry(f, m)
            for f, m in self.state.models.items()
            if m["digest"] in self.state.running
        ]
        self._send(200, {"models": running})

    def show(self) -> None:
        req = self._body()
        full, m = self._model(req.get("model") or req.get("name"))
        template = m["template"] or DEFAULT_TEMPLATE
        lines = []
        for key, value in m["parameters"].items():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(v)}")
        caps = ["completion"]
        if ".Tools" in template:
            caps.append("tools")
        if "<think>" in template or ".Thinking" in template:
            caps.append("thinking")
        details = {k: v for k, v in m["details"].items() if not k.startswith("_")}
        self._send(
            200,
            {
                "license": "\n".join(m["license"]),
                "modelfile": f'FROM {m["digest"]}\nTEMPLATE """{template}"""\n',
                "parameters": "\n".join(lines),
                "template": template,
                "system": m["system"],
                "details": {"parent_model": "", **details},
                "model_info": {"general.architecture": details["family"]},
                "capabilities": caps,
                "modified_at": m["modified_at"],
            },
        )

    def delete(self) -> None:
        req = self._body()
        full, _ = self._model(req.get("model") or req.get("name"))
        del self.state.models[full]
        self._send(200)

    def copy(self) -> None:
        req = self._body()
        src, dst = req.get("source", ""), req.get("destination", "")
        if parse_name(src) is None:
            raise APIError(400, f'source "{src}" is invalid')
        if parse_name(dst) is None:
            raise APIError(400, f'destination "{dst}" is invalid')
        if parse_name(src) not in self.state.models:
            raise APIError(404, f'model "{src}" not found')
        self.state.models[parse_name(dst)] = dict(self.state.models[parse_name(src)])
        self._send(200)

    def generate(self) -> None:
        req = self._body()
        messages = [{"role": "user", "content": req.get("prompt", "")}]
        if req.get("system"):
            messages.insert(0, {"role": "system", "content": req["system"]})
        self._respond(req, messages, "response")

    def chat(self) -> None:
        self._respond(self._body(), None, "message")

    def _respond(self, req: dict, messages: list | None, field: str) -> None:
        full, m = self._model(req.get("model"))
        tools = req.get("tools") or []
        template = m["template"] or DEFAULT_TEMPLATE
        if tools and ".Tools" not in template:
            raise APIError(400, f"{full} does not support tools")
        msgs = list(m["messages"]) + list(
            messages if messages is not None else req.get("messages") or []
        )
        if m["system"] and (not msgs or msgs[0].get("role") != "system"):
            msgs.insert(0, {"role": "system", "content": m["system"]})
        for msg in msgs:
            msg["role"] = str(msg.get("role", "")).lower()
            msg.setdefault("content", "")
        options = merged_options(m["parameters"], req.get("options") or {})
        prompt = self.state.render(m, msgs, tools)
        now = datetime.now(UTC).isoformat()
        if req.get("_debug_render_only"):
            return self._send(
                200,
                {
                    "model": req["model"],
                    "created_at": now,
                    "_debug_info": {"rendered_template": prompt},
                },
            )
        text, final = self._generate(m, prompt, options)
        out = {"role": "assistant", "content": text} if field == "message" else text
        final = {"model": req["model"], "created_at": now, **final}
        if req.get("stream", True) is False:
            return self._send(200, {**final, field: out})
        self._stream_start()
        pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
        for piece in pieces:
            chunk = {"role": "assistant", "content": piece} if field == "message" else piece
            self._line({"model": req["model"], "created_at": now, field: chunk, "done": False})
        empty = {"role": "assistant", "content": ""} if field == "message" else ""
        self._line({**final, field: empty})
        self._stream_end()

    def _generate(self, m: dict, prompt: str, options: dict) -> tuple[str, dict]:
        details = m["details"]
        if details["_add_bos"] and details["_bos_text"] and prompt.startswith(details["_bos_text"]):
            prompt = prompt[len(details["_bos_text"]) :]  # the runner adds BOS itself
        started = time.monotonic_ns()
        server = self.state.server(m["digest"])
        body = {
            "prompt": prompt,
            "n_predict": options.get("num_predict", 128),
            "temperature": options.get("temperature", 0.8),
            "top_k": options.get("top_k", 40),
            "top_p": options.get("top_p", 0.9),
            "seed": options.get("seed", -1),
            "repeat_penalty": options.get("repeat_penalty", 1.0),
            "stop": options.get("stop", []),
            "cache_prompt": False,
        }
        res = server.post("/completion", body)
        timings = res.get("timings") or {}
        final = {
            "done": True,
            "done_reason": "length" if res.get("stop_type") == "limit" else "stop",
            "total_duration": time.monotonic_ns() - started,
            "prompt_eval_count": int(timings.get("prompt_n", 0)),
            "prompt_eval_duration": int(timings.get("prompt_ms", 0) * 1e6),
            "eval_count": int(timings.get("predicted_n", 0)),
            "eval_duration": int(timings.get("predicted_ms", 0) * 1e6),
        }
        return res.get("content", ""), final


def start(root: Path | None = None, port: int = 0) -> tuple[ThreadingHTTPServer, State, str]:
    """Start the server in a thread; returns (server, state, base URL)."""
    root = Path(root or tempfile.mkdtemp(prefix="ollama-test-server-"))
    state = State(root)
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, state, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop(httpd: ThreadingHTTPServer, state: State) -> None:
    httpd.shutdown()
    httpd.server_close()
    state.servers.close()
    shutil.rmtree(state.root, ignore_errors=True)


@contextlib.contextmanager
def process(env: dict[str, str] | None = None):
    """The server as its own process on a free port, as a user would start it; yields its URL.

    Stopped with SIGINT, whose clean exit also stops the llama-servers it ran.
    """
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ollama_server", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the Ollama test server did not start: {url!r}")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description="Ollama-compatible test server (tests only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state", type=Path, help="directory for blobs (default: a temp dir)")
    args = ap.parse_args()
    httpd, state, url = start(args.state, args.port)
    # SIGTERM (what tests and process managers send) must stop the llama-servers too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(httpd, state)


if __name__ == "__main__":
    main()
