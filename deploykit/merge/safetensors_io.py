"""Read and write safetensors files a tensor (or a chunk) at a time, without memory-mapping.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the data. Because the header only needs dtypes and
shapes, an output shard's header can be written before any tensor is computed, and tensors
streamed into it one by one.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from deploykit.core.errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}
CHUNK = 16 << 20  # bytes per read when copying or converting untouched tensors


@dataclass(frozen=True)
class Entry:
    """One tensor stored in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    begin: int  # absolute file offsets
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


#: The safetensors library's own bound on the JSON header (it refuses larger headers).
MAX_HEADER = 100_000_000
DAMAGED = "the file is damaged or not a safetensors file: re-download or re-save it"


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}", DAMAGED)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x) -> str:
    """A header value for a message (a hostile header can hold huge ones)."""
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def read_header(path: Path) -> tuple[list[Entry], dict[str, str]]:
    """The tensors of a safetensors file (in data order) and its ``__metadata__``.

    The header is checked as the safetensors library checks it: known dtypes, byte ranges
    that match each tensor's shape and tile the data exactly (no gap, no overlap), and data
    exactly as long as the header says. Anything else is an InputError naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _bad(path, "empty file" if not prefix else f"only {len(prefix)} bytes long")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER or 8 + n > size:
                raise _bad(path, f"header length {n} does not fit a {size}-byte file")
            raw = fh.read(n)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}", DAMAGED) from None
    if len(raw) != n:
        raise _bad(path, "the file was truncated while it was read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _bad(path, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "__metadata__ is not a map of strings")
    entries = [_entry(path, 8 + n, name, v) for name, v in header.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    pos = 8 + n
    for e in entries:
        if e.begin != pos:
            what = "overlaps the tensor before it" if e.begin < pos else "leaves a gap before it"
            raise _bad(path, f"the byte range of tensor {_short(e.name)} {what}")
        pos = e.end
    if pos != size:
        if pos > size:
            raise _bad(
                path,
                f"truncated: the header describes {pos - 8 - n} bytes of tensor data, "
                f"the file holds {size - 8 - n}",
            )
        raise _bad(path, f"{size - pos} bytes follow the last tensor")
    return entries, meta


def _entry(path: Path, start: int, name: str, v) -> Entry:
    """One header entry, checked: dtype, shape, and a byte range of exactly the right size."""
    what = f"tensor {_short(name)}"
    if not isinstance(v, dict):
        raise _bad(path, f"{what} has no dtype, shape and data_offsets")
    dtype, shape, offsets = v.get("dtype"), v.get("shape"), v.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(path, f"{what} has an unknown or unsupported dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(path, f"{what} has a bad shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(path, f"{what} has bad data_offsets {_short(offsets)}")
    need = nbytes(dtype, tuple(shape))
    if offsets[1] - offsets[0] != need:
        raise _bad(
            path,
            f"{what} ({dtype} {_short(shape)}) needs {need} bytes, "
            f"its data_offsets span {offsets[1] - offsets[0]}",
        )
    return Entry(name, dtype, tuple(shape), path, start + offsets[0], start + offsets[1])


def _read_exactly(entry: Entry, fh, n: int, into: memoryview | None = None) -> bytes | memoryview:
    """``n`` bytes of ``entry`` from ``fh`` (into the writable ``into`` of ``n`` bytes when
    given), or an InputError: a short read is never zeros."""
    try:
        data = fh.read(n) if into is None else into[: fh.readinto(into)]
    except OSError as exc:
        raise InputError(f"cannot read {entry.path}: {exc.strerror or exc}", DAMAGED) from None
    if len(data) != n:
        raise _bad(entry.path, f"truncated inside tensor {entry.name!r}")
    return data


def read_tensor(entry: Entry, out: torch.Tensor | None = None) -> torch.Tensor:
    """Materialise one tensor (a private copy, not a view of a mapped file), into ``out``
    (contiguous, of its dtype and shape) when given."""
    if out is not None and out.numel():
        fits = (out.dtype, tuple(out.shape)) == (entry.torch_dtype, tuple(entry.shape))
        if not (fits and out.is_contiguous()):
            raise ValueError(f"{entry.name}: a buffer of {out.dtype} {tuple(out.shape)}")
        buf = memoryview(out.view(-1).view(torch.uint8).numpy())
        if len(buf) != entry.end - entry.begin:
            raise ValueError(f"{entry.name}: {len(buf)} bytes for {entry.end - entry.begin}")
    else:
        buf = bytearray(entry.end - entry.begin)
    if not buf:
        return torch.empty(entry.shape, dtype=entry.torch_dtype)
    try:
        with open(entry.path, "rb") as fh:
            fh.seek(entry.begin)
            got = fh.readinto(buf)
    except OSError as exc:
        raise InputError(f"cannot read {entry.path}: {exc.strerror or exc}", DAMAGED) from None
    if got != len(buf):
        raise _bad(entry.path, f"truncated inside tensor {entry.name!r}")
    if out is not None:
        return out
    return torch.frombuffer(buf, dtype=entry.torch_dtype).reshape(entry.shape)


def iter_chunks(
    entry: Entry, chunk: int = CHUNK, into: Callable[[int], memoryview] | None = None
) -> Iterator[bytes | memoryview]:
    """The raw bytes of one tensor, in chunks that hold whole elements: new ``bytes``, or read
    into the buffer that ``into(n)`` gives for each chunk of ``n`` bytes."""
    size = DTYPES[entry.dtype].itemsize
    step = max(size, chunk - chunk % size)
    try:
        fh = open(entry.path, "rb")  # noqa: SIM115 (closed below; a generator spans the reads)
    except OSError as exc:
        raise InputError(f"cannot read {entry.path}: {exc.strerror or exc}", DAMAGED) from None
    with fh:
        fh.seek(entry.begin)
        left = entry.end - entry.begin
        while left > 0:
            n = min(step, left)
            data = _read_exactly(entry, fh, n, None if into is None else into(n))
            left -= n
            yield data


class TensorFile:
    """A safetensors file read a tensor at a time, through the checked header and reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        entries, self.metadata = read_header(self.path)
        self.entries = {e.name: e for e in entries}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for name, e in self.entries.items()}

    def get_tensor(self, key: str) -> torch.Tensor:
        return read_tensor(self.entries[key])


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * DTYPES[dtype].itemsize


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, as safetensors stores them."""
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def header_bytes(specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """Length prefix + JSON header (padded to 8 bytes) for tensors written in ``specs`` order."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in specs:
        size = nbytes(dtype, shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """``5GB`` → 5e9 bytes (decimal, as Hugging Face counts), ``2GiB`` → 2 * 2**30."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower().removesuffix("b") if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[unit])
