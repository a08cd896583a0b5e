"""The two hub clients behind ``deploykit pull``: huggingface_hub and modelscope.

Each backend lists a repo (to learn its commit, sizes and hashes before downloading),
downloads a filtered snapshot into the client's own cache with the client's own
``snapshot_download``, and finds a cached snapshot without the network. Client exceptions
become one-line deploykit errors here; an unreachable hub becomes :class:`Unreachable`,
which the caller answers from the cache when it can. What a hub answers is checked before a
byte is written: every listed name is a safe relative path (:func:`join` is the only way a
name meets a folder), sizes, hashes and commits are well-formed. Whatever is shown or recorded
passes :func:`redact`. Facts: reference/model-hubs.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PureWindowsPath
from urllib.parse import unquote, urlsplit

from deploykit.core.errors import DownloadError, InputError

HUBS = {"hf": "Hugging Face", "modelscope": "ModelScope"}
COMMIT = re.compile(r"[0-9a-f]{40}")
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it; ``sha256``/``git_oid`` are what it should hash to."""

    path: str
    size: int | None
    sha256: str | None = None
    git_oid: str | None = None  # HF: git blob sha1 of a non-LFS file


@dataclass(frozen=True)
class Listing:
    """What a revision of a repo holds: its commit (when the hub says) and its files."""

    commit: str | None
    files: list[RemoteFile]
    revision: object = None  # what to hand the client's download (HF: a ResolvedRevision)


class Unreachable(Exception):
    """The hub could not be reached (or offline mode forbids it); ``offline_mode`` says which."""

    def __init__(self, reason: str, offline_mode: bool = False) -> None:
        super().__init__(reason)
        self.offline_mode = offline_mode


ENDPOINT_VARS = ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT")  # may hold user:password@
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")


def _secrets() -> list[str]:
    """The tokens in the environment and the user:password parts of the hub endpoints."""
    found = [os.environ.get(var, "") for var in TOKEN_VARS]
    for var in ENDPOINT_VARS:
        with contextlib.suppress(ValueError):
            url = urlsplit(os.environ.get(var, ""))
            found += [url.password or "", unquote(url.password or "")]
    return [s for s in found if len(s) >= 4]


def redact(text: str) -> str:
    """``text`` as deploykit may show or record it: tokens, bearer/basic credentials and the
    ``user:password@`` of any URL replaced by ``***`` (the one redaction for the hub layer)."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1***@", text)
    text = re.sub(r"(?i)\b((?:bearer|basic)\s+)\S+", r"\1***", text)
    # a pre-signed upload URL's query string is a short-lived write credential
    text = re.sub(r"(?i)(X-Amz-[A-Za-z-]+=)[^\s&,'\"]+", r"\1***", text)
    text = re.sub(r"(?i)((?:signature|sig|expires|key-pair-id|policy)=)[^\s&,'\"]+", r"\1***", text)
    return re.sub(r"(?i)(token[=:]\s*)[^\s&,'\"]+", r"\1***", text)


#: Loggers of the hub clients and their HTTP stacks (their warnings reach stderr).
CLIENT_LOGGERS = ("huggingface_hub", "modelscope", "httpx", "urllib3", "requests", "filelock")


@contextlib.contextmanager
def redacted_logs() -> Iterator[None]:
    """While it lasts, every log record of the hub clients passes through :func:`redact`
    (huggingface_hub logs download URLs, credentials included, when it retries)."""
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.name.startswith(CLIENT_LOGGERS):
            with contextlib.suppress(Exception):
                record.msg, record.args = redact(record.getMessage()), ()
            if record.exc_info:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else exc.__class__.__name__
    return redact(line if len(line) <= limit else line[: limit - 1] + "…")


# --- names from a listing -----------------------------------------------------------------

MAX_NAME_BYTES = 1024  # a whole repo path, UTF-8
MAX_PART_BYTES = 255  # one path component (NAME_MAX on Linux, macOS and Windows)


def name_problem(name: object) -> str | None:
    """Why ``name``, a file name from a hub listing, may not be joined under a folder (None:
    it may). Lexical only: a relative, normalised POSIX path of sane length, no ``..``."""
    if not isinstance(name, str):
        return f"not a string but {type(name).__name__}"
    if not name:
        return "empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes long, more than {MAX_NAME_BYTES}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a control character in it"
    if "\\" in name:
        return "a backslash in it"
    if name.startswith("/"):
        return "an absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"{'an empty' if not part else repr(part)} path component"
        if PureWindowsPath(part).drive:
            return "a drive or UNC path"
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            return f"a path component longer than {MAX_PART_BYTES} bytes"
    return None


def shown(name: object, limit: int = 120) -> str:
    """``name`` for an error line: quoted, escaped, bounded."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unsafe_name(repo_id: str, name: object, why: str) -> DownloadError:
    return DownloadError(
        f"{repo_id} lists a file name deploykit will not write: {shown(name)} ({why})",
        "names must stay inside the download folder; ask the repo's owner to rename the file, "
        "or check that HF_ENDPOINT / MODELSCOPE_ENDPOINT is a hub you trust",
    )


