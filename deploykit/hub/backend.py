"""The two hub clients behind ``deploykit pull``: huggingface_hub and modelscope.

Each backend lists a repo (to learn its commit, sizes and hashes before downloading),
downloads a filtered snapshot into the client's own cache with the client's own
``snapshot_download``, and finds a cached snapshot without the network. Client exceptions
become one-line deploykit errors here; an unreachable hub becomes :class:`Unreachable`,
which the caller answers from the cache when it can. Facts: reference/model-hubs.md.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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


def scrub(text: str) -> str:
    """``text`` without any token deploykit might know about (env tokens, bearer headers)."""
    for var in TOKEN_VARS:
        if (token := os.environ.get(var)) and len(token) >= 4:
            text = text.replace(token, "***")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    return re.sub(r"(?i)(token[=:]\s*)[^\s&,'\"]+", r"\1***", text)


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else exc.__class__.__name__
    return scrub(line if len(line) <= limit else line[: limit - 1] + "…")


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
