"""Atomic file and directory writes: nothing half-written ever sits at a final path."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp name beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def publish(tmp: Path, final: Path) -> None:
    """Give a finished temp file beside ``final`` the usual mode (mkstemp makes it 0600) and
    rename it to ``final`` (for files written in pieces, e.g. streamed predictions)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, final)
    _fsync_dir(Path(final).parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(Path(tmp), path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success rename it to ``final``.

    On failure the temp directory is removed and ``final`` is untouched. An existing
    ``final`` is only replaced when ``replace`` is true (it is then removed last).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temp file beside ``final`` for a tool to write (``.<name>.*.partial``).

    On success it is fsynced, given the usual mode and renamed to ``final``; on failure it is
    removed and ``final`` is untouched.
    """
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        publish(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_output_file(
    path: Path, hint: str = "pass --out in a writable folder", *, force: bool = False
) -> None:
    """An output file's folder must exist (or be creatable) and be writable, and an existing
    file there is replaced only with ``force`` (else InputError)."""
    from deploykit.core.errors import InputError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output folder {path.parent} ({exc.strerror})", hint
        ) from None
    if path.is_dir():
        raise InputError(f"{path} is a folder", "pass a file name, not a folder")
    if (path.exists() or path.is_symlink()) and not force:
        raise InputError(f"{path} already exists", "pass --force to replace it, or another --out")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {path.parent} (permission denied)", hint)


#: What copy_file_range says where it cannot copy these files (the plain copy does instead).
_NO_IN_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst``: a reflink (shared blocks, its own inode) where the
    file system can clone, else a copy inside the kernel (``copy_file_range``: no pass through
    user memory), else a plain copy. Never a hard link: damage to one file must not reach the
    other."""
    import fcntl

    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), 0x40049409, fin.fileno())  # FICLONE
            return
        except OSError:
            pass
        left = os.fstat(fin.fileno()).st_size
        in_kernel = getattr(os, "copy_file_range", None)  # Linux only
        try:
            while in_kernel and left > 0 and (n := in_kernel(fin.fileno(), fout.fileno(), left)):
                left -= n
        except OSError as exc:
            if exc.errno not in _NO_IN_KERNEL_COPY:
                raise
        shutil.copyfileobj(fin, fout, 1 << 20)  # whatever is left (both offsets moved along)


def link_or_copy(src: Path, dst: Path) -> bool:
    """A new name ``dst`` for the file ``src`` (a hard link: no disk, the same inode) where the
    file system allows it, else a copy; True when linked. Only for files that deploykit never
    writes again and that reuse checks by hash (a step's outputs): writing into ``dst`` would
    write into ``src``; removing ``dst`` removes a name, never ``src``'s data."""
    try:
        os.link(src, dst)  # a symlink's target is linked (the hub caches' blobs)
        return True
    except FileExistsError:
        raise
    except OSError:  # another file system, a link count at its limit, protected_hardlinks
        shutil.copyfile(src, dst)
        return False


#: The most bytes handed to one write(): on this project's machines (Linux 6.18, ext4, a VM)
#: writing 3 GB from memory took 1.9 s in 1 MiB writes, 9.5 s in 4 MiB ones and 19.6 s in
#: 16 MiB ones (a whole tensor per write: 136 MiB ones, 71 s for 6 GB); reads do not care.
WRITE_PIECE = 1 << 20


def write_all(fh, data) -> None:
    """Write the bytes-like ``data`` to the file object ``fh`` whole, ``WRITE_PIECE`` bytes at
    a time (a raw file's short writes are continued)."""
    view = memoryview(data).cast("B")
    i = 0
    while i < len(view):
        piece = view[i : i + WRITE_PIECE]
        n = fh.write(piece)
        n = len(piece) if n is None else n  # a file-like object that does not count
        if n <= 0:
            raise OSError(f"a write to {getattr(fh, 'name', 'a file')} wrote nothing")
        i += n


