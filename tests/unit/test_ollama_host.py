"""OLLAMA_HOST is read the way Ollama's own CLI reads it."""

import pytest

from deploykit.ollama.client import resolve_host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("example.com:8080", "http://example.com:8080"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:8443/ollama", "https://example.com:8443/ollama"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        (" 127.0.0.1:11435 ", "http://127.0.0.1:11435"),
        ("127.0.0.1:99999", "http://127.0.0.1:11434"),
    ],
)
def test_resolve_host(value, expected):
    assert resolve_host(value) == expected


def test_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:1234")
    assert resolve_host() == "http://gpu-box:1234"
    monkeypatch.delenv("OLLAMA_HOST")
    assert resolve_host() == "http://127.0.0.1:11434"
