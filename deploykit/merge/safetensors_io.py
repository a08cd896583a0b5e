"""Read and write safetensors files a tensor (or a chunk) at a time, without memory-mapping.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the data. Because the header only needs dtypes and
shapes, an output shard's header can be written before any tensor is computed, and tensors
streamed into it one by one.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

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


def read_header(path: Path) -> tuple[list[Entry], dict[str, str]]:
    """The tensors of a safetensors file (in data order) and its ``__metadata__``."""
    path = Path(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    meta = header.pop("__metadata__", None) or {}
    entries = [
        Entry(
            name,
            v["dtype"],
            tuple(v["shape"]),
            path,
            8 + n + v["data_offsets"][0],
            8 + n + v["data_offsets"][1],
        )
        for name, v in header.items()
    ]
    entries.sort(key=lambda e: e.begin)
    return entries, meta


def read_tensor(entry: Entry) -> torch.Tensor:
    """Materialise one tensor (a private copy, not a view of a mapped file)."""
    buf = bytearray(entry.end - entry.begin)
    with open(entry.path, "rb") as fh:
        fh.seek(entry.begin)
        fh.readinto(buf)
    if not buf:
        return torch.empty(entry.shape, dtype=entry.torch_dtype)
    return torch.frombuffer(buf, dtype=entry.torch_dtype).reshape(entry.shape)


def iter_chunks(entry: Entry, chunk: int = CHUNK) -> Iterator[bytes]:
    """The raw bytes of one tensor, in chunks that hold whole elements."""
    size = DTYPES[entry.dtype].itemsize
    step = max(size, chunk - chunk % size)
    with open(entry.path, "rb") as fh:
        fh.seek(entry.begin)
        left = entry.end - entry.begin
        while left > 0:
            data = fh.read(min(step, left))
            if not data:
                raise OSError(f"{entry.path} is truncated inside tensor {entry.name}")
            left -= len(data)
            yield data


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
