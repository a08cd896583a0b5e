"""`deploykit doctor` lists every piece, and names the command that restores a missing one."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploykit.llamacpp import build, tools
from deploykit.pipeline.doctor import packages
from tests.support.cli import one_error_line, run_cli


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
    for name in build.TOOLS:
        assert by_name[name]["ok"], by_name[name]
        assert by_name[name]["data"]["path"].endswith(name)
    assert by_name["llama-server"]["data"]["version"].startswith("version: ")
    assert tree.commit[:7] in by_name["llama.cpp"]["data"]["version"]
    assert by_name["convert_hf_to_gguf.py"]["ok"]
    assert all(by_name[p]["ok"] and by_name[p]["data"]["version"] for p in packages())
    assert by_name["ollama"]["status"] == "pass"
    assert by_name["ollama"]["data"]["version"] == "0.30.1"
    assert report["ok"] is True and report["failed"] == []


def test_missing_toolchain_names_the_rebuild_command(tmp_path):
    proc = run_cli("doctor", env={"DEPLOYKIT_CACHE": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"})
    line = one_error_line(proc, 6)
    assert line.startswith(f"error: deploykit's toolchain failed {len(build.TOOLS)} check(s): ")
    assert all(name in line for name in build.TOOLS) and "make toolchain" in line
    for name in build.TOOLS:  # each missing tool is shown with the command that builds it
        row = next(ln for ln in proc.stdout.splitlines() if f" {name} " in ln)
        assert row.startswith("FAIL") and "make toolchain" in row


def test_unreachable_ollama_is_reported_not_fatal():
    proc = run_cli("doctor", "--json", env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    ollama = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "ollama")
    assert ollama["status"] == "warn" and ollama["data"]["required"] is False
    assert (
        ollama["data"]["path"] == "http://127.0.0.1:9" and "ollama serve" in ollama["data"]["hint"]
    )


def test_bad_llama_cpp_dir_is_one_error(tmp_path):
    proc = run_cli("doctor", env={"LLAMA_CPP_DIR": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"})
    assert one_error_line(proc, 6) == (
        "error: deploykit's toolchain failed 1 check(s): llama.cpp (hint: point LLAMA_CPP_DIR "
        "at a llama.cpp checkout, or unset it to use the vendored one)"
    )
    row = next(ln for ln in proc.stdout.splitlines() if "llama.cpp" in ln)
    assert row.startswith("FAIL") and f"LLAMA_CPP_DIR={tmp_path} is not a llama.cpp tree" in row


def test_llama_cpp_dir_with_its_own_build(tmp_path, tree):
    """A user's checkout with build/bin is used as is."""
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    (tmp_path / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (tmp_path / "build" / "bin").mkdir(parents=True)
    for name in build.TOOLS:
        (tmp_path / "build" / "bin" / name).symlink_to(tools.tool(name, tree))
    proc = run_cli(
        "doctor", "--json", env={"LLAMA_CPP_DIR": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:9"}
    )
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["llama.cpp"]["data"]["origin"] == "LLAMA_CPP_DIR"
    want = str(tmp_path / "build" / "bin" / "llama-quantize")
    assert checks["llama-quantize"]["data"]["path"] == want
