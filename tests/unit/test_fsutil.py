"""Atomic writes (a failure never leaves a half-written file or directory at the final path),
copies and the sha256 memo."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from deploykit.core import fsutil
from deploykit.core.fsutil import Sha256Memo, atomic_dir, atomic_write_text, copy_file, sha256_file


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


def _big(path, n=3 << 20):
    data = os.urandom(n)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("in_kernel", ["yes", "unsupported", "absent"])
def test_copy_file_copies_every_byte_into_a_new_file(tmp_path, monkeypatch, in_kernel):
    if in_kernel == "unsupported":  # a file system without it: the plain copy does it all

        def unsupported(*args):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", unsupported)
    elif in_kernel == "absent":  # not Linux
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    data = _big(tmp_path / "src")
    copy_file(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert (tmp_path / "dst").stat().st_ino != (tmp_path / "src").stat().st_ino
    with pytest.raises(FileExistsError):  # never over an existing file
        copy_file(tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_link_or_copy_links_else_copies_and_never_replaces(tmp_path, monkeypatch, refusal):
    """A hard link where the file system allows (the same inode, no disk); a copy where it
    refuses (another file system, protected_hardlinks, too many links); an existing file is
    never replaced either way."""
    data = _big(tmp_path / "src", 1 << 16)
    assert fsutil.link_or_copy(tmp_path / "src", tmp_path / "linked") is True
    assert (tmp_path / "linked").stat().st_ino == (tmp_path / "src").stat().st_ino
    (tmp_path / "linked").unlink()  # removing the name leaves the file
    assert (tmp_path / "src").read_bytes() == data

    def refuse(*args, **kwargs):
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "link", refuse)
    assert fsutil.link_or_copy(tmp_path / "src", tmp_path / "copied") is False
    assert (tmp_path / "copied").read_bytes() == data
    assert (tmp_path / "copied").stat().st_ino != (tmp_path / "src").stat().st_ino
    monkeypatch.undo()
    (tmp_path / "other").write_bytes(b"the user's")
    with pytest.raises(FileExistsError):
        fsutil.link_or_copy(tmp_path / "src", tmp_path / "other")
    assert (tmp_path / "other").read_bytes() == b"the user's"


def test_copy_file_finishes_a_copy_the_kernel_stopped_halfway(tmp_path, monkeypatch):
    real, calls = os.copy_file_range, []

    def once(src, dst, count, *args):
        if calls:
            raise OSError(errno.EINVAL, "not here")
        calls.append(count)
        return real(src, dst, count // 2)

    monkeypatch.setattr(os, "copy_file_range", once)
    data = _big(tmp_path / "src")
    copy_file(tmp_path / "src", tmp_path / "dst")
    assert calls and (tmp_path / "dst").read_bytes() == data


def test_memo_prefetch_hashes_each_file_once(tmp_path, monkeypatch):
    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        _big(f, 1 << 20)
    memo = Sha256Memo(tmp_path / "memo.json")
    memo.prefetch(files)
    hashed = []
    monkeypatch.setattr(fsutil, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    assert [memo(f) for f in files] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert hashed == []  # prefetched: lookups only
    assert memo.copy(files[0], tmp_path / "copy") == memo(files[0])
    assert hashed == [tmp_path / "copy"]  # the copy is read itself


def test_memo_copy_refuses_a_copy_that_is_not_what_was_checked(tmp_path, monkeypatch):
    from deploykit.core.errors import VerificationError

    src = tmp_path / "src"
    _big(src, 1 << 20)
    # a memo that would not notice (keyed on the name alone) ...
    monkeypatch.setattr(Sha256Memo, "key", staticmethod(lambda p, named=None: str(named or p)))
    memo = Sha256Memo(None)
    memo(src)
    with open(src, "r+b") as fh:  # ... and damage to the checked file
        fh.write(b"damaged")
    with pytest.raises(VerificationError, match="not the .* it was checked with"):
        memo.copy(src, tmp_path / "dst")  # the copy, read itself, tells


def test_write_all_writes_every_byte_in_pieces_and_continues_short_writes():
    class Raw:  # a raw file: takes at most 1000 bytes per call
        def __init__(self, limit=1000):
            self.data, self.sizes, self.limit = bytearray(), [], limit

        def write(self, b):
            n = min(len(b), self.limit)
            self.data += bytes(b[:n])
            self.sizes.append(len(b))
            return n

    data = os.urandom(2 * fsutil.WRITE_PIECE + 12345)
    raw = Raw()
    fsutil.write_all(raw, data)
    assert bytes(raw.data) == data and max(raw.sizes) <= fsutil.WRITE_PIECE
    whole = Raw(limit=1 << 40)
    fsutil.write_all(whole, data)
    assert bytes(whole.data) == data and len(whole.sizes) == 3
    with pytest.raises(OSError, match="wrote nothing"):
        fsutil.write_all(Raw(limit=0), b"x")


def test_copy_file_does_not_hide_a_real_write_error(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    _big(tmp_path / "src", 1 << 16)
    with pytest.raises(OSError, match="No space"):
        copy_file(tmp_path / "src", tmp_path / "dst")


@pytest.fixture
def small_stage(monkeypatch):
    monkeypatch.setattr(fsutil.DirectFile, "STAGE", 3 * fsutil.DirectFile.BLOCK)


@pytest.mark.parametrize(
    "sizes",
    [[], [1], [4095], [4096], [3 * 4096], [3 * 4096 + 1], [5, 70000, 1, 4091, 12288, 7], [40000]],
)
def test_direct_file_writes_exactly_the_bytes_given(tmp_path, small_stage, sizes):
    pieces = [os.urandom(n) for n in sizes]
    with fsutil.DirectFile(tmp_path / "f") as fh:
        for p in pieces:
            assert fh.write(p) == len(p)
        assert fh.tell() == sum(sizes)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_direct_file_writes_buffered_where_direct_io_is_refused(tmp_path, monkeypatch, small_stage):
    real_open, real_write, calls = os.open, os.write, []
    o_direct = getattr(os, "O_DIRECT", 0)

    def no_direct_open(path, flags, *args):
        if flags & o_direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def no_direct_write(fd, data):  # a file system that opens direct but refuses the write
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & o_direct:
            calls.append("refused")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    data = os.urandom(50001)
    monkeypatch.setattr(os, "write", no_direct_write)
    for patched_open in (no_direct_open, real_open):
        monkeypatch.setattr(os, "open", patched_open)
        with fsutil.DirectFile(tmp_path / "f") as fh:
            fsutil.write_all(fh, data)
        assert (tmp_path / "f").read_bytes() == data
    if o_direct:  # opened direct the second time, refused once, then buffered
        assert calls == ["refused"]


def test_direct_file_does_not_hide_a_real_write_error(tmp_path, monkeypatch, small_stage):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"), fsutil.DirectFile(tmp_path / "f") as fh:
        fh.write(os.urandom(5 * 4096))
    with pytest.raises(OSError, match="No space left"), fsutil.DirectFile(tmp_path / "g") as fh:
        fh.write(b"tail only")  # staged: written, and refused, on close


def test_direct_file_writes_nothing_more_after_a_failed_write(tmp_path, monkeypatch, small_stage):
    """Closed (not as a context manager) after a write failed, it does not write the staged
    bytes at a moved offset, and it refuses further writes."""
    real_write, calls = os.write, []

    def fails_once(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fails_once)
    fh = fsutil.DirectFile(tmp_path / "f")
    data = os.urandom(3 * fsutil.DirectFile.STAGE + 10)
    with pytest.raises(OSError, match="Input/output"):
        fh.write(data)
    with pytest.raises(OSError, match="an earlier write .* failed"):
        fh.write(b"more")
    fh.close()
    assert (tmp_path / "f").read_bytes() == data[: fsutil.DirectFile.STAGE]