class DirectFile:
    """A new file written around the page cache (``O_DIRECT``) where the file system allows
    it, through one reused, aligned buffer: a file object for ``write_all`` (and gguf-py).

    A big output written through the page cache needs a fresh page of memory per 4 KiB: on
    this project's machines (a VM that hands free memory back to its host) 2 GB took 5.9 to
    13.1 s that way and 1.4 to 1.6 s written direct (``dd``, measured side by side), and
    elsewhere a file read once later gains nothing from evicting the cache for it. Where the
    file system refuses direct I/O (``EINVAL``, at open or at a write) it is written buffered.
    The last block is written whole and the file cut to its length on :meth:`close`."""

    BLOCK = 4096  # what a direct write's offset, length and buffer are aligned to
    STAGE = 8 << 20

    def __init__(self, path: Path) -> None:
        import mmap

        self.name = str(path)
        self._stage = mmap.mmap(-1, self.STAGE)  # page-aligned, and reused for every block
        self._view = memoryview(self._stage)
        self._pos = self._size = 0
        self._failed = False  # a write failed: what is staged is never written after it
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self._direct = getattr(os, "O_DIRECT", 0)  # Linux and some BSDs
        try:
            try:
                self._fd = os.open(path, flags | self._direct, 0o666)
            except OSError as exc:
                if not self._direct or exc.errno != errno.EINVAL:
                    raise
                self._fd, self._direct = os.open(path, flags, 0o666), 0
        except BaseException:
            self._view.release()
            self._stage.close()
            raise

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        i = 0
        while i < len(view):
            n = min(len(view) - i, self.STAGE - self._pos)
            self._view[self._pos : self._pos + n] = view[i : i + n]
            self._pos += n
            i += n
            if self._pos == self.STAGE:
                self._flush(self.STAGE)
        self._size += len(view)
        return len(view)

    def _flush(self, n: int) -> None:
        if self._failed:
            raise OSError(f"an earlier write to {self.name} failed")
        self._failed, done = True, 0  # until every byte is written
        while done < n:
            try:
                with self._view[done:n] as piece:  # released even when the write fails
                    wrote = os.write(self._fd, piece)
            except OSError as exc:
                if not self._direct or exc.errno != errno.EINVAL:
                    raise
                import fcntl  # this file system takes no direct writes (or not this one)

                fcntl.fcntl(
                    self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~self._direct
                )
                self._direct = 0
                continue
            if wrote <= 0:
                raise OSError(f"a write to {self.name} wrote nothing")
            done += wrote
        self._pos, self._failed = 0, False

    def tell(self) -> int:
        """The position: the bytes written so far."""
        return self._size

    def flush(self) -> None:
        """Nothing: staged bytes reach the file a whole stage at a time, and on close."""

    def close(self, flush: bool = True) -> None:
        """Write what is staged (unless not ``flush``: after a failure) and close."""
        if self._fd < 0:
            return
        try:
            if self._pos and flush and not self._failed:
                tail = -self._pos % self.BLOCK if self._direct else 0
                self._view[self._pos : self._pos + tail] = bytes(tail)
                self._flush(self._pos + tail)
                if tail:
                    os.ftruncate(self._fd, self._size)
        finally:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            finally:
                self._view.release()
                self._stage.close()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(flush=exc_type is None)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file in one streaming pass."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def disk_free(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(folder: Path, needed: int, error: type[Exception], what: str, hint: str):
    """Raise ``error`` before starting when ``folder`` lacks ``needed`` bytes (plus 5%)."""
    free = disk_free(folder)
    if free < needed * 1.05:
        raise error(
            f"not enough disk space in {folder}: {what} needs about {fmt_bytes(needed)} "
            f"({needed} bytes), {fmt_bytes(free)} free",
            hint,
        )


class Sha256Memo:
    """sha256 of files, remembered in a JSON file so that big inputs are hashed once.

    An entry is keyed on the path, size, mtime_ns, ctime_ns and inode: any write changes the
    ctime (which a user cannot set back), so a file rewritten in place is hashed again.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memo: dict[str, str] = {}
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(Path(path).read_text())
                if isinstance(loaded, dict):
                    self._memo = {k: v for k, v in loaded.items() if isinstance(v, str)}

    @staticmethod
    def key(path: Path, named: Path | None = None) -> str:
        """The memo key of ``path`` (stat of ``path``, under the name ``named`` if given)."""
        st = Path(path).stat()
        name = Path(named or path).resolve()
        return f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"

    def remember(self, path: Path, digest: str, named: Path) -> None:
        """Record ``digest`` for ``path`` as it will be known once renamed to ``named`` (a
        rename keeps the inode and times, so the entry stays valid)."""
        self._memo[self.key(path, named)] = digest
        self._save()

    def __call__(self, path: Path) -> str:
        key = self.key(path)
        if key not in self._memo:
            self._memo[key] = sha256_file(path)
            self._save()
        return self._memo[key]

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self._memo)

    def prefetch(self, paths: list[Path]) -> None:
        """Hash the files of ``paths`` not known yet, one per core at a time (hashlib lets go
        of the GIL), so that the calls for them that follow are lookups."""
        from concurrent.futures import ThreadPoolExecutor

        todo = {k: p for p in paths if (k := self.key(p)) not in self._memo}
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            self._memo.update(zip(todo, pool.map(sha256_file, todo.values()), strict=True))
        self._save()

    def copy(self, src: Path, dst: Path) -> str:
        """Copy ``src`` to a new file ``dst`` (:func:`copy_file`) and return the copy's sha256,
        read from the copy itself. It must equal ``src``'s known one: a cached file damaged
        without a trace in its times, or a faulty copy, is a VerificationError, not a shipped
        file."""
        from deploykit.core.errors import VerificationError

        digest = self(src)
        copy_file(src, dst)
        got = self(dst)
        if got != digest:
            raise VerificationError(
                f"the copy of {src} has sha256 {got}, not the {digest} it was checked with: "
                "the file changed since, or the copy is damaged",
                "run again with --force to redo the steps; check the disk",
            )
        return got


def _forms(path: Path) -> list[Path]:
    """A path as written (made absolute, ``..`` removed) and with its links resolved."""
    return list(dict.fromkeys((Path(os.path.abspath(path)), Path(path).resolve())))


def check_not_input(out: Path, inputs: list[Path | None], what: str = "--out") -> None:
    """An output is never an input, a folder above one, or an existing file inside an input
    folder (``--force`` or not): InputError naming both."""
    from deploykit.core.errors import InputError

    existing = Path(out).exists()
    for o in _forms(out):
        for p in (q for path in inputs if path is not None for q in _forms(path)):
            inside = existing and p.is_dir() and p in o.parents
            if o == p or o in p.parents or inside:
                how = "is" if o == p else "holds" if o in p.parents else "is inside"
                raise InputError(
                    f"{what} {out} {how} the input {p}",
                    f"choose another {what}: deploykit never replaces an input or a folder "
                    "above one",
                )