def checked_name(repo_id: str, name: object) -> str:
    """``name`` when it is safe to join under a folder, else the :func:`unsafe_name` error."""
    if (why := name_problem(name)) is not None:
        raise unsafe_name(repo_id, name, why)
    return name  # type: ignore[return-value]


def join(root: Path, repo_id: str, name: object) -> Path:
    """``root / name`` for a checked listing name (the only way the hub layer joins one)."""
    return Path(root).joinpath(*checked_name(repo_id, name).split("/"))


def disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error in ``exc``'s chain, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def client_version(dist: str) -> str:
    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return dist


class Backend:
    """What ``pull`` needs from a hub client."""

    name = ""
    default_revision = ""

    @property
    def label(self) -> str:
        return HUBS[self.name]

    def endpoint(self) -> str:
        """The hub's base URL as deploykit shows and records it (credentials redacted)."""
        return redact(self.base_url())

    def base_url(self) -> str:
        """The base URL the client uses (may hold ``user:password@``: never show it)."""
        raise NotImplementedError

    def client(self) -> str:
        raise NotImplementedError

    def cache_root(self) -> Path:
        raise NotImplementedError

    def snapshot_dir(self, repo_id: str, revision: str, commit: str | None) -> Path:
        """Where the client's cache will hold this snapshot."""
        raise NotImplementedError

    def listing(self, repo_id: str, revision: str) -> Listing:
        raise NotImplementedError

    def download(self, repo_id: str, revision: str, allow: list[str], ignore: list[str]) -> Path:
        raise NotImplementedError

    def cached(self, repo_id: str, revision: str, allow: list[str], ignore: list[str]) -> Path:
        """The cached snapshot, without the network; raises ``LookupError`` when absent."""
        raise NotImplementedError

    # --- checking what a hub answers ------------------------------------------------------

    def malformed(self, repo_id: str, what: str) -> DownloadError:
        var = "HF_ENDPOINT" if self.name == "hf" else "MODELSCOPE_ENDPOINT"
        return DownloadError(
            f"{self.label} sent a malformed answer for {repo_id}: {redact(what)}",
            f"check that {var} points at a real hub (a proxy or mirror may be rewriting its "
            "answers); retry later",
        )

    def remote_file(
        self, repo_id: str, path: object, size: object, sha256: object = None, git_oid=None
    ) -> RemoteFile:
        """A listing entry, checked: a safe name, a size that is a non-negative int (or
        absent) and at least one well-formed hash to verify the download against."""
        name = checked_name(repo_id, path)
        if size is not None and (type(size) is not int or size < 0):
            raise self.malformed(repo_id, f"size {shown(size, 40)} of {shown(name)}")
        for value, digits, kind in ((sha256, 64, "sha256"), (git_oid, 40, "git blob id")):
            if value is not None and not (
                isinstance(value, str) and re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value)
            ):
                raise self.malformed(repo_id, f"{kind} {shown(value, 80)} of {shown(name)}")
        if not sha256 and not git_oid:
            raise self.malformed(repo_id, f"no hash for {shown(name)}, so it cannot be verified")
        return RemoteFile(name, size, sha256=sha256 or None, git_oid=git_oid or None)

    def commit(self, repo_id: str, value: object) -> str:
        """A commit the hub names, which must be 40 hex digits (it becomes a cache path)."""
        if not (isinstance(value, str) and COMMIT.fullmatch(value)):
            raise self.malformed(repo_id, f"commit {shown(value, 80)}")
        return value

    def translate(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        """The deploykit error (or :class:`Unreachable`) for a client exception; ``exc``
        itself when it is not one the backend knows."""
        raise NotImplementedError

    def failure(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        """What a client call that raised ``exc`` raises: :meth:`translate`'s answer, and a
        client that could not parse the hub's answer (it raised a type, value or key error
        while reading it) is a malformed answer."""
        mapped = self.translate(exc, repo_id, revision)
        if isinstance(mapped, (TypeError, ValueError, KeyError, AttributeError, IndexError)):
            what = f"{type(mapped).__name__}: {first_line(mapped, 120)}"
            return self.malformed(repo_id, f"the client could not read it ({what})")
        return mapped

    # --- errors shared by both hubs -------------------------------------------------------

    def not_found(self, repo_id: str) -> DownloadError:
        return DownloadError(
            f"repo {repo_id} not found on {self.label} ({self.endpoint()})",
            "check the model id; a private repo also needs "
            + ("HF_TOKEN" if self.name == "hf" else "MODELSCOPE_API_TOKEN"),
        )

    def denied(self, repo_id: str, status: int | str, detail: str) -> DownloadError:
        var = "HF_TOKEN" if self.name == "hf" else "MODELSCOPE_API_TOKEN"
        have = "the token in " + var if os.environ.get(var) else "no token"
        return DownloadError(
            f"access to {repo_id} on {self.label} denied ({status}, gated or private repo; "
            f"sent {have}): {detail}",
            f"accept the model's license on its page and set {var} to a token with read "
            "access to it",
        )

    def bad_revision(self, repo_id: str, revision: str) -> DownloadError:
        return DownloadError(
            f"revision {revision} not found in {repo_id} on {self.label}",
            "pass an existing branch, tag or commit to --revision",
        )

    def http_status(self, repo_id: str, status: int, detail: str) -> DownloadError:
        if status == 429:
            return DownloadError(
                f"{self.label} is rate-limiting requests (429) for {repo_id}",
                "wait a minute and retry; a token raises the limit",
            )
        if status >= 500:
            return DownloadError(
                f"{self.label} server error ({status}) for {repo_id}: {detail}",
                "the hub is having trouble; retry later, finished files are kept",
            )
        return DownloadError(
            f"{self.label} refused {repo_id} ({status}): {detail}",
            "check the model id, --revision and your token",
        )

    def integrity(self, path: str, detail: str) -> DownloadError:
        return DownloadError(
            f"integrity check failed for {path}: {detail}",
            "rerun the pull to fetch it again; if it persists the hub or a proxy corrupts it",
        )


def as_disk_full(exc: BaseException, where: Path) -> DownloadError | None:
    if (err := disk_full(exc)) is None:
        return None
    return DownloadError(
        f"disk full while writing under {where} ({os.strerror(err.errno)})",
        "free some space, or point HF_HOME / MODELSCOPE_CACHE / --out at a bigger disk",
    )


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


#: Backend classes by hub name (imported when first used: the clients are slow to import).
BACKENDS = {
    "hf": "deploykit.hub.hf:HuggingFace",
    "modelscope": "deploykit.hub.modelscope:ModelScope",
}


def backend(name: str) -> Backend:
    """The backend for ``name`` (``hf`` or ``modelscope``)."""
    import importlib

    if name not in BACKENDS:
        raise InputError(f"unknown hub {name!r}", "use --source hf, modelscope or auto")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
