"""Golden request/response fixtures transcribed from the Ollama reference.

The test server must answer them exactly, and deploykit's client must interpret the recorded
responses correctly — each side is checked against the reference, not against the other.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from deploykit.core.errors import OllamaError
from deploykit.ollama.client import Client
from deploykit.ollama.params import parse_show
from tests.support.ollama_server import start, stop

GOLDEN = json.loads((Path(__file__).with_name("ollama_api.json")).read_text())


@pytest.fixture(scope="module")
def test_server():
    httpd, state, url = start()
    yield url
    stop(httpd, state)


@pytest.mark.parametrize("case", GOLDEN["server"], ids=lambda c: f"{c['method']} {c['path']}")
def test_server_answers_like_ollama(test_server, case):
    kwargs = {}
    if "body" in case:
        kwargs["json"] = case["body"]
    if "raw" in case:
        kwargs["content"] = case["raw"].encode()
    resp = httpx.request(case["method"], test_server + case["path"], timeout=60, **kwargs)
    assert resp.status_code == case["status"]
    if "json" in case:
        assert resp.json() == case["json"]
    if "json_keys" in case:
        assert set(case["json_keys"]) <= set(resp.json())
    if "text" in case:
        assert resp.text == case["text"]


@pytest.fixture
def replay():
    """A loopback server that answers every request with one recorded golden response."""
    recorded: dict = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            r = recorded["response"]
            if "ndjson" in r:
                body = "".join(json.dumps(x) + "\n" for x in r["ndjson"]).encode()
                ctype = "application/x-ndjson"
            else:
                body, ctype = json.dumps(r["json"]).encode(), "application/json"
            self.send_response(r["status"])
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def serve(name: str) -> Client:
        recorded["response"] = GOLDEN["client"][name]
        return Client(f"127.0.0.1:{httpd.server_address[1]}")

    yield serve
    httpd.shutdown()


def test_client_accepts_a_successful_create_stream(replay):
    seen = []
    with replay("create_success") as c:
        c.create({"model": "m", "files": {"m.gguf": "sha256:" + "0" * 64}}, seen.append)
    assert [s["status"] for s in seen][-1] == "success"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("create_error_in_stream_pre_0_12_6", "neither 'from' or 'files' was specified"),
        ("create_error_after_progress", "supplied file was not in GGUF format"),
        ("create_ends_without_success", "ended without success"),
    ],
)
def test_client_fails_on_stream_errors_under_200(replay, name, message):
    with replay(name) as c, pytest.raises(OllamaError, match=message):
        c.create({"model": "m", "files": {"m.gguf": "sha256:" + "0" * 64}})


def test_client_assembles_a_streamed_chat(replay):
    chunks = []
    with replay("chat_stream") as c:
        final = c.chat(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, chunks.append
        )
    assert final["message"] == {"role": "assistant", "content": "The sky"}
    assert final["eval_count"] == 2 and final["done_reason"] == "stop" and len(chunks) == 3


def test_client_reports_status_errors_with_the_servers_message(replay):
    with replay("not_found") as c, pytest.raises(OllamaError, match="404: model 'nope' not found"):
        c.show("nope")
    with replay("digest_mismatch") as c, pytest.raises(OllamaError, match="400: digest mismatch"):
        c.copy("a", "b")


def test_show_parameters_are_read_as_ollama_prints_them(replay):
    """`parameters` is one `%-30s %#v` line per value: numbers bare, strings Go-quoted."""
    with replay("show_parameters") as c:
        show = c.show("m")
    assert parse_show(show["parameters"]) == {
        "num_ctx": 4096,
        "stop": ["<|im_start|>", "<|im_end|>"],
        "temperature": 0.7,
        "top_k": 20,
    }
