"""The Hugging Face backend: ``huggingface_hub`` lists, downloads and finds cached snapshots."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from deploykit.core.errors import DeploykitError
from deploykit.hub.backend import (
    Backend,
    Listing,
    Unreachable,
    as_disk_full,
    client_version,
    first_line,
    status_of,
    unsafe_name,
)

#: huggingface_hub's own refusal of a listing name (``_validate_relative_filename``).
_REFUSED = re.compile(r"Invalid filename '(?P<name>.*)': (?P<why>[^.]*)", re.DOTALL)


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

    def base_url(self) -> str:
        from huggingface_hub import constants

        return constants.ENDPOINT

    def client(self) -> str:
        return client_version("huggingface_hub")

    def cache_root(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def snapshot_dir(self, repo_id: str, revision: str, commit: str | None) -> Path:
        folder = "models--" + repo_id.replace("/", "--")
        return self.cache_root() / folder / "snapshots" / (commit or revision)

    def translate(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        from huggingface_hub import errors as hfe

        if isinstance(exc, hfe.OfflineModeIsEnabled):
            return Unreachable("HF_HUB_OFFLINE=1", offline_mode=True)
        if isinstance(exc, hfe.GatedRepoError):
            return self.denied(repo_id, status_of(exc) or "gated", "gated repo")
        if isinstance(exc, hfe.RepositoryNotFoundError):
            return self.not_found(repo_id)
        if isinstance(exc, hfe.RevisionNotFoundError):
            return self.bad_revision(repo_id, revision)
        if isinstance(exc, hfe.HfHubHTTPError):
            status = status_of(exc)
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
                return self.translate(cause, repo_id, revision)
            return Unreachable(first_line(exc, 120))
        if any(s in str(exc) for s in ("Consistency check failed", "complete message body")):
            # the body ended before Content-Length, also after the client's own resumes
            return self.integrity(repo_id, f"a file arrived truncated ({first_line(exc, 120)})")
        if isinstance(exc, hfe.FileMetadataError):  # e.g. a redirect without X-Repo-Commit
            return self.malformed(repo_id, first_line(exc, 400).split(", so ")[0])
        if isinstance(exc, ValueError) and (m := _REFUSED.match(str(exc))):
            return unsafe_name(repo_id, m["name"], m["why"])  # the client's own name check
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
            commit = pinned = self.commit(repo_id, api.repo_info(repo_id, revision=revision).sha)
            if commit != revision and hasattr(api, "resolve_revision"):
                # >= 1.26: pins the download to one commit and records refs/<revision>,
                # so the cache answers for the branch or tag when the hub is unreachable.
                pinned = api.resolve_revision(repo_id, revision=revision)
                commit = self.commit(repo_id, pinned.resolved)
            tree = [
                f
                for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
                if isinstance(f, RepoFile)
            ]
            files = [
                self.remote_file(
                    repo_id,
                    f.path,
                    f.size,
                    sha256=f.lfs.sha256 if f.lfs is not None else None,
                    git_oid=None if f.lfs is not None else f.blob_id,
                )
                for f in tree
            ]
        except DeploykitError:
            raise
        except Exception as exc:
            raise self.failure(exc, repo_id, revision) from exc
        return Listing(commit, files, pinned)

    def download(self, repo_id: str, revision, allow: list[str], ignore: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo_id, revision=revision, allow_patterns=allow, ignore_patterns=ignore
            )
        except DeploykitError:
            raise
        except Exception as exc:
            raise self.failure(exc, repo_id, revision) from exc
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
