"""The ModelScope backend: ``modelscope`` (its download code in ``modelscope-hub``)."""

from __future__ import annotations

from pathlib import Path

from deploykit.core.errors import DeploykitError, DownloadError
from deploykit.hub.backend import (
    COMMIT,
    Backend,
    Listing,
    Unreachable,
    as_disk_full,
    client_version,
    first_line,
    status_of,
)


class ModelScope(Backend):
    name = "modelscope"
    default_revision = "master"

    def base_url(self) -> str:
        from modelscope_hub.config import get_default_config

        return get_default_config().endpoint.rstrip("/")

    def client(self) -> str:
        return f"{client_version('modelscope')} ({client_version('modelscope-hub')})"

    def cache_root(self) -> Path:
        from modelscope_hub.config import get_default_config

        return Path(get_default_config().cache_dir)

    def snapshot_dir(self, repo_id: str, revision: str, commit: str | None) -> Path:
        return self.cache_root() / "models" / repo_id.replace("/", "--") / "snapshots" / revision

    def _api(self):
        from modelscope_hub import HubApi

        return HubApi()

    def translate(self, exc: BaseException, repo_id: str, revision: str) -> BaseException:
        import requests
        from modelscope_hub import errors as mse

        if full := as_disk_full(exc, self.cache_root()):
            return full
        status = status_of(exc)
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
            entries = api.list_repo_files(repo_id, "model", revision=revision)
            listed = [(f.path, f.size, f.sha256) for f in entries if str(f.type) != "tree"]
        except Exception as exc:
            raise self.failure(exc, repo_id, revision) from exc
        files = [self.remote_file(repo_id, p, n or None, sha256=h) for p, n, h in listed]
        return Listing(self._commit(api, repo_id, revision), files)

    def _commit(self, api, repo_id: str, revision: str) -> str | None:
        """The commit a branch or tag names, when the hub's revision list carries it."""
        if COMMIT.fullmatch(revision):
            return revision
        try:
            revisions = api.list_repo_revisions(repo_id, "model")
        except Exception:
            return None
        for rev in revisions if isinstance(revisions, list) else ():
            if isinstance(rev, dict) and rev.get("Revision") == revision:
                for key in ("CommitId", "CommitID", "Commit", "Sha", "sha"):
                    if isinstance(rev.get(key), str) and rev[key]:
                        return self.commit(repo_id, rev[key])
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
            raise self.failure(exc, repo_id, revision) from exc
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
