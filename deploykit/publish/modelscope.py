"""Publishing to ModelScope through the ``modelscope`` client (``modelscope_hub``, which
``modelscope`` delegates to): the repo's file listing decides what is already there, large
files go through its LFS batch API, and every file lands in one commit. The token is the
client's own (``MODELSCOPE_API_TOKEN``, or its stored login): never printed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import DeploykitError, PublishError
from deploykit.core.fsutil import sha256_file
from deploykit.hub.backend import first_line, name_problem, redacted_logs
from deploykit.publish.hf import MAX_REMOTE_FILES, Upload

DEFAULT_REVISION = "master"


def _api():
    from modelscope_hub import HubApi

    return HubApi()


def token() -> str:
    """The client's own token, or the not-logged-in error (no network call)."""
    from modelscope_hub.config import get_default_config

    found = get_default_config().token
    if not found:
        raise PublishError("not logged in to ModelScope", "set MODELSCOPE_API_TOKEN")
    return found


def translate(exc: BaseException, repo_id: str) -> DeploykitError:
    """The one-line publish error for a client exception."""
    import requests
    from modelscope_hub import errors as mse

    if isinstance(exc, DeploykitError):
        return exc
    if isinstance(exc, mse.AuthenticationError):
        return PublishError(
            "ModelScope refused the token (HTTP 401)", "set MODELSCOPE_API_TOKEN to a valid token"
        )
    if isinstance(exc, mse.PermissionDeniedError):
        return PublishError(
            f"no write access to {repo_id} on ModelScope (HTTP 403)",
            "use a token with write access to that namespace, or push to your own",
        )
    if isinstance(exc, mse.RateLimitError):
        return PublishError(
            "ModelScope rate-limited the push (HTTP 429)",
            "wait a few minutes and push again; no commit was made",
        )
    if isinstance(exc, (mse.NetworkError, requests.ConnectionError, requests.Timeout)):
        return PublishError(
            f"cannot reach ModelScope ({first_line(exc, 120)})",
            "check the network (and MODELSCOPE_ENDPOINT); no commit was made",
        )
    return PublishError(
        f"ModelScope's answer could not be used ({type(exc).__name__}: {first_line(exc, 160)})",
        "try again later; rerun with --debug to see more",
    )


def _remote(api, repo_id: str, revision: str) -> dict[str, dict[str, Any]] | None:
    """``path -> {size, sha256}`` of the revision; None when the repo does not exist."""
    from modelscope_hub import errors as mse

    try:
        entries = api.list_repo_files(repo_id, "model", revision=revision)
    except mse.NotExistError:
        return None
    out = {}
    for f in entries:
        if str(f.type) == "tree":
            continue
        if len(out) >= MAX_REMOTE_FILES:
            raise PublishError(
                f"{repo_id} has more than {MAX_REMOTE_FILES:,} files: not a model repo "
                "deploykit publishes",
                "push to a repo of its own",
            )
        ok = name_problem(f.path) is None and type(f.size) is int and f.size >= 0
        if not ok or not (f.sha256 is None or isinstance(f.sha256, str)):
            raise PublishError(
                f"{repo_id}'s file listing has a malformed entry", "check the repo on ModelScope"
            )
        out[f.path] = {"size": f.size, "sha256": (f.sha256 or "").lower() or None}
    return out


def _remote_base_model(api, repo_id: str, revision: str, remote: dict) -> str | None:
    from deploykit.publish.card import remote_base_model

    return remote_base_model(
        remote,
        lambda tmp: api.download_file(
            repo_id, "model", "README.md", revision=revision, local_dir=str(tmp)
        ),
    )


def _lfs(up: Upload) -> bool:
    """The client's own rule (``modelscope_hub`` upload mode: suffix and size)."""
    from modelscope_hub._upload import _upload_mode

    return _upload_mode(up.path, up.size, "model") == "lfs"


