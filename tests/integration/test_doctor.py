"""`deploykit doctor` lists every piece, and names the command that restores a missing one."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploykit.llamacpp import tree as llamacpp
from deploykit.pipeline.doctor import PACKAGES
from tests.support.cli import run_cli


@pytest.fixture
def version_server():
    """A loopback server answering GET /api/version like Ollama does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"version": "0.30.1"}).encode()
            code = 200 if self.path == "/api/version" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_doctor_lists_every_tool_and_package(version_server, tree):
    proc = run_cli("doctor", "--json", env={"OLLAMA_HOST": version_server})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    for name in llamacpp.TOOLS:
        assert by_name[name]["ok"], by_name[name]
        assert by_name[name]["path"].endswith(name)
    assert by_name["llama-server"]["version"].startswith("version: ")
    assert tree.commit[:7] in by_name["llama.cpp"]["version"]
    assert by_name["convert_hf_to_gguf.py"]["ok"]
    assert all(by_name[p]["ok"] and by_name[p]["version"] for p in PACKAGES)
    assert by_name["ollama"] == {**by_name["ollama"], "ok": True, "version": "0.30.1"}
    assert report["ok"] is True


def test_missing_toolchain_names_the_rebuild_command(tmp_path):
    proc = run_cli("doctor", env={"DEPLOYKIT_CACHE": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 6
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(llamacpp.TOOLS)
    for name, line in zip(llamacpp.TOOLS, errors, strict=True):
        assert line.startswith(f"error: {name}: ") and "make toolchain" in line
    assert "MISSING" in proc.stdout


def test_unreachable_ollama_is_reported_not_fatal():
    proc = run_cli("doctor", "--json", env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    ollama = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "ollama")
    assert ollama["ok"] is False and ollama["required"] is False
    assert ollama["path"] == "http://127.0.0.1:9" and "ollama serve" in ollama["hint"]


def test_bad_llama_cpp_dir_is_one_error(tmp_path):
    proc = run_cli("doctor", env={"LLAMA_CPP_DIR": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 6
    assert proc.stderr.strip().splitlines() == [
        f"error: llama.cpp: LLAMA_CPP_DIR={tmp_path} is not a llama.cpp tree (no "
        "convert_hf_to_gguf.py) (hint: point LLAMA_CPP_DIR at a llama.cpp checkout, or unset it "
        "to use the vendored one)"
    ]


def test_llama_cpp_dir_with_its_own_build(tmp_path, tree):
    """A user's checkout with build/bin is used as is."""
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    (tmp_path / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (tmp_path / "build" / "bin").mkdir(parents=True)
    for name in llamacpp.TOOLS:
        (tmp_path / "build" / "bin" / name).symlink_to(llamacpp.tool(name, tree))
    proc = run_cli(
        "doctor", "--json", env={"LLAMA_CPP_DIR": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"}
    )
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["llama.cpp"]["detail"] == "from LLAMA_CPP_DIR"
    assert checks["llama-quantize"]["path"] == str(tmp_path / "build" / "bin" / "llama-quantize")
