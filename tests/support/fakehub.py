"""A loopback fake model hub speaking both the Hugging Face and the ModelScope protocols.

Enough of each protocol for the real clients' ``snapshot_download`` (reference:
model-hubs.md §1.7, §2.6): HF revision/tree/resolve routes, ModelScope repo/files,
repo?FilePath= and revisions routes. Failure knobs are plain attributes, changed between
requests by the test: ``status`` (+ ``error_code``) answers every API call with that status,
``truncate`` cuts file bodies short, ``bad_sha`` advertises a wrong sha256, ``gated`` demands
a token, ``redirect`` answers HF file requests with a same-origin redirect, ``no_commit`` drops
``X-Repo-Commit`` from them, and ``listing_hook`` rewrites a listing's entries (HF tree,
ModelScope files) into any JSON, malformed ones included. File names are served as given, so a
repo may list hostile ones (``../x``, ``/abs``). Every request is logged in ``requests``
(method, path, headers).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class Repo:
    """One model repo: files per commit and the refs (branches, tags) naming commits."""

    commits: dict[str, dict[str, bytes]]
    refs: dict[str, str]  # "main"/"master"/tags -> commit
    gated_token: str | None = None  # when set: only this bearer token gets in
    lfs: set[str] = field(default_factory=set)  # paths stored through LFS (and LFS_SUFFIXES)

    def is_lfs(self, path: str) -> bool:
        return path in self.lfs or path.endswith(LFS_SUFFIXES)

    def commit_of(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""  # what an upload request sent (tests.support.fakehub_upload)


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    status: int | None = None  # answer every request with this status
    error_code: str | None = None  # X-Error-Code sent with ``status``
    truncate: dict[str, int] = field(default_factory=dict)  # path -> absolute cut-off offset
    bad_sha: set[str] = field(default_factory=set)  # paths whose advertised sha256 is wrong
    redirect: bool = False  # HF resolve answers 302 to a same-origin /cdn/ route
    no_commit: bool = False  # HF file answers carry no X-Repo-Commit
    listing_hook: Callable[[list[dict]], object] | None = None  # rewrites listing entries
    requests: list[Request] = field(default_factory=list)

    def start(self) -> FakeHub:
        hub = self

        class Handler(self.handler()):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self, method: str = "GET") -> list[str]:
        return [r.path for r in self.requests if r.method == method]

    @staticmethod
    def handler() -> type:
        """The request handler class (a subclass of the fake serves more routes)."""
        return _Handler


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # --- plumbing -------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, ms: bool) -> None:
        if ms:
            self._json(status, {"Code": status, "Message": code or "error", "Success": False})
        else:
            headers = {"X-Error-Code": code} if code else {}
            self._json(status, {"error": code or "error"}, headers)

    def _authorised(self, repo: Repo) -> int | None:
        """None when allowed, else 401 (no token) or 403 (wrong token)."""
        if not repo.gated_token:
            return None
        auth = self.headers.get("Authorization", "")
        if not auth:
            return 401
        return None if auth == f"Bearer {repo.gated_token}" else 403

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        fake = self.fake
        fake.requests.append(Request(self.command, self.path, dict(self.headers.items())))
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        ms = path.startswith("/api/v1/")
        if fake.status:
            headers = {"Retry-After": "0"} if fake.status == 429 else {}
            if ms:
                self._json(fake.status, {"Code": fake.status, "Message": "nope"}, headers)
            else:
                code = {"X-Error-Code": fake.error_code} if fake.error_code else {}
                self._json(fake.status, {"error": "nope"}, {**headers, **code})
            return
        try:
            if ms:
                self._modelscope(path, query)
            else:
                self._hf(path)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str, ms: bool) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", ms)
            return None
        if status := self._authorised(repo):
            self._error(status, "GatedRepo", ms)
            return None
        return repo

    def _file(self, repo_path: str, data: bytes, headers: dict) -> None:
        """Serve a file body, honouring ``Range: bytes=N-`` and the ``truncate`` knob."""
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and self.command == "GET":
            start = int(rng[6:].split("-")[0] or 0)
        cut = self.fake.truncate.get(repo_path)
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut is not None and cut > start:
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    # --- Hugging Face ---------------------------------------------------------------------

    def _hf(self, path: str) -> None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
            repo = self._repo(repo_id, ms=False)
            if repo is None:
                return
            commit = repo.commit_of(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", ms=False)
            files = repo.commits[commit]
            if kind == "revision":
                siblings = [{"rfilename": p} for p in files]
                return self._json(200, {"id": repo_id, "sha": commit, "siblings": siblings})
            if kind == "tree":
                entries = [self._hf_entry(p, d, repo) for p, d in sorted(files.items())]
                return self._json(200, self._listing(entries))
        if len(parts) >= 5 and parts[2] in ("resolve", "cdn"):
            repo_id, rev, file_path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if parts[2] == "resolve" and self.fake.redirect:
                target = quote("/" + "/".join([*parts[:2], "cdn", *parts[3:]]))
                return self._send(302, b"", {"Location": target})
            repo = self._repo(repo_id, ms=False)
            if repo is None:
                return
            commit = repo.commit_of(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", ms=False)
            data = repo.commits[commit].get(file_path)
            if data is None:
                return self._send(
                    404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                )
            lfs = repo.is_lfs(file_path)
            etag = sha256(data) if lfs else git_oid(data)
            headers = {"ETag": f'"{etag}"'} | (
                {} if self.fake.no_commit else {"X-Repo-Commit": commit}
            )
            return self._file(file_path, data, headers)
        self._error(404, None, ms=False)

    def _listing(self, entries: list[dict]):
        hook = self.fake.listing_hook
        return entries if hook is None else hook(entries)

    def _hf_entry(self, path: str, data: bytes, repo: Repo) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        if repo.is_lfs(path):
            sha = "0" * 64 if path in self.fake.bad_sha else sha256(data)
            entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return entry

    # --- ModelScope -----------------------------------------------------------------------

    def _modelscope(self, path: str, query: dict) -> None:
        parts = path.strip("/").split("/")  # api v1 models ORG NAME ...
        if parts[2:3] != ["models"] or len(parts) < 6:
            return self._error(404, None, ms=True)
        repo = self._repo("/".join(parts[3:5]), ms=True)
        if repo is None:
            return
        rest = parts[5:]
        if rest == ["revisions"]:
            branches = [{"Revision": r, "CommitId": c} for r, c in repo.refs.items()]
            return self._json(200, {"Code": 200, "Data": {"RevisionMap": {"Branches": branches}}})
        rev = query.get("Revision", ["master"])[0]
        commit = repo.commit_of(rev)
        if commit is None:
            return self._error(404, f"revision {rev} not found", ms=True)
        files = repo.commits[commit]
        if rest == ["repo", "files"]:
            entries = [
                {
                    "Path": p,
                    "Name": p.rsplit("/", 1)[-1],
                    "Type": "blob",
                    "Size": len(d),
                    "Sha256": "0" * 64 if p in self.fake.bad_sha else sha256(d),
                    "Revision": commit,
                }
                for p, d in sorted(files.items())
            ]
            data = {"Files": self._listing(entries)}
            return self._json(200, {"Code": 200, "Data": data, "Success": True})
        if rest == ["repo"]:
            file_path = query.get("FilePath", [""])[0]
            data = files.get(file_path)
            if data is None:
                return self._error(404, "file not found", ms=True)
            return self._file(file_path, data, {"Content-Type": "application/octet-stream"})
        self._error(404, None, ms=True)


def client_env(fake: FakeHub, tmp: Path, source: str = "") -> dict[str, str]:
    """Both real hub clients pointed at ``fake`` with fresh caches under ``tmp`` and retries
    bounded to keep tests fast; ``DEPLOYKIT_HUB=source`` (empty: deploykit's default)."""
    return {
        "HF_ENDPOINT": fake.url,
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_TOKEN": "",
        "MODELSCOPE_ENDPOINT": fake.url,
        "MODELSCOPE_CACHE": str(tmp / "ms"),
        "MODELSCOPE_HOME": str(tmp / "ms-home"),
        "MODELSCOPE_API_TOKEN": "",
        "MODELSCOPE_DOWNLOAD_INTRA_CLOUD": "false",
        "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1",
        "MODELSCOPE_API_MAX_RETRIES": "1",
        "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "1",
        "DEPLOYKIT_HUB": source,
        "USE_MODELSCOPE_HUB": "",
        "DEPLOYKIT_CACHE": str(tmp / "deploykit"),
    }


@contextlib.contextmanager
def in_process(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in this process for the hub clients and restore it after.

    huggingface_hub reads its settings (``HF_ENDPOINT``, ``HF_HOME``, offline mode) when it is
    imported and modelscope_hub keeps a process-wide config; both are re-read on the way in and
    on the way out, so in-process tests (``invoke``, the backends) use the fake hub and fresh
    caches as a subprocess would.
    """
    from huggingface_hub import constants
    from modelscope_hub.config import set_default_config

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    importlib.reload(constants)
    set_default_config(None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        importlib.reload(constants)
        set_default_config(None)
