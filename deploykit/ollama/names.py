"""Ollama's names for things: the server address, model names and tags, server versions.

``resolve_host`` reads ``OLLAMA_HOST`` as Ollama's own CLI does (envconfig), credentials
included (a :class:`Host` shows them redacted); ``validate_name`` applies Ollama's model-name
rules (types/model/name.go) before anything is uploaded.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import quote, unquote

from deploykit.core.errors import InputError

DEFAULT_HOST = "http://127.0.0.1:11434"
#: The help of every --host option.
HOST_HELP = f"Ollama server (default: $OLLAMA_HOST or {DEFAULT_HOST})."
#: The oldest Ollama deploykit talks to (the current /api/create fields).
MIN_VERSION = (0, 5, 5)
#: The first Ollama that reads a Modelfile's REQUIRES line.
REQUIRES_SINCE = (0, 14, 0)
#: The first Ollama that renders a prompt on request (``_debug_render_only``).
RENDER_ONLY_SINCE = (0, 11, 5)
DEFAULT_TAG = "latest"
#: The --help of the option that lets Ollama >= 0.30 run the GGUF's template instead.
ALLOW_GGUF_TEMPLATE_HELP = (
    "Create the model even where Ollama >= 0.30 will ignore the Modelfile's TEMPLATE and render "
    "the GGUF's own chat template, which has more capabilities (tools, thinking)."
)


class Host(str):
    """An Ollama server's base URL as it may be shown: its text has any credentials redacted.

    ``url`` is the address to connect to (without credentials) and ``auth`` the
    ``(user, password)`` taken from the URL, which the client sends as HTTP Basic auth, as
    httpx does for a URL with ``user:password@``. Printing, logging or recording a Host (errors,
    reports, manifests) therefore never shows a password.
    """

    url: str
    auth: tuple[str, str] | None

    def __new__(cls, url: str, auth: tuple[str, str] | None = None) -> Host:
        shown = url
        if auth is not None:
            scheme, _, rest = url.partition("://")
            shown = f"{scheme}://{redact_userinfo(*auth)}@{rest}"
        host = super().__new__(cls, shown)
        host.url, host.auth = url, auth
        return host


def redact_userinfo(user: str, password: str) -> str:
    """The ``user:password`` part of a URL as deploykit shows it: ``user:***`` when there is a
    password, else ``***`` (a lone user name is usually a token)."""
    return f"{quote(user, safe='')}:***" if password else "***"


def resolve_host(value: str | None = None) -> Host:
    """Base URL for ``value`` (else ``$OLLAMA_HOST``), accepting what ``ollama`` accepts.

    ``host``, ``host:port``, ``scheme://[user:password@]host[:port][/path]``; a bare host gets
    port 11434, ``http://host`` port 80 and ``https://host`` port 443, as in Ollama's
    envconfig. Credentials are percent-decoded as httpx decodes them; InputError for an
    address no HTTP client can use.
    """
    if isinstance(value, Host):
        return value
    raw = (value if value is not None else os.environ.get("OLLAMA_HOST", "")).strip()
    if not raw:
        return Host(DEFAULT_HOST)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in OLLAMA_HOST
        raise InputError(
            "the Ollama host is not UTF-8 text", "set OLLAMA_HOST or --host to host[:port]"
        ) from None
    default_port = "11434"
    scheme, sep, hostport = raw.partition("://")
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    userinfo, at, hostport = hostport.rpartition("@")
    user, _, password = userinfo.partition(":")
    auth = (unquote(user), unquote(password)) if at and (user or password) else None
    host, port = _split_host_port(hostport)
    if port is None:
        port = default_port
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            host = hostport or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return Host(DEFAULT_HOST)
    if ":" in host:
        host = f"[{host}]"
    resolved = Host(f"{scheme}://{host}:{port}" + (f"/{path}" if path else ""), auth)
    _check_url(resolved)
    return resolved


def _check_url(host: Host) -> None:
    import httpx

    try:
        httpx.URL(host.url)
    except httpx.InvalidURL as exc:
        raise InputError(
            f"invalid Ollama host {host!r}: {exc}",
            "set OLLAMA_HOST or --host to host[:port] or http(s)://[user:password@]host[:port]",
        ) from None


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


# --- model names (types/model/name.go) ----------------------------------------------------

_PART = {
    "host": (r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", 350),
    "namespace": (r"[A-Za-z0-9_][A-Za-z0-9_-]*", 80),
    "model": (r"[A-Za-z0-9_][A-Za-z0-9_.-]*", 80),
    "tag": (r"[A-Za-z0-9_][A-Za-z0-9_.-]*", 80),
}


def split_tag(name: str) -> tuple[str, str | None]:
    """``[host/][namespace/]model[:tag]`` as ``(everything before the tag, tag or None)``.

    A ``:`` before the last ``/`` belongs to a host's port, not to a tag.
    """
    if ":" in name and name.rfind(":") > name.rfind("/"):
        rest, tag = name.rsplit(":", 1)
        return rest, tag
    return name, None


def with_tag(name: str) -> str:
    """``name`` with its tag spelled out (``model`` -> ``model:latest``), as /api/tags lists it."""
    rest, tag = split_tag(name)
    return f"{rest}:{tag or DEFAULT_TAG}"


def validate_name(name: str) -> str:
    """``name`` if Ollama would accept it (``[host/][namespace/]model[:tag]``), else InputError."""
    rest, tag = split_tag(name)
    parts = rest.split("/")
    if len(parts) > 3:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    named = dict(zip(["host", "namespace", "model"][-len(parts) :], parts, strict=True))
    named["tag"] = DEFAULT_TAG if tag is None else tag
    for part, value in named.items():
        pattern, limit = _PART[part]
        if not re.fullmatch(pattern, value) or len(value) > limit:
            raise InputError(
                f"invalid model name {name!r}: bad {part} {value!r}",
                "use [namespace/]model[:tag] with letters, digits, '_', '-', '.' "
                "(a part starts with a letter, digit or '_')",
            )
    return name


# --- versions -------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.14.1-rc2"`` -> ``(0, 14, 1)``; ``(0,)`` when there is no number."""
    nums = re.findall(r"\d+", text.split("-")[0])
    return tuple(int(n) for n in nums[:3]) if nums else (0,)


#: What a server built from source reports (``0.0.0``): it has every feature, so it counts as
#: the newest for every version check.
NEWEST = (1 << 30, 0, 0)


def server_version(text: str) -> tuple[int, ...]:
    """A server's ``/api/version`` for comparisons: a source build (``0.0.0``) is the newest."""
    version = parse_version(text)
    return NEWEST if not any(version) else version


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
