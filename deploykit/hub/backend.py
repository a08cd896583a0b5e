"""The two hub clients behind ``deploykit pull``: huggingface_hub and modelscope.

Each backend lists a repo (to learn its commit, sizes and hashes before downloading),
downloads a filtered snapshot into the client's own cache with the client's own
``snapshot_download``, and finds a cached snapshot without the network. Client exceptions
become one-line deploykit errors here; an unreachable hub becomes :class:`Unreachable`,
which the caller answers from the cache when it can. Facts: reference/model-hubs.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from deploykit.core.errors import DeploykitError, DownloadError, InputError

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


def _version(dist: str) -> str:
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


# --- Hugging Face -------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP stack's transport errors (huggingface_hub 2.x: httpx2; 1.x: httpx)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(__import__(mod).TransportError)
    return tuple(found)


class HuggingFace(Backend):
    name = "hf"
    default_revision = "main"

    def endpoint(self) -> str:
        from huggingface_hub import constants

        return constants.ENDPOINT

    def client(self) -> str:
        return _version("huggingface_hub")

    def cache_root(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def snapshot_dir(self, repo_id: str, revision: str, commit: str | None) -> Path:
        folder = "models--" + repo_id.replace("/", "--")
        return self.cache_root() / folder / "snapshots" / (commit or revision)

    def _translate(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        from huggingface_hub import errors as hfe

        if isinstance(exc, hfe.OfflineModeIsEnabled):
            return Unreachable("HF_HUB_OFFLINE=1", offline_mode=True)
        if isinstance(exc, hfe.GatedRepoError):
            return self.denied(repo_id, _status(exc) or "gated", "gated repo")
        if isinstance(exc, hfe.RepositoryNotFoundError):
            return self.not_found(repo_id)
        if isinstance(exc, hfe.RevisionNotFoundError):
            return self.bad_revision(repo_id, revision)
        if isinstance(exc, hfe.HfHubHTTPError):
            status = _status(exc)
            if status in (401, 403):
                return self.denied(repo_id, status, first_line(exc))
            if status == 404:
                return self.not_found(repo_id)
            if status is not None:
                return self.http_status(repo_id, status, first_line(exc))
        unresolved = getattr(hfe, "RevisionResolutionError", hfe.LocalEntryNotFoundError)  # 1.26
        if isinstance(exc, (hfe.LocalEntryNotFoundError, unresolved)):
            cause = exc.__cause__
            if cause is not None and cause is not exc:
                return self._translate(cause, repo_id, revision)
            return Unreachable(first_line(exc, 120))
        if any(s in str(exc) for s in ("Consistency check failed", "complete message body")):
            # the body ended before Content-Length, also after the client's own resumes
            return self.integrity(repo_id, f"a file arrived truncated ({first_line(exc, 120)})")
        if isinstance(exc, _transport_errors()):
            return Unreachable(first_line(exc, 120))
        if full := as_disk_full(exc, self.cache_root()):
            return full
        return exc

    def listing(self, repo_id: str, revision: str) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi()
        try:
            # One call without retries first: a hub that is down is known at once (the
            # tree listing below retries for half a minute) and errors map cleanly.
            commit = pinned = api.repo_info(repo_id, revision=revision).sha
            if commit != revision and hasattr(api, "resolve_revision"):
                # >= 1.26: pins the download to one commit and records refs/<revision>,
                # so the cache answers for the branch or tag when the hub is unreachable.
                pinned = api.resolve_revision(repo_id, revision=revision)
                commit = pinned.resolved
            files = [
                RemoteFile(
                    f.path,
                    f.size,
                    sha256=f.lfs.sha256 if f.lfs is not None else None,
                    git_oid=None if f.lfs is not None else f.blob_id,
                )
                for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
                if isinstance(f, RepoFile)
            ]
        except Exception as exc:
            raise self._translate(exc, repo_id, revision) from exc
        return Listing(commit, files, pinned)

    def download(self, repo_id: str, revision, allow: list[str], ignore: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo_id, revision=revision, allow_patterns=allow, ignore_patterns=ignore
            )
        except Exception as exc:
            raise self._translate(exc, repo_id, revision) from exc
        return Path(path)

    def cached(self, repo_id: str, revision: str, allow: list[str], ignore: list[str]) -> Path:
        from huggingface_hub import errors as hfe
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=allow,
                    ignore_patterns=ignore,
                    local_files_only=True,
                )
            )
        except (hfe.LocalEntryNotFoundError, OSError) as exc:
            raise LookupError(first_line(exc)) from exc


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


# --- ModelScope ---------------------------------------------------------------------------


class ModelScope(Backend):
    name = "modelscope"
    default_revision = "master"

    def endpoint(self) -> str:
        from modelscope_hub.config import HubConfig

        return HubConfig().endpoint.rstrip("/")

    def client(self) -> str:
        return f"{_version('modelscope')} ({_version('modelscope-hub')})"

    def cache_root(self) -> Path:
        from modelscope_hub.config import HubConfig

        return Path(HubConfig().cache_dir)

    def snapshot_dir(self, repo_id: str, revision: str, commit: str | None) -> Path:
        return self.cache_root() / "models" / repo_id.replace("/", "--") / "snapshots" / revision

    def _api(self):
        from modelscope_hub import HubApi

        return HubApi()

    def _translate(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        import requests
        from modelscope_hub import errors as mse

        if full := as_disk_full(exc, self.cache_root()):
            return full
        status = _status(exc)
        if isinstance(exc, requests.HTTPError) and status is not None:
            if status in (401, 403):
                return self.denied(repo_id, status, first_line(exc))
            if status == 404:
                return self._missing(repo_id, revision)
            return self.http_status(repo_id, status, first_line(exc))
        if isinstance(exc, (mse.AuthenticationError, mse.PermissionDeniedError)):
            code = 401 if isinstance(exc, mse.AuthenticationError) else 403
            return self.denied(repo_id, code, first_line(exc))
        if isinstance(exc, mse.NotExistError):
            return self._missing(repo_id, revision)
        if isinstance(exc, mse.RateLimitError):
            return self.http_status(repo_id, 429, first_line(exc))
        if isinstance(exc, mse.ServerError):
            return self.http_status(repo_id, status or 500, first_line(exc))
        if isinstance(exc, mse.FileIntegrityError):
            return self.integrity(repo_id, first_line(exc))
        if isinstance(exc, mse.FileDownloadError):
            failed = exc.failed_files
            for path, err in failed.items():
                if full := as_disk_full(err, self.cache_root()):
                    return full
                if isinstance(err, mse.FileIntegrityError):
                    return self.integrity(path, first_line(err))
            names = ", ".join(sorted(failed)[:3]) + (" …" if len(failed) > 3 else "")
            detail = first_line(next(iter(failed.values()))) if failed else first_line(exc)
            return DownloadError(
                f"{len(failed)} file(s) of {repo_id} failed to download from ModelScope "
                f"({names}): {detail}",
                "rerun the same pull: finished files are kept and partial ones resume",
            )
        if isinstance(exc, (mse.NetworkError, requests.ConnectionError, requests.Timeout)):
            return Unreachable(first_line(exc, 120))
        if isinstance(exc, ConnectionError):
            return Unreachable(first_line(exc, 120))
        return exc

    def _missing(self, repo_id: str, revision: str) -> DownloadError:
        """A 404: the repo, or only the revision? Ask the hub for the repo's revisions."""
        try:
            self._api().list_repo_revisions(repo_id, "model")
        except Exception:
            return self.not_found(repo_id)
        return self.bad_revision(repo_id, revision)

    def listing(self, repo_id: str, revision: str) -> Listing:
        api = self._api()
        try:
            files = [
                RemoteFile(f.path, f.size or None, sha256=f.sha256)
                for f in api.list_repo_files(repo_id, "model", revision=revision)
                if str(f.type) != "tree"
            ]
        except Exception as exc:
            raise self._translate(exc, repo_id, revision) from exc
        return Listing(self._commit(api, repo_id, revision), files)

    def _commit(self, api, repo_id: str, revision: str) -> str | None:
        """The commit a branch or tag names, when the hub's revision list carries it."""
        if COMMIT.fullmatch(revision):
            return revision
        try:
            revisions = api.list_repo_revisions(repo_id, "model")
        except Exception:
            return None
        for rev in revisions:
            if isinstance(rev, dict) and rev.get("Revision") == revision:
                for key in ("CommitId", "CommitID", "Commit", "Sha", "sha"):
                    if isinstance(rev.get(key), str) and rev[key]:
                        return rev[key]
        return None

    def download(self, repo_id: str, revision: str, allow: list[str], ignore: list[str]) -> Path:
        snapshot_download = _ms_snapshot_download()
        try:
            path = snapshot_download(
                repo_id, revision=revision, allow_patterns=allow, ignore_patterns=ignore
            )
        except DeploykitError:
            raise
        except Exception as exc:
            raise self._translate(exc, repo_id, revision) from exc
        return Path(path)

    def cached(self, repo_id: str, revision: str, allow: list[str], ignore: list[str]) -> Path:
        snapshot_download = _ms_snapshot_download()
        try:
            path = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=allow,
                    ignore_patterns=ignore,
                    local_files_only=True,
                )
            )
        except Exception as exc:
            raise LookupError(first_line(exc)) from exc
        if not path.is_dir() or not any(path.iterdir()):
            raise LookupError(f"no cached snapshot of {repo_id}@{revision}")
        return path


def _ms_snapshot_download():
    """``modelscope.snapshot_download``'s implementation (>= 1.38 it is a shim over
    modelscope-hub's compat function; importing ``modelscope`` itself imports torch, ~1.5 s)."""
    try:
        from modelscope_hub.compat.snapshot_download import snapshot_download
    except ImportError:
        from modelscope import snapshot_download
    return snapshot_download


BACKENDS: dict[str, type[Backend]] = {"hf": HuggingFace, "modelscope": ModelScope}


def backend(name: str) -> Backend:
    """The backend for ``name`` (``hf`` or ``modelscope``)."""
    if name not in BACKENDS:
        raise InputError(f"unknown hub {name!r}", "use --source hf, modelscope or auto")
    return BACKENDS[name]()