@redacted_logs()
def push(
    repo_id: str,
    uploads: list[Upload],
    *,
    base_model: str | None,
    private: bool = False,
    revision: str | None = None,
    message: str,
    force: bool = False,
) -> dict[str, Any]:
    """Publish ``uploads`` to ModelScope model repo ``repo_id`` in one commit."""
    branch = revision or DEFAULT_REVISION
    token()
    api = _api()
    try:
        remote = _remote(api, repo_id, branch)
        if remote is None and revision and revision != DEFAULT_REVISION:
            # the client cannot create a branch: refused before a repo is made or a file sent
            raise PublishError(
                f"{repo_id} has no branch {revision!r} on ModelScope (or no such repo)",
                f"create the repo and the branch {revision!r} on ModelScope first, or push "
                f"without --revision (to {DEFAULT_REVISION})",
            )
        if remote:
            theirs = _remote_base_model(api, repo_id, branch, remote)
            if theirs is not None and theirs != base_model and not force:
                raise PublishError(
                    f"{repo_id} is the repo of another model: its card names base_model "
                    f"{theirs}, this bundle {base_model or '(unknown)'}",
                    "push to another repo, or pass --force to replace its files",
                )
        same = {
            u.path
            for u in uploads
            if remote
            and u.path in remote
            and remote[u.path]["size"] == u.size
            and remote[u.path]["sha256"] == u.sha256
        }
        changed = [u.path for u in uploads if u.path not in same]
        if remote is not None and not changed:
            ui.info(f"{repo_id}@{branch} already holds these {len(uploads)} files: no commit")
            return {"target": f"modelscope:{repo_id}", "revision": branch, "commit": None}
        if remote is None:
            api.create_repo(repo_id, "model", visibility="private" if private else "public")
        elif private:
            ui.warn(f"{repo_id} exists: --private applies to new repos only (visibility kept)")
        ui.info(f"{repo_id}@{branch}: committing {len(changed)} changed of {len(uploads)} files")
        legacy = api.legacy
        big = {u.path for u in uploads if _lfs(u)}
        objects = [{"oid": u.sha256, "size": u.size} for u in uploads if u.path in big]
        wanted = legacy.validate_blobs(repo_id, "model", objects) if objects else {}
        operations = []
        for u in uploads:
            if u.path in big:
                url = wanted.get(u.sha256)
                if url:
                    ui.info(f"uploading {u.path} ({u.size:,} bytes)")
                    if isinstance(u.source, bytes):
                        legacy.upload_blob(url, u.source, u.size)
                    else:
                        with open(u.source, "rb") as fh:
                            legacy.upload_blob(url, fh, u.size)
                        if sha256_file(Path(u.source)) != u.sha256:  # rewritten meanwhile
                            raise PublishError(
                                f"{u.source} changed since the manifest was written",
                                "ship the bundle again; nothing was committed",
                            )
                operations.append(
                    {
                        "action": "update" if remote and u.path in remote else "create",
                        "path": u.path,
                        "type": "lfs",
                        "size": u.size,
                        "sha256": u.sha256,
                        "content": "",
                        "encoding": "",
                    }
                )
                continue
            data = u.source if isinstance(u.source, bytes) else Path(u.source).read_bytes()
            operations.append(
                {
                    "action": "update" if remote and u.path in remote else "create",
                    "path": u.path,
                    "type": "normal",
                    "size": len(data),
                    "sha256": "",
                    "content": base64.b64encode(data).decode(),
                    "encoding": "base64",
                }
            )
        info = legacy.create_commit(repo_id, "model", operations, message, revision=branch)
    except DeploykitError:
        raise
    except Exception as exc:
        raise translate(exc, repo_id) from exc
    commit = None
    if isinstance(info, dict):
        commit = info.get("CommitId") or info.get("commit_id") or info.get("Sha")
    return {
        "target": f"modelscope:{repo_id}",
        "revision": branch,
        "commit": str(commit) if commit else "made",
        "changed": changed,
    }
