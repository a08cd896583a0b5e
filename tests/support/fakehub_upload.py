"""The upload side of the Hugging Face API on the loopback fake hub, strictly, for the real
``huggingface_hub`` client's ``create_repo``, ``create_branch`` and ``create_commit``.

Written from the Hub's API documentation and the client's code (huggingface_hub 2.4:
``hf_api.create_repo``/``create_branch``/``_validate_yaml``, ``_commit_api._fetch_upload_modes``
and ``_send_commit``, ``lfs.post_lfs_batch_info``/``lfs_upload``): ``POST /api/repos/create``
(409 when it exists), ``POST /api/validate-yaml``, ``POST /api/models/{repo}/preupload/{rev}``
(upload mode per file and the remote ``oid``), the git-LFS batch API at
``{repo}.git/info/lfs/objects/batch`` with ``basic`` upload and verify actions,
``PUT`` of each object (its sha256 and size are checked), and ``POST
/api/models/{repo}/commit/{rev}`` (NDJSON: a header, ``file`` lines in base64, ``lfsFile`` lines
naming uploaded objects; the upload URLs are pre-signed: a PUT carries no token). Reads
(tree, revision, resolve) are the download fake's. The Xet path is not implemented: tests set
``HF_HUB_DISABLE_XET=1``.

Tokens: ``tokens`` maps a bearer token to ``"write"`` or ``"read"``; an unknown token is a 401
on any request (as the Hub answers "Invalid credentials in Authorization header"), no token or a
read token on a write route a 401 / 403. ``refuse`` maps a route (``create``, ``preupload``,
``batch``, ``commit``, ``branch``) to a status it answers with (429 comes with
``Retry-After``). Every request, with its body, is in ``requests``; ``commits`` lists the
commits made and ``uploaded`` the LFS objects received.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import yaml

from tests.support.fakehub import FakeHub, Repo, Request, _Handler, git_oid, sha256

_OID = re.compile(r"[0-9a-f]{64}")
REGULAR_MAX = 10 * 1024 * 1024  # the Hub stores bigger files, and binary ones, through LFS


@dataclass
class UploadHub(FakeHub):
    tokens: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, int] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    private: set[str] = field(default_factory=set)
    announced: set[str] = field(default_factory=set)  # LFS objects a batch answer may receive

    @staticmethod
    def handler() -> type:
        return _UploadHandler

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.commit_of(rev)]

    def writes(self) -> list[Request]:
        """The requests that change something: every POST and PUT but the YAML check."""
        return [
            r
            for r in self.requests
            if r.method in ("POST", "PUT") and not r.path.startswith("/api/validate-yaml")
        ]


def _commit_id(*parts: bytes) -> str:
    return hashlib.sha1(b"\0".join(parts)).hexdigest()


class _UploadHandler(_Handler):
    fake: UploadHub

    def _token_role(self) -> str | None:
        """ "write"/"read" for a known token, None without one; answers 401 (and returns
        "bad") for a token the hub does not know."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        role = self.fake.tokens.get(auth.removeprefix("Bearer "))
        if role is None:
            headers = {"X-Error-Message": "Invalid credentials in Authorization header"}
            self._json(401, {"error": "Invalid credentials in Authorization header"}, headers)
            return "bad"
        return role

    def _route(self) -> None:  # GET and HEAD: the download fake's routes, behind the token
        if self._token_role() == "bad":
            self.fake.requests.append(Request(self.command, self.path, dict(self.headers)))
            return
        super()._route()

    def do_POST(self) -> None:
        self._write()

    def do_PUT(self) -> None:
        self._write()

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _write(self) -> None:
        body = self._read_body()
        fake = self.fake
        fake.requests.append(Request(self.command, self.path, dict(self.headers), body))
        path = unquote(urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        route, args = self._which(parts)
        if route is None:
            return self._json(404, {"error": f"no route {self.command} {path}"})
        role = self._token_role()
        if role == "bad":
            return
        if route.startswith("ms_"):
            return self._ms_write(route, role, body, args)
        if route == "put":  # a pre-signed URL from the batch answer: no token sent, none needed
            if args[1] not in fake.announced:
                return self._json(403, {"error": "no upload was announced for this object"})
        elif route != "validate":
            if role is None:
                return self._json(401, {"error": "You must be authenticated to write"})
            if role != "write":
                return self._json(403, {"error": "You don't have the rights to write here"})
        if route in fake.refuse:
            status = fake.refuse[route]
            headers = {"Retry-After": "0"} if status == 429 else {}
            return self._json(status, {"error": "refused by the test"}, headers)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            getattr(self, f"_{route}")(body, *args)

    def _which(self, parts: list[str]) -> tuple[str | None, tuple]:
        m = self.command
        if parts[:2] == ["api", "v1"] or parts[:1] == ["_mslfs"]:
            return self._ms_which(m, parts)
        if m == "POST" and parts == ["api", "repos", "create"]:
            return "create", ()
        if m == "POST" and parts == ["api", "validate-yaml"]:
            return "validate", ()
        api = len(parts) == 6 and parts[:2] == ["api", "models"]
        if m == "POST" and api and parts[4] in ("preupload", "commit", "branch"):
            return parts[4], ("/".join(parts[2:4]), parts[5])
        lfs = len(parts) == 6 and parts[2:] == ["info", "lfs", "objects", "batch"]
        if m == "POST" and lfs and parts[1].endswith(".git"):
            return "batch", (f"{parts[0]}/{parts[1][:-4]}",)
        if m == "PUT" and len(parts) == 4 and parts[0] == "_lfs":
            return "put", ("/".join(parts[1:3]), parts[3])
        if m == "POST" and len(parts) == 3 and parts[0] == "_lfs-verify":
            return "verify", ("/".join(parts[1:3]),)
        return None, ()

    def _body_json(self, body: bytes, content_type: str = "application/json"):
        if not self.headers.get("Content-Type", "").startswith(content_type):
            self._json(400, {"error": f"expected Content-Type {content_type}"})
            return None
        try:
            return json.loads(body)
        except ValueError:
            self._json(400, {"error": "invalid JSON"})
            return None

    def _repo_rev(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", ms=False)
            return None
        commit = repo.commit_of(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", ms=False)
            return None
        return repo, commit

    # --- routes ---------------------------------------------------------------------------

    def _create(self, body: bytes) -> None:
        req = self._body_json(body)
        if req is None:
            return
        name, org = req.get("name"), req.get("organization")
        if (
            not isinstance(name, str)
            or not isinstance(org, str)
            or req.get("type")
            not in (
                None,
                "model",
            )
        ):
            return self._json(400, {"error": "name, organization and a model type are needed"})
        if req.get("visibility") not in (None, "public", "private"):
            return self._json(400, {"error": "visibility is public or private"})
        repo_id = f"{org}/{name}"
        url = f"{self.fake.url}/{repo_id}"
        if repo_id in self.fake.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        attributes = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"
        first = _commit_id(repo_id.encode())
        self.fake.repos[repo_id] = Repo(
            commits={first: {".gitattributes": attributes}}, refs={"main": first}
        )
        if req.get("visibility") == "private":
            self.fake.private.add(repo_id)
        self._json(200, {"url": url, "name": repo_id, "id": first[:24]})

    def _validate(self, body: bytes) -> None:
        req = self._body_json(body)
        if req is None:
            return
        content = req.get("content")
        if not isinstance(content, str) or req.get("repoType") != "model":
            return self._json(400, {"errors": [{"message": "content and repoType are needed"}]})
        m = re.match(r"\A---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
        if not isinstance(meta, dict | type(None)):
            return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, body: bytes, repo_id: str, rev: str) -> None:
        found = self._repo_rev(repo_id, rev)
        req = self._body_json(body)
        if found is None or req is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        out = []
        for f in req.get("files") or []:
            path, size, sample = f.get("path"), f.get("size"), f.get("sample")
            if not isinstance(path, str) or type(size) is not int or not isinstance(sample, str):
                return self._json(400, {"error": "each file needs path, size and sample"})
            binary = b"\0" in base64.b64decode(sample)
            lfs = binary or size > REGULAR_MAX or path.endswith(".gguf")
            remote = files.get(path)
            oid = None
            if remote is not None:
                oid = sha256(remote) if repo.is_lfs(path) else git_oid(remote)
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json(200, {"files": out, "commitOid": commit})

    def _batch(self, body: bytes, repo_id: str) -> None:
        if repo_id not in self.fake.repos:
            return self._error(404, "RepoNotFound", ms=False)
        req = self._body_json(body, "application/vnd.git-lfs+json")
        if req is None:
            return
        if req.get("operation") != "upload" or req.get("hash_algo") != "sha256":
            return self._json(400, {"message": "operation upload with hash_algo sha256 only"})
        objects = []
        for o in req.get("objects") or []:
            oid, size = o.get("oid"), o.get("size")
            if not (isinstance(oid, str) and _OID.fullmatch(oid)) or type(size) is not int:
                return self._json(422, {"message": "each object needs a sha256 oid and a size"})
            entry = {"oid": oid, "size": size}
            if oid not in self.fake.lfs_objects:
                base = self.fake.url
                self.fake.announced.add(oid)
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {"href": f"{base}/_lfs/{repo_id}/{oid}"},
                    "verify": {"href": f"{base}/_lfs-verify/{repo_id}"},
                }
            objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _put(self, body: bytes, repo_id: str, oid: str) -> None:
        if sha256(body) != oid:
            return self._json(400, {"error": f"the body's sha256 is not {oid}"})
        self.fake.lfs_objects[oid] = body
        self.fake.uploaded.append(oid)
        self._send(200)

    def _verify(self, body: bytes, repo_id: str) -> None:
        req = self._body_json(body)
        if req is None:
            return
        data = self.fake.lfs_objects.get(req.get("oid"))
        if data is None or len(data) != req.get("size"):
            return self._json(404, {"error": "object not found"})
        self._json(200, {})

    def _branch(self, body: bytes, repo_id: str, branch: str) -> None:
        found = self._repo_rev(repo_id, "main")
        req = self._body_json(body)
        if found is None or req is None:
            return
        repo, main = found
        if branch in repo.refs:
            return self._json(409, {"error": "Reference already exists"})
        start = req.get("startingPoint")
        repo.refs[branch] = repo.commit_of(start) if start else main
        self._json(200, {})

    def _commit(self, body: bytes, repo_id: str, rev: str) -> None:
        found = self._repo_rev(repo_id, rev)
        if found is None:
            return
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self._json(400, {"error": "the commit body is NDJSON"})
        repo, parent = found
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            return self._json(400, {"error": "invalid NDJSON"})
        if not lines or lines[0].get("key") != "header":
            return self._json(400, {"error": "the first line is the header"})
        header = lines[0]["value"]
        if not isinstance(header.get("summary"), str) or not header["summary"]:
            return self._json(400, {"error": "a commit needs a summary"})
        files = dict(repo.commits[parent])
        lfs_paths = set()
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path")
            if not isinstance(path, str) or not path or path.startswith("/") or ".." in path:
                return self._json(400, {"error": f"bad path {path!r}"})
            if key == "file":
                if value.get("encoding") != "base64":
                    return self._json(400, {"error": "file content is base64"})
                files[path] = base64.b64decode(value["content"])
                repo.lfs.discard(path)
            elif key == "lfsFile":
                data = self.fake.lfs_objects.get(value.get("oid"))
                if value.get("algo") != "sha256" or data is None or len(data) != value.get("size"):
                    return self._json(400, {"error": f"LFS object of {path} was not uploaded"})
                files[path] = data
                lfs_paths.add(path)
            elif key == "deletedFile":
                files.pop(path, None)
            else:
                return self._json(400, {"error": f"unknown commit line {key!r}"})
        oid = _commit_id(parent.encode(), body)
        repo.commits[oid] = files
        repo.lfs |= lfs_paths
        repo.refs[rev] = oid
        self.fake.commits.append({"repo": repo_id, "revision": rev, "oid": oid, "header": header})
        self._json(
            200,
            {"commitUrl": f"{self.fake.url}/{repo_id}/commit/{oid}", "commitOid": oid},
        )

    # --- ModelScope (modelscope_hub 0.5: LegacyClient create_repo, validate_blobs,
    # upload_blob, create_commit; its answers are {"Code", "Message", "Data", "Success"}) ----

    def _ms(self, status: int, data=None, message: str = "") -> None:
        ok = status < 400
        body = {"Code": 200 if ok else status, "Message": message, "Success": ok}
        if data is not None:
            body["Data"] = data
        headers = {"Retry-After": "0"} if status == 429 else {}
        self._json(status, body, headers)

    def _ms_which(self, m: str, parts: list[str]) -> tuple[str | None, tuple]:
        if m == "POST" and parts == ["api", "v1", "models"]:
            return "ms_create", ()
        repos = len(parts) >= 6 and parts[2:4] == ["repos", "models"]
        if m == "POST" and repos and parts[6:] == ["info", "lfs", "objects", "batch"]:
            return "ms_batch", ("/".join(parts[4:6]),)
        if m == "POST" and repos and len(parts) == 8 and parts[6] == "commit":
            return "ms_commit", ("/".join(parts[4:6]), parts[7])
        if m == "PUT" and len(parts) == 4 and parts[0] == "_mslfs":
            return "ms_put", ("/".join(parts[1:3]), parts[3])
        return None, ()

    def _ms_write(self, route: str, role: str | None, body: bytes, args: tuple) -> None:
        if role is None:
            return self._ms(401, message="login required")
        if role != "write":
            return self._ms(403, message="no permission to write to this repo")
        name = route.removeprefix("ms_")
        if name in self.fake.refuse:
            return self._ms(self.fake.refuse[name], message="refused by the test")
        try:
            req = json.loads(body) if route != "ms_put" else None
        except ValueError:
            return self._ms(400, message="invalid JSON")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            getattr(self, f"_{route}")(req, body, *args)

    def _ms_create(self, req: dict, body: bytes) -> None:
        owner, name = req.get("Path"), req.get("Name")
        if not isinstance(owner, str) or not isinstance(name, str):
            return self._ms(400, message="Path and Name are required")
        if req.get("Visibility") not in (1, 3, 5):
            return self._ms(400, message="Visibility is 1 (private), 3 or 5 (public)")
        repo_id = f"{owner}/{name}"
        if repo_id in self.fake.repos:
            return self._ms(409, message="model already exists")
        first = _commit_id(repo_id.encode())
        self.fake.repos[repo_id] = Repo(commits={first: {}}, refs={"master": first})
        if req["Visibility"] == 1:
            self.fake.private.add(repo_id)
        self._ms(200, {"Path": owner, "Name": name, "Visibility": req["Visibility"]})

    def _ms_batch(self, req: dict, body: bytes, repo_id: str) -> None:
        if repo_id not in self.fake.repos:
            return self._ms(404, message="model not found")
        if req.get("operation") != "upload":
            return self._ms(400, message="operation must be upload")
        objects = []
        for o in req.get("objects") or []:
            oid, size = o.get("oid"), o.get("size")
            if not (isinstance(oid, str) and _OID.fullmatch(oid)) or type(size) is not int:
                return self._ms(400, message="each object needs a sha256 oid and a size")
            entry = {"oid": oid, "size": size}
            if oid not in self.fake.lfs_objects:
                self.fake.announced.add(oid)
                entry["actions"] = {"upload": {"href": f"{self.fake.url}/_mslfs/{repo_id}/{oid}"}}
            objects.append(entry)
        self._ms(200, {"objects": objects})

    def _ms_put(self, req, body: bytes, repo_id: str, oid: str) -> None:
        if oid not in self.fake.announced:
            return self._ms(403, message="no upload was announced for this object")
        if sha256(body) != oid:
            return self._ms(400, message=f"the body's sha256 is not {oid}")
        self.fake.lfs_objects[oid] = body
        self.fake.uploaded.append(oid)
        self._ms(200)

    def _ms_commit(self, req: dict, body: bytes, repo_id: str, rev: str) -> None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._ms(404, message="model not found")
        parent = repo.commit_of(rev)
        if parent is None:
            return self._ms(404, message=f"revision {rev} not found")
        message, actions = req.get("commit_message"), req.get("actions")
        if not isinstance(message, str) or not message or not isinstance(actions, list):
            return self._ms(400, message="commit_message and actions are required")
        files = dict(repo.commits[parent])
        for a in actions:
            path, kind = a.get("path"), a.get("type")
            if not isinstance(path, str) or not path or path.startswith("/") or ".." in path:
                return self._ms(400, message=f"bad path {path!r}")
            if a.get("action") not in ("create", "update", "delete"):
                return self._ms(400, message="action is create, update or delete")
            if a["action"] == "delete":
                files.pop(path, None)
            elif kind == "lfs":
                data = self.fake.lfs_objects.get(a.get("sha256"))
                if data is None or len(data) != a.get("size"):
                    return self._ms(400, message=f"LFS object of {path} was not uploaded")
                files[path] = data
            elif kind == "normal" and a.get("encoding") == "base64":
                files[path] = base64.b64decode(a.get("content") or "")
            else:
                return self._ms(400, message=f"unknown file type {kind!r}")
        oid = _commit_id(parent.encode(), body)
        repo.commits[oid] = files
        repo.refs[rev] = oid
        self.fake.commits.append({"repo": repo_id, "revision": rev, "oid": oid, "message": message})
        self._ms(200, {"CommitId": oid})
