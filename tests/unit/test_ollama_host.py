"""Ollama's names: OLLAMA_HOST read the way Ollama's own CLI reads it, model names and tags,
server versions."""

import json

import pytest

from deploykit.core.errors import InputError
from deploykit.ollama.names import (
    parse_version,
    resolve_host,
    split_tag,
    validate_name,
    with_tag,
)


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


@pytest.mark.parametrize(
    ("value", "shown", "url", "auth"),
    [
        (
            "http://user:pass@gpu:8080",
            "http://user:***@gpu:8080",
            "http://gpu:8080",
            ("user", "pass"),
        ),
        ("user:pass@gpu", "http://user:***@gpu:11434", "http://gpu:11434", ("user", "pass")),
        # percent-encoded, and an unencoded '@' in the password, as httpx reads them
        ("https://me:p%40ss%3A@h/o", "https://me:***@h:443/o", "https://h:443/o", ("me", "p@ss:")),
        ("http://me:p@ss@h:1", "http://me:***@h:1", "http://h:1", ("me", "p@ss")),
        ("http://TOKEN@h:1", "http://***@h:1", "http://h:1", ("TOKEN", "")),
        ("http://[::1]:1", "http://[::1]:1", "http://[::1]:1", None),
    ],
)
def test_credentials_in_the_host_are_parsed_and_never_shown(value, shown, url, auth):
    """Bug: `user:pass@host:port` became http://user:pass@host:port:80 (InvalidURL, exit 1)."""
    host = resolve_host(value)
    assert (host, host.url, host.auth) == (shown, url, auth)
    assert resolve_host(host) is host  # resolving again keeps the credentials
    recorded = json.dumps({"host": host}) + f"{host} {host!r} {[host]}"
    assert "pass" not in recorded and "TOKEN" not in recorded and "p@ss" not in recorded


def test_an_address_no_client_can_use_is_bad_input():
    with pytest.raises(InputError, match="invalid Ollama host") as exc:
        resolve_host("http://u:secret@host:1/\x00")
    assert "secret" not in exc.value.line() and "OLLAMA_HOST" in exc.value.hint


def test_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:1234")
    assert resolve_host() == "http://gpu-box:1234"
    monkeypatch.delenv("OLLAMA_HOST")
    assert resolve_host() == "http://127.0.0.1:11434"


@pytest.mark.parametrize(
    ("name", "split", "full"),
    [
        ("demo", ("demo", None), "demo:latest"),
        ("demo:q4_k_m", ("demo", "q4_k_m"), "demo:q4_k_m"),
        ("my-org/demo", ("my-org/demo", None), "my-org/demo:latest"),
        ("registry.local:5000/ns/demo", ("registry.local:5000/ns/demo", None), None),
        ("registry.local:5000/ns/demo:v1", ("registry.local:5000/ns/demo", "v1"), None),
    ],
)
def test_name_and_tag(name, split, full):
    """A ':' before the last '/' is a registry port, not a tag."""
    assert split_tag(name) == split
    assert with_tag(name) == (full or f"{split[0]}:{split[1] or 'latest'}")
    assert validate_name(name) == name


@pytest.mark.parametrize("bad", ["bad name", "a/b/c/d:e", "-x", "x:", "x:-y", "m" * 81])
def test_invalid_names_are_refused(bad):
    with pytest.raises(InputError, match="invalid model name"):
        validate_name(bad)


def test_versions_compare_as_numbers():
    assert parse_version("0.14.1-rc2") == (0, 14, 1)
    assert parse_version("0.9.0") < parse_version("0.11.5") < parse_version("0.14.0")
    assert parse_version("dev") == (0,)
