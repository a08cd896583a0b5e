"""The bad-input and fault corpus: one table row per case, four things checked for each.

For every case: the exit code of its class, exactly one ``error:`` line with a hint, no
traceback (and no "internal error"), and no file outside deploykit's own outputs created,
changed or deleted. The case runs in-process (``invoke``) with HOME, the caches and the working
directory inside a temp tree that is snapshotted (paths, sizes, sha256) before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cli import Result, invoke

#: Where a case's HOME, caches and working directory live, inside its temp tree.
HOME, CACHE, CWD = "home", "home/.cache/deploykit", "cwd"


@dataclass
class Case:
    """One bad input or fault. ``args`` may use ``{root}`` (the temp tree); ``setup(root)``
    builds what the case needs; ``match`` must be in the error line; ``may_change`` lists
    paths (relative to the root) deploykit may write (its cache, its own outputs)."""

    id: str
    args: list[str]
    code: int
    match: str
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    may_change: tuple[str, ...] = (CACHE,)
    real_cache: bool = False  # use the real cache (built llama.cpp tools) instead of a fresh one

    def __str__(self) -> str:
        return self.id


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and symlink under ``root``: its size and sha256 (a link: its target)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = (-1, os.readlink(p))
            elif p.is_file():
                out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = (0, "dir")
    return out


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run(case: Case, root: Path) -> Result:
    """Run ``case`` in ``root`` and check the four rules; returns the result."""
    for sub in (HOME, CWD):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if case.setup is not None:
        case.setup(root)
    env = {
        "HOME": str(root / HOME),
        "HF_HOME": str(root / HOME / "hf"),
        "MODELSCOPE_CACHE": str(root / HOME / "ms"),
        "HF_HUB_OFFLINE": "1",
        **({} if case.real_cache else {"DEPLOYKIT_CACHE": str(root / CACHE)}),
        **case.env,
    }
    args = [a.format(root=root) for a in case.args]
    before = snapshot(root)
    with _cwd(root / CWD):
        result = invoke(*args, env=env)
    after = snapshot(root)

    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.returncode == case.code, (case.id, result.returncode, result.stderr[-2000:])
    assert len(errors) == 1, (case.id, result.stderr[-2000:])
    assert case.match in errors[0], (case.id, errors[0])
    assert "(hint: " in errors[0], (case.id, errors[0])
    assert "Traceback" not in result.stderr and "internal error" not in errors[0], case.id
    ours = case.may_change
    changed = {
        p
        for p in set(before) | set(after)
        if before.get(p) != after.get(p) and not any(p == m or p.startswith(m + "/") for m in ours)
    }
    assert not changed, (case.id, sorted(changed))
    return result
