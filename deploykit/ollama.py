"""Talking to an Ollama server over its HTTP API.

For now: where the server is (``OLLAMA_HOST``, parsed the way Ollama's own CLI parses it)
and which version it runs. The typed client grows here.
"""

from __future__ import annotations

import ipaddress
import os

import httpx

DEFAULT_HOST = "http://127.0.0.1:11434"


def resolve_host(value: str | None = None) -> str:
    """Base URL for ``value`` (else ``$OLLAMA_HOST``), accepting what ``ollama`` accepts.

    ``host``, ``host:port``, ``scheme://host[:port][/path]``; a bare host gets port 11434,
    ``http://host`` port 80 and ``https://host`` port 443, as in Ollama's envconfig.
    """
    raw = (value if value is not None else os.environ.get("OLLAMA_HOST", "")).strip()
    if not raw:
        return DEFAULT_HOST
    default_port = "11434"
    scheme, sep, hostport = raw.partition("://")
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport)
    if port is None:
        port = default_port
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            host = hostport or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        return DEFAULT_HOST
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def _split_host_port(hostport: str) -> tuple[str, str | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end != -1 and hostport[end + 1 : end + 2] == ":":
            return hostport[1:end], hostport[end + 2 :]
        return hostport, None
    if hostport.count(":") == 1:
        host, port = hostport.split(":")
        return host, port
    return hostport, None


def server_version(host: str, timeout: float = 3.0) -> str:
    """``GET /api/version``; raises ``httpx.HTTPError`` when the server does not answer."""
    resp = httpx.get(f"{host}/api/version", timeout=timeout)
    resp.raise_for_status()
    return str(resp.json().get("version", "unknown"))
