"""Resolve a model id (or an adapter's base) and download it from Hugging Face or ModelScope.

``pull`` lists the repo through the real client, picks what deployment needs (safetensors,
JSON configs, tokenizer files, chat template, license; never pickles unless asked), downloads
with the client's ``snapshot_download`` into the client's own cache, checks every file's size
and hash against the listing, and writes ``deploykit_pull.json`` (source, id, commit, files
with sizes and sha256) next to the files. ``--out`` copies the snapshot to a plain directory.
When the hub is unreachable a cached snapshot is used. Tokens come from the clients' own
environment variables and never appear in output, errors or records.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import DownloadError, InputError
from deploykit.core.fsutil import atomic_dir, atomic_write_json, check_not_input
from deploykit.hub.backend import (
    COMMIT,
    HUBS,
    Backend,
    Listing,
    RemoteFile,
    Unreachable,
    as_disk_full,
    backend,
    join,
    redacted_logs,
)

RECORD = "deploykit_pull.json"

#: What deployment needs: weights, configs, tokenizer files, chat template, license.
DEFAULT_INCLUDE = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "spiece.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "LICENSE*",
    "LICENCE*",
    "license*",
    "NOTICE*",
)
#: Pickled weights: code runs when they are loaded, so only with ``allow_pickle``.
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
SOURCE_ENV = "DEPLOYKIT_HUB"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


# --- which hub, which id --------------------------------------------------------------------


def configured_source() -> str | None:
    """The hub the environment asks for: ``DEPLOYKIT_HUB``, else ``USE_MODELSCOPE_HUB=1``."""
    value = os.environ.get(SOURCE_ENV, "").strip().lower()
    if value:
        aliases = {"hf": "hf", "huggingface": "hf", "modelscope": "modelscope", "ms": "modelscope"}
        if value not in aliases:
            raise InputError(
                f"{SOURCE_ENV}={value} is not a hub", f"set {SOURCE_ENV} to hf or modelscope"
            )
        return aliases[value]
    if os.environ.get("USE_MODELSCOPE_HUB", "").strip().lower() in ("1", "true", "yes", "on"):
        return "modelscope"
    return None


def pick_source(source: str = "auto") -> str:
    """``hf``/``modelscope`` as given; ``auto``: the environment's choice, else Hugging Face."""
    if source in HUBS:
        return source
    if source != "auto":
        raise InputError(f"unknown --source {source}", "use hf, modelscope or auto")
    return configured_source() or "hf"


def looks_like_hub_id(ref: str) -> bool:
    """``owner/name`` with hub-legal characters (and not an existing local path)."""
    return bool(HUB_ID.fullmatch(ref)) and ".." not in ref and not Path(ref).exists()


@dataclass(frozen=True)
class HubRef:
    """A hub model named by a reference: id, and the hub/revision when the reference says."""

    id: str
    source: str | None = None
    revision: str | None = None


_HF_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")
_MS_CACHE = re.compile(r"modelscope/(?:hub/)?models/([^/]+)/([^/]+?)/?$")
_MS_CACHE_NEW = re.compile(r"modelscope/(?:hub/)?models/([^/]+?)--([^/]+)/snapshots/([^/]+)/?$")


def hub_ref(ref: str) -> HubRef | None:
    """The hub model behind ``ref``: a hub id, or a hub cache path from another machine
    (``…/models--Qwen--Qwen2.5-7B/snapshots/<commit>``, ``…/modelscope/hub/models/Qwen/…``)."""
    text = ref.replace("\\", "/")
    if m := _HF_CACHE.search(text):
        return HubRef(f"{m[1]}/{m[2]}", "hf", m[3])
    if m := _MS_CACHE_NEW.search(text):
        return HubRef(f"{m[1]}/{m[2]}", "modelscope", m[3])
    if m := _MS_CACHE.search(text):  # the legacy layout writes "." as "___"
        return HubRef(f"{m[1]}/{m[2].replace('___', '.')}", "modelscope")
    if looks_like_hub_id(text):
        return HubRef(text)
    return None


# --- patterns -----------------------------------------------------------------------------


def _match(path: str, patterns: list[str]) -> bool:
    """The clients' matching: fnmatch, ``*`` crosses ``/``, a trailing ``/`` means a folder."""
    pats = [p + "*" if p.endswith("/") else p for p in patterns]
    return any(fnmatch.fnmatchcase(path, p) for p in pats)


def _selected(path: str, allow: list[str], ignore: list[str]) -> bool:
    return _match(path, allow) and not _match(path, ignore)


