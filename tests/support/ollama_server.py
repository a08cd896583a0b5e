"""An Ollama-compatible test server (tests only): the API contract of Ollama 0.33, strictly.

The Ollama binary cannot be installed on our machines or in CI. This server implements the
endpoints deploykit uses as reference/ollama-api.md documents them — status codes, error
texts, NDJSON streaming with in-stream errors, create status lines — renders prompts with the
Go ``text/template`` helper (Ollama's engine and data model) and generates real text with the
vendored ``llama-server`` on the created GGUF. /api/chat assembles, checks and renders a request
as server/routes.go ``ChatHandler`` and server/prompt.go ``chatPrompt`` do (SYSTEM and MESSAGEs,
capabilities, think defaults, ``filterThinkTags``, today's date). Of Ollama's built-in
renderers only Gemma 4's runs here, ported to Python (tests/support/ollama_renderers.py); a
model with another RENDERER has its ``_debug_render_only`` refused as by an Ollama without that
renderer, and its generation uses the GGUF's own Jinja template through llama-server.

    python -m tests.support.ollama_server --port 0      # prints the URL it listens on
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
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

from tests.support import ollama_renderers as renderers

VERSION = "0.33.0"
#: The environment variable that makes the server report another version (version checks).
VERSION_ENV = "DEPLOYKIT_TEST_OLLAMA_VERSION"
#: Renderer, parser and default stop Ollama sets itself for these GGUF architectures when the
#: request names none (server/create.go, createModel); a renderer beats a TEMPLATE.
AUTO_RENDERERS = {
    "gemma4": ("gemma4", "gemma4", ["<turn|>"]),
    "laguna": ("laguna", "laguna", None),
    "nemotron_h": ("nemotron-3-nano", "nemotron-3-nano", None),
    "nemotron_h_moe": ("nemotron-3-nano", "nemotron-3-nano", None),
    "nemotron_h_omni": ("nemotron-3-nano", "nemotron-3-nano", None),
}
#: What a built-in parser adds to a model's capabilities (HasToolSupport/HasThinkingSupport).
PARSER_CAPABILITIES = {
    "gemma4": ["tools", "thinking"],
    "laguna": ["tools", "thinking"],
    "nemotron-3-nano": ["tools", "thinking"],
}
_SEMVER = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
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


THINK_LEVELS = ("high", "medium", "low", "max")
_JSON_KIND = {str: "string", bool: "bool", int: "number", float: "number", list: "array"}


def _unmarshal_error(value: Any, path: str, go_type: str) -> APIError:
    kind = "object" if isinstance(value, dict) else _JSON_KIND.get(type(value), "value")
    return APIError(
        400, f"json: cannot unmarshal {kind} into Go struct field {path} of type {go_type}"
    )


def _typed(obj: dict, key: str, kind: type, path: str, go_type: str) -> None:
    value = obj.get(key)
    if value is not None and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        raise _unmarshal_error(value, f"{path}.{key}", go_type)


def check_chat_request(req: dict) -> None:
    """400 for what Go's decoding of api.ChatRequest refuses (types of messages, tool calls,
    tools and think); unknown fields are ignored, as by Go."""
    if not isinstance(req, dict):
        raise _unmarshal_error(req, "ChatRequest", "api.ChatRequest")
    messages = req.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _unmarshal_error(messages, "ChatRequest.messages", "[]api.Message")
    path = "ChatRequest.messages"
    for msg in messages or []:
        if not isinstance(msg, dict):
            raise _unmarshal_error(msg, path, "api.Message")
        for key in ("role", "content", "thinking", "tool_name", "tool_call_id"):
            _typed(msg, key, str, path, "string")
        _typed(msg, "images", list, path, "[]api.ImageData")
        _typed(msg, "tool_calls", list, path, "[]api.ToolCall")
        for call in msg.get("tool_calls") or []:
            if not isinstance(call, dict):
                raise _unmarshal_error(call, f"{path}.tool_calls", "api.ToolCall")
            _typed(call, "id", str, f"{path}.tool_calls", "string")
            _typed(call, "function", dict, f"{path}.tool_calls", "api.ToolCallFunction")
            fn = call.get("function") or {}
            where = f"{path}.tool_calls.function"
            _typed(fn, "name", str, where, "string")
            _typed(fn, "index", int, where, "int")
            _typed(fn, "arguments", dict, where, "api.ToolCallFunctionArguments")
    tools = req.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _unmarshal_error(tools, "ChatRequest.tools", "api.Tools")
    for tool in tools or []:
        if not isinstance(tool, dict):
            raise _unmarshal_error(tool, "ChatRequest.tools", "api.Tool")
        _typed(tool, "type", str, "ChatRequest.tools", "string")
        _typed(tool, "function", dict, "ChatRequest.tools", "api.ToolFunction")
    think = req.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise APIError(
            400,
            f'invalid think value: {json.dumps(think)} (must be "high", "medium", "low", '
            "true, or false)",
        )


def capabilities(m: dict) -> list[str]:
    """A model's capabilities from its TEMPLATE, by Ollama's tests (server/images.go
    ``Capabilities``; deploykit.ollama.capabilities reproduces them)."""
    from deploykit.ollama.capabilities import go_capabilities

    found = go_capabilities(m.get("template") or DEFAULT_TEMPLATE)
    found |= set(PARSER_CAPABILITIES.get(m.get("parser") or "", []))  # parserCapabilities
    return ["completion"] + [c for c in ("tools", "insert", "thinking") if c in found]


def _drop_thinking(content: str) -> str:
    """What thinking.Parser.AddContent leaves of one whole content as its non-thinking part."""
    text = content.lstrip()
    if text.startswith("<think>"):
        after = text[len("<think>") :].lstrip()
        end = after.find("</think>")
        return "" if end < 0 else after[end + len("</think>") :].lstrip()
    return "" if "<think>".startswith(text) else content


def filter_think_tags(msgs: list[dict], m: dict, full: str) -> list[dict]:
    """server/routes.go ``filterThinkTags``: for a qwen3 architecture or a model named
    deepseek-r1, the thinking in assistant contents before the last user turn is dropped."""
    model_name = short(full).split("/")[-1].split(":")[0]
    if m["details"].get("family") != "qwen3" and model_name != "deepseek-r1":
        return msgs
    last_user = max((i for i, x in enumerate(msgs) if x["role"] == "user"), default=-1)
    return [
        {**x, "content": _drop_thinking(x["content"])}
        if x["role"] == "assistant" and i < last_user
        else x
        for i, x in enumerate(msgs)
    ]


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
        #: Namespaces the fake registry behind /api/push refuses (no key for them).
        self.refused_namespaces: set[str] = set()
        #: What /api/push sent to the registry: {model, digest, layers}.
        self.pushed: list[dict] = []
        #: What GET /api/version answers (default VERSION, or $DEPLOYKIT_TEST_OLLAMA_VERSION).
        self.version = os.environ.get(VERSION_ENV) or VERSION

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

    def render(
        self, model: dict, messages: list[dict], tools: list | None, think: Any = None
    ) -> str:
        """The prompt for ``messages`` (assembled as the server does): server/prompt.go
        ``renderPrompt``. A RENDERER model other than Gemma 4's is refused as by an Ollama
        without that renderer: this server cannot run them, and does not pretend to."""
        if model.get("renderer") in renderers.RENDERERS:
            count = model["details"].get("_parameter_count", 0)
            name = renderers.resolve(model["renderer"], count)
            return renderers.render(name, messages, tools or [], think)
        if model.get("renderer"):
            raise APIError(500, f'unknown renderer "{model["renderer"]}"')
        template = model.get("template") or DEFAULT_TEMPLATE
        if ".Messages" not in template:  # the legacy path: one user prompt
            prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            return template.replace("{{ .Prompt }}", prompt).replace("{{ .System }}", system)
        from deploykit.ollama import gotemplate

        # no "date": the helper's currentDate is today's, as on a real server
        case = {"messages": messages, "tools": tools or [], "think": None}
        if think is not None:
            case["think"] = think is True or isinstance(think, str)  # a level means thinking
        result = gotemplate.render(self.go(), template, [case])[0]
        if "error" in result:
            raise APIError(500, f"template: {result['error']}")
        return result["output"]

    def think_tags(self, model: dict) -> tuple[str, str]:
        """thinking.InferTags of the model's TEMPLATE (through the Go helper)."""
        template = model.get("template") or DEFAULT_TEMPLATE
        if ".Messages" not in template:
            return "", ""
        from deploykit.ollama import gotemplate

        return gotemplate.think_tags(self.go(), template)

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
        "_parameter_count": int(meta.get("general.parameter_count", 0) or 0),
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
            ("GET", "/api/version"): lambda: self._send(200, {"version": self.state.version}),
            ("HEAD", "/api/version"): lambda: self._send(200, {"version": self.state.version}),
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/copy"): self.copy,
            ("POST", "/api/push"): self.push,
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
        for key in ("renderer", "parser", "requires"):
            if req.get(key) is not None and not isinstance(req[key], str):
                kind = "object" if isinstance(req[key], dict) else "value"
                raise APIError(
                    400,
                    f"json: cannot unmarshal {kind} into Go struct field CreateRequest.{key} "
                    "of type string",
                )
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
            if req.get("requires") and not _SEMVER.match(req["requires"]):
                raise APIError(400, f"invalid requires version {req['requires']!r}")
            renderer, parser = req.get("renderer") or "", req.get("parser") or ""
            parameters = dict(req.get("parameters") or {})
            arch = self.state.details(model_digest)["family"]
            if arch in AUTO_RENDERERS and (not renderer or not parser):
                auto_renderer, auto_parser, auto_stop = AUTO_RENDERERS[arch]
                renderer, parser = renderer or auto_renderer, parser or auto_parser
                if auto_stop and "stop" not in parameters:
                    parameters["stop"] = auto_stop
            self.state.models[full] = {
                "renderer": renderer,
                "parser": parser,
                "requires": (req.get("requires") or "").removeprefix("v"),
                "digest": model_digest,
                "template": req.get("template"),
                "system": req.get("system", ""),
                "parameters": parameters,
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
        caps = capabilities(m)
        details = {k: v for k, v in m["details"].items() if not k.startswith("_")}
        # renderer, parser, requires: shown when set (ShowResponse; Model.String's commands)
        builtin = {k: m[k] for k in ("renderer", "parser", "requires") if m.get(k)}
        text = [f"FROM {m['digest']}"]
        if m["template"] is not None:
            text.append(f'TEMPLATE """{template}"""')
        text += [f"{k.upper()} {builtin[k]}" for k in ("renderer", "parser") if k in builtin]
        self._send(
            200,
            {
                **builtin,
                "license": "\n".join(m["license"]),
                "modelfile": "\n".join(text) + "\n",
                "parameters": "\n".join(lines),
                "template": template,
                "system": m["system"],
                **({"messages": m["messages"]} if m["messages"] else {}),  # omitempty
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

    def push(self) -> None:
        """server/routes.go ``PushHandler`` + server/images.go ``PushModel``: a body with
        ``model`` (or ``name``), streamed progress (``retrieving manifest``, per layer
        ``starting upload`` and ``pushing <12hex>`` with digest, total and completed, ``pushing
        manifest``, ``success``). The name is resolved inside the stream, so an unknown model
        is an in-stream ``error`` line under 200 (its manifest cannot be read); a namespace in
        ``State.refused_namespaces`` gets the registry's refusal as an in-stream ``error`` line
        after ``retrieving manifest``, as Ollama reports a key the registry does not know.
        Pushed models are recorded in ``State.pushed``."""
        req = self._body()
        name = req.get("model") or req.get("name")
        if not name:
            raise APIError(400, "model is required")
        if not isinstance(req.get("insecure", False), bool):
            raise APIError(400, "json: cannot unmarshal into Go struct field PushRequest.insecure")
        full = parse_name(name)
        self._stream_start()
        if full is None or full not in self.state.models:
            where = f"manifests/{full or name}".replace(":", "/")
            self._line({"error": f"open {self.state.root / where}: no such file or directory"})
            return self._stream_end()
        m = self.state.models[full]
        namespace = full.split("/")[1]
        self._line({"status": "retrieving manifest"})
        if namespace in self.state.refused_namespaces:
            self._line(
                {
                    "error": "you are not authorized to push to this namespace, create the "
                    "model under a namespace you own"
                }
            )
            return self._stream_end()
        layers = [(m["digest"], m["size"])]
        for key in ("template", "system", "parameters"):
            if m.get(key):
                data = json.dumps(m[key]).encode()
                layers.append(("sha256:" + hashlib.sha256(data).hexdigest(), len(data)))
        for digest, total in layers:
            short_digest = digest.removeprefix("sha256:")[:12]
            self._line({"status": "starting upload", "digest": digest, "total": total})
            self._line(
                {
                    "status": f"pushing {short_digest}",
                    "digest": digest,
                    "total": total,
                    "completed": total,
                }
            )
        self._line({"status": "pushing manifest"})
        self.state.pushed.append({"model": full, "digest": m["digest"], "layers": len(layers)})
        self._line({"status": "success"})
        self._stream_end()

    def generate(self) -> None:
        req = self._body()
        full, m = self._model(req.get("model"))
        system = req.get("system") or m["system"]
        messages = [{"role": "system", "content": system}] if system else []
        messages += [dict(x) for x in m["messages"]]
        messages.append({"role": "user", "content": req.get("prompt", "")})
        self._respond(req, full, m, messages, "response")

    def chat(self) -> None:
        """server/routes.go ChatHandler: the request's messages after the model's MESSAGEs,
        its SYSTEM first unless the request starts with a system message."""
        req = self._body()
        check_chat_request(req)
        full, m = self._model(req.get("model"))
        asked = [dict(x) for x in req.get("messages") or []]
        for msg in asked:
            msg["role"] = str(msg.get("role") or "").lower()  # api.Message lower-cases it
        messages = [dict(x) for x in m["messages"]] + asked
        if asked and asked[0]["role"] != "system" and m["system"]:
            messages.insert(0, {"role": "system", "content": m["system"]})
        self._respond(req, full, m, messages if asked else [], "message")

    def _respond(self, req: dict, full: str, m: dict, msgs: list[dict], field: str) -> None:
        tools = req.get("tools") or []
        think = req.get("think")
        caps = capabilities(m)
        if "thinking" in caps and m.get("renderer") in renderers.RENDERERS:
            think = renderers.resolve_think(think)  # the renderer's thinking default
        elif "thinking" in caps:
            think = True if think is None else think  # a thinking model thinks unless told
        elif think is True or isinstance(think, str):
            raise APIError(400, f'"{req["model"]}" does not support thinking')
        if tools and "tools" not in caps:
            raise APIError(400, f"{full} does not support tools")
        options = merged_options(m["parameters"], req.get("options") or {})
        now = datetime.now(UTC).isoformat()
        if not msgs:  # an empty request loads the model
            done = {"model": req["model"], "created_at": now, "done": True, "done_reason": "load"}
            empty = {"role": "assistant", "content": ""} if field == "message" else ""
            return self._send(200, {**done, field: empty})
        for msg in msgs:
            msg.setdefault("content", "")
            msg["content"] = msg["content"] or ""
        msgs = filter_think_tags(msgs, m, full)
        if req.get("_debug_render_only"):
            prompt = self.state.render(m, msgs, tools, think)
            return self._send(
                200,
                {
                    "model": req["model"],
                    "created_at": now,
                    "message": {"role": "", "content": ""},
                    "done": False,
                    "_debug_info": {"rendered_template": prompt},
                },
            )
        if m.get("renderer") and m["renderer"] not in renderers.RENDERERS:
            prompt = self._gguf_prompt(m, msgs)  # never passed off as the renderer's prompt
        else:
            prompt = self.state.render(m, msgs, tools, think)
        text, final = self._generate(m, prompt, options)
        thinking = ""
        if m.get("parser") == "gemma4":
            thinking, text = renderers.parse(text)
        elif not m.get("renderer") and (think is True or isinstance(think, str)):
            # ChatHandler: with thinking on, the tags inferred from the TEMPLATE split the
            # output (an opening tag that ends the prompt counts as already seen)
            opening, closing = self.state.think_tags(m)
            if opening and closing:
                parser = renderers.ThinkingParser(opening, closing)
                if prompt.strip().endswith(opening):
                    parser.add(opening)
                thinking, text = parser.add(text)
        out = {"role": "assistant", "content": text} if field == "message" else text
        if thinking and field == "message":
            out["thinking"] = thinking
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

    def _gguf_prompt(self, m: dict, msgs: list[dict]) -> str:
        """For a RENDERER model's generation: the GGUF's own Jinja template, applied by
        llama-server (render-only requests are refused: see ``State.render``)."""
        server = self.state.server(m["digest"])
        plain = [{"role": x["role"], "content": x["content"]} for x in msgs]
        return server.post("/apply-template", {"messages": plain})["prompt"]

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
