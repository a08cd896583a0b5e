"""The step cache: a step is a frozen dataclass whose fields are its identity.

A step's output lives in ``<work>/<name>-<key>/``, where ``key`` hashes every field of the step
(input files enter by their sha256, other steps by their keys, tools by their versions), and
counts as finished only once its marker file is written, last, after an atomic rename. A killed
run never leaves a result that looks finished; a re-run reuses what is finished. The whole plan
is built before anything runs, so ``[n/N]`` counts the real steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deploykit.core import ui
from deploykit.core.fsutil import Sha256Memo, atomic_dir, atomic_write_json
from deploykit.core.paths import cache_dir

MARKER = ".deploykit-step.json"
#: What a step directory is called: ``<label>-<16 hex digits>``; a run killed while writing one
#: leaves ``.<step dir>.<random>.partial`` or ``.<step dir>.old-<pid>`` (atomic_dir's names).
#: Nothing else in a work directory is ever listed or pruned.
_STEP = r"[a-z0-9][a-z0-9_.]*(?:-[a-z0-9_.]+)*-[0-9a-f]{16}"
STEP_DIR = re.compile(_STEP)
LEFTOVER = re.compile(rf"\.{_STEP}\.(?:[^/]+\.partial|old-\d+)")
MEMO = "sha256-memo.json"


def default_work_dir() -> Path:
    return cache_dir() / "work"


@dataclass(frozen=True)
class FileRef:
    """An input file, identified by its content: its name in its folder, size and sha256."""

    name: str
    size: int
    sha256: str


def file_ref(path: Path, memo: Sha256Memo) -> FileRef:
    path = Path(path)
    return FileRef(path.name, path.stat().st_size, memo(path))


def file_refs(directory: Path, memo: Sha256Memo) -> tuple[FileRef, ...]:
    """Every regular file under ``directory`` (hidden ones aside), by content."""
    directory = Path(directory)
    files = [
        p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]
    memo.prefetch(files)
    return tuple(
        FileRef(p.relative_to(directory).as_posix(), p.stat().st_size, memo(p)) for p in files
    )


@dataclass(frozen=True)
class Step:
    """A unit of work. Subclasses add fields (their identity) and implement :meth:`run`."""

    name: ClassVar[str] = "step"

    @property
    def label(self) -> str:
        """How the step is shown and named on disk (``quantize-q4_k_m``)."""
        return self.name

    def identity(self) -> dict[str, Any]:
        """The fields that make up the key (``metadata={"key": False}`` ones are not)."""
        fields = [f for f in dataclasses.fields(self) if f.metadata.get("key", True)]
        return {"step": self.label, **{f.name: _plain(getattr(self, f.name)) for f in fields}}

    @property
    def key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dir(self, work: Path) -> Path:
        return Path(work) / f"{self.label}-{self.key}"

    def run(self, tmp: Path) -> dict[str, Any]:
        """Do the work into ``tmp`` (renamed to :meth:`dir` afterwards); return a result."""
        raise NotImplementedError


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def context(value: Any = None) -> Any:
    """A step field that the step needs to run but that is not part of its identity."""
    return dataclasses.field(default=value, compare=False, metadata={"key": False})


class Runner:
    """Runs a plan of steps in ``work``, reusing finished ones; keeps the timings."""

    def __init__(self, work: Path, *, force: bool, total: int) -> None:
        self.work = Path(work)
        self.force = force
        self.total = total
        self.n = 0
        self.log: list[dict[str, Any]] = []
        self.work.mkdir(parents=True, exist_ok=True)
        self.memo = Sha256Memo(self.work / MEMO)

    def announce(self, text: str) -> None:
        """``[n/N] text`` for a step that is not cached (bundle, ollama)."""
        self.n += 1
        ui.info(f"[{self.n}/{self.total}] {text}")

    def run(self, step: Step) -> tuple[Path, dict[str, Any]]:
        """``step.run`` unless a finished step with the same identity exists."""
        self.n += 1
        final = step.dir(self.work)
        marker = final / MARKER
        if marker.is_file() and not self.force:
            result = self._finished(final, marker, step.label)
            if result is not None:
                ui.info(f"[{self.n}/{self.total}] {step.label}: reusing the finished step")
                entry = {"step": step.label, "dir": str(final), "reused": True, "seconds": 0.0}
                self.log.append(entry)
                return final, result
        ui.info(f"[{self.n}/{self.total}] {step.label} ...")
        started = time.monotonic()
        with atomic_dir(final, replace=True) as tmp:
            result = step.run(tmp)
            outputs = self._outputs(tmp, final)
            record = {"step": step.identity(), "result": result, "outputs": outputs}
            atomic_write_json(tmp / MARKER, record)
        seconds = round(time.monotonic() - started, 2)
        entry = {"step": step.label, "dir": str(final), "reused": False, "seconds": seconds}
        self.log.append(entry)
        return final, result

    def _outputs(self, tmp: Path, final: Path) -> list[dict[str, Any]]:
        """Every file the step wrote, with size and sha256 (what reuse checks)."""
        rows = []
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MARKER]
        self.memo.prefetch(files)
        for p in files:
            rel = p.relative_to(tmp)
            digest = self.memo(p)
            self.memo.remember(p, digest, final / rel)
            rows.append({"path": rel.as_posix(), "size": p.stat().st_size, "sha256": digest})
        return rows

    def _finished(self, final: Path, marker: Path, label: str) -> dict[str, Any] | None:
        """The result of a finished step whose files are still what it wrote, else None.

        Sizes are compared first; a sha256 is computed again only for a file whose stat
        changed since it was hashed (the memo), so checking an untouched step costs nothing."""
        try:
            record = json.loads(marker.read_text())
            result, outputs = record["result"], list(record["outputs"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not a marker this version wrote: do the step again
        for f in outputs:
            path = final / str(f.get("path"))
            ok = path.is_file() and path.stat().st_size == f.get("size")
            if not ok or self.memo(path) != f.get("sha256"):
                ui.warn(f"{label}: {f.get('path')} changed since the step wrote it: doing it again")
                return None
        return result


# --- the work directory -----------------------------------------------------------------------


#: A leftover of a killed run is removed once it is this old (a running step's is younger).
LEFTOVER_AGE = 3600.0


def cache_list(work_dir: Path | None = None) -> list[dict]:
    """What deploykit wrote in the work directory: finished step directories (their marker
    proves it) and what killed runs left (by atomic_dir's names). Nothing else is listed."""
    work = Path(work_dir or default_work_dir())
    out = []
    for d in sorted(work.iterdir()) if work.is_dir() else []:
        if not d.is_dir() or d.is_symlink():
            continue
        finished = bool(STEP_DIR.fullmatch(d.name)) and (d / MARKER).is_file()
        if not finished and not LEFTOVER.fullmatch(d.name):
            continue
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        out.append(
            {"step": d.name, "bytes": size, "finished": finished, "modified": d.stat().st_mtime}
        )
    return out


def cache_prune(work_dir: Path | None = None, older_than_days: float = 0) -> dict:
    """Remove finished steps older than ``older_than_days``, and what killed runs left once it
    is an hour old (a step being written now is left alone)."""
    work = Path(work_dir or default_work_dir())
    now = time.time()
    cutoff = now - older_than_days * 86400
    freed, removed = 0, []
    for entry in cache_list(work):
        old = entry["modified"] <= (cutoff if entry["finished"] else now - LEFTOVER_AGE)
        if old:
            shutil.rmtree(work / entry["step"], ignore_errors=True)
            freed += entry["bytes"]
            removed.append(entry["step"])
    return {"removed": removed, "bytes_freed": freed}