def patterns(
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
    allow_pickle: bool = False,
) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns: ``include`` replaces the defaults, ``exclude`` adds to the
    exclusions, and pickled weights stay excluded unless ``allow_pickle``."""
    allow = list(include) or [*DEFAULT_INCLUDE, *(PICKLES if allow_pickle else ())]
    ignore = [*exclude, *(() if allow_pickle else PICKLES)]
    return allow, ignore


# --- hashing and the record ---------------------------------------------------------------


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file in one pass."""
    sha, git = hashlib.sha256(), hashlib.sha1()
    git.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            git.update(block)
    return sha.hexdigest(), git.hexdigest()


def _local_files(root: Path, allow: list[str], ignore: list[str]) -> list[str]:
    """Files under ``root`` (hidden folders and our record aside) the patterns select."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if name != RECORD and not name.startswith(".") and _selected(rel, allow, ignore):
                out.append(rel)
    return out


def _verify(hub: Backend, repo_id: str, root: Path, expected: list[RemoteFile]) -> list[dict]:
    """Size and hash of every expected file; a mismatch is an integrity failure."""
    total = sum(f.size or 0 for f in expected)
    rows = []
    with ui.progress_bar("verifying", total, unit="bytes") as bar:
        for f in expected:
            path = join(root, repo_id, f.path)
            if not path.is_file():
                raise hub.integrity(f.path, f"missing from the downloaded snapshot {root}")
            size = path.stat().st_size
            sha, git = _hashes(path)
            bad = None
            if f.size is not None and size != f.size:
                bad = f"{size} bytes, the hub lists {f.size}"
            elif f.sha256 and sha != f.sha256.lower():
                bad = f"sha256 {sha}, the hub lists {f.sha256}"
            elif f.git_oid and git != f.git_oid.lower():
                bad = f"git blob id {git}, the hub lists {f.git_oid}"
            if bad:
                _discard(path, hub.cache_root())  # so that the next pull fetches it again
                raise hub.integrity(f.path, bad)
            rows.append({"path": f.path, "size": size, "sha256": sha})
            bar.advance(bar.task_ids[0], size)
    return rows


def _discard(path: Path, cache: Path) -> None:
    """Remove a bad file from the cache: the link and, for HF's cache, the blob it names
    (only when that blob is inside the hub's cache: a link elsewhere is not ours)."""
    target = path.resolve()
    for p in (path, target) if target.is_relative_to(Path(cache).resolve()) else (path,):
        with contextlib.suppress(OSError):
            p.unlink()


def read_record(path: Path) -> dict | None:
    """The ``deploykit_pull.json`` in model directory ``path``, if any."""
    try:
        return json.loads((Path(path) / RECORD).read_text())
    except (OSError, ValueError):
        return None


# --- pull ---------------------------------------------------------------------------------


def _check_weights(repo_id: str, listing: Listing, chosen: list[RemoteFile], defaults: bool):
    if not chosen:
        raise InputError(
            f"no file of {repo_id} matches the include/exclude patterns",
            "check --include/--exclude (globs match repo paths, e.g. '*.safetensors'); "
            "pickled files (*.bin, *.pt, *.pth) also need --allow-pickle",
        )
    if not defaults or any(f.path.endswith(".safetensors") for f in chosen):
        return
    pickled = [f.path for f in listing.files if _match(f.path, list(PICKLES))]
    if pickled and not any(_match(f.path, list(PICKLES)) for f in chosen):
        raise InputError(
            f"{repo_id} has only pickled weights ({', '.join(pickled[:3])}), no safetensors",
            "use a safetensors revision of the model, or pass --allow-pickle if you trust "
            "the repo: pickles run code when loaded",
        )
    if not pickled:
        ui.warn(f"{repo_id} has no weight files (config/tokenizer only)")


def _check_space(hub: Backend, repo_id: str, rev: str, listing: Listing, chosen, out) -> None:
    """Fail before downloading when the files cannot fit."""
    have = hub.snapshot_dir(repo_id, rev, listing.commit)
    need = sum(f.size or 0 for f in chosen if not join(have, repo_id, f.path).is_file())
    wants = [(hub.cache_root(), need)]
    if out is not None:
        wants.append((Path(out), sum(f.size or 0 for f in chosen)))
    for where, n in wants:
        probe = Path(where).resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if n > free:
            raise DownloadError(
                f"disk full: {repo_id} needs {n} bytes under {where}, only {free} are free",
                "free some space, or point HF_HOME / MODELSCOPE_CACHE / --out at a bigger disk",
            )


def _copy_out(src: Path, files: list[dict], out: Path, record: dict) -> None:
    """Copy the snapshot's files (symlinks resolved) into ``out``, atomically."""
    repo_id = record["id"]
    try:
        with atomic_dir(out, replace=out.exists()) as tmp:
            for f in files:
                dest = join(tmp, repo_id, f["path"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(join(src, repo_id, f["path"]), dest)
            atomic_write_json(tmp / RECORD, {**record, "path": str(out)})
    except OSError as exc:
        if full := as_disk_full(exc, out):
            raise full from exc
        raise


@redacted_logs()
def pull(
    model_id: str,
    *,
    source: str = "auto",
    revision: str | None = None,
    out: Path | str | None = None,
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
    allow_pickle: bool = False,
    force: bool = False,
) -> dict:
    """Download ``model_id`` (filtered) and return the record of what was fetched.

    The files land in the client's cache (``$HF_HOME``/``$MODELSCOPE_CACHE``) or, with
    ``out``, are copied to that plain directory (replaced only with ``force``).
    """
    if not HUB_ID.fullmatch(model_id):
        raise InputError(
            f"{model_id!r} is not a hub model id", "use OWNER/NAME, e.g. Qwen/Qwen2.5-7B-Instruct"
        )
    hub = backend(pick_source(source))
    rev = revision or hub.default_revision
    out = Path(out).expanduser().resolve() if out is not None else None
    if out is not None:  # --force replaces --out wholesale: never where the user works
        check_not_input(out, [Path.cwd(), Path.home()])
    if out is not None and out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists", "choose a new --out or pass --force")
    allow, ignore = patterns(include, exclude, allow_pickle)

    ui.info(f"pulling {model_id}@{rev} from {hub.label} ({hub.endpoint()})")
    offline = None
    try:
        listing = hub.listing(model_id, rev)
    except Unreachable as exc:
        offline, listing = exc, None
    if listing is not None:
        chosen = [f for f in listing.files if _selected(f.path, allow, ignore)]
        _check_weights(model_id, listing, chosen, defaults=not include)
        _check_space(hub, model_id, rev, listing, chosen, out)
        try:
            # exactly the checked names: a hub that lists more the second time gets nothing
            exact = [glob.escape(f.path) for f in chosen]
            path = hub.download(model_id, listing.revision or rev, exact, [])
        except Unreachable as exc:
            offline = exc
        else:
            files = _verify(hub, model_id, path, chosen)
    if offline is not None:
        path, files, listing = _from_cache(hub, model_id, rev, allow, ignore, offline)

    previous = read_record(path) or {}
    commit = listing.commit if listing is not None else None
    if commit is None and previous.get("id") == model_id and previous.get("source") == hub.name:
        commit = previous.get("commit")
    if commit is None and hub.name == "hf" and COMMIT.fullmatch(path.name):
        commit = path.name
    record = {
        "source": hub.name,
        "hub": hub.label,
        "endpoint": hub.endpoint(),
        "id": model_id,
        "revision": rev,
        "commit": commit,
        "files": files,
        "bytes": sum(f["size"] for f in files),
        "include": allow,
        "exclude": ignore,
        "from_cache_offline": offline is not None,
        "client": hub.client(),
        "deploykit": __version__,
        "path": str(path),
    }
    try:
        atomic_write_json(path / RECORD, record)
    except OSError as exc:
        if full := as_disk_full(exc, path):
            raise full from exc
        raise
    if out is not None:
        check_not_input(out, [path], what="--out")  # never over the snapshot it copies from
        _copy_out(path, files, out, record)
        record["path"] = str(out)
    ui.info(f"{model_id}@{(commit or rev)[:12]}: {len(files)} files, {record['bytes']} bytes")
    return record


def _from_cache(
    hub: Backend, model_id: str, rev: str, allow: list[str], ignore: list[str], why: Unreachable
) -> tuple[Path, list[dict], None]:
    """The cached snapshot when the hub cannot be reached; checked against the last record."""
    try:
        path = hub.cached(model_id, rev, allow, ignore)
    except LookupError:
        if why.offline_mode:
            raise DownloadError(
                f"{model_id}@{rev} is not in the {hub.label} cache and HF_HUB_OFFLINE=1",
                "unset HF_HUB_OFFLINE (or set it to 0) to download it",
            ) from None
        other = "modelscope" if hub.name == "hf" else "hf"
        raise DownloadError(
            f"cannot reach {hub.label} at {hub.endpoint()} ({why}) and {model_id}@{rev} "
            "is not cached",
            f"check the network or proxy; or try {HUBS[other]}: --source {other} "
            f"(or {SOURCE_ENV}={other})",
        ) from None
    if not why.offline_mode:
        ui.info(f"{hub.label} unreachable; using the cached snapshot of {model_id}@{rev}")
    names = _local_files(path, allow, ignore)
    previous = read_record(path) or {}
    known = {}
    if previous.get("id") == model_id and previous.get("source") == hub.name:
        known = {f["path"]: f for f in previous.get("files", [])}
    expected = [
        RemoteFile(n, known.get(n, {}).get("size"), sha256=known.get(n, {}).get("sha256"))
        for n in names
    ]
    return path, _verify(hub, model_id, path, expected), None
