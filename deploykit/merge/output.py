"""Where a merge writes: never over an input, only into a writable folder, and write failures
as one error of their class."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from deploykit.core.errors import InputError, MergeError


def prepare(out: Path, force: bool) -> None:
    """A new (or, with --force, an existing) output folder in a writable parent."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file", "choose a new --out (a folder)")
    if out.exists() and not force and any(out.iterdir()):
        raise InputError(f"output {out} already exists", "choose a new --out or pass --force")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output folder {out.parent} ({exc.strerror or exc})",
            "choose a --out in a writable folder",
        ) from None
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {out.parent}", "choose a --out in a writable folder")


#: Write failures that mean "no room": a full disk, a quota, a file size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _ours(path: str | os.PathLike, out: Path) -> bool:
    """Whether ``path`` is ``out``, in it, or in its temporary sibling ``.<out>.*``."""
    p = Path(path)
    return any(
        q == out or (q.parent == out.parent and q.name.startswith(f".{out.name}."))
        for q in (p, *p.parents)
    )


@contextlib.contextmanager
def errors(out: Path) -> Iterator[None]:
    """An OSError while writing ``out`` as one error line: no room is a failed merge, an
    unwritable folder bad input, and a file that could not be read names that input."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno not in NO_ROOM and exc.filename and not _ours(exc.filename, out):
            raise InputError(
                f"cannot read {exc.filename} ({reason})", "check the input files"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(
                f"cannot write to {out.parent} ({reason})", "choose a --out in a writable folder"
            ) from None
        raise MergeError(
            f"writing the merged model to {out} failed ({reason}); nothing was left behind",
            "free some disk space or choose another --out",
        ) from None
