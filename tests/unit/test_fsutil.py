"""Atomic writes: a failure never leaves a half-written file or directory at the final path."""

from __future__ import annotations

import pytest

from deploykit.core.fsutil import atomic_dir, atomic_write_text


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_does_not_replace_unless_asked(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep").write_text("user file")
    with pytest.raises(FileExistsError), atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert (final / "keep").read_text() == "user file"
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_text_is_readable_by_others(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}" and path.stat().st_mode & 0o044 == 0o044
