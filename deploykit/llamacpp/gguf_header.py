"""Read a GGUF file's header (metadata and tensor table) fast, without touching tensor data.

``gguf.GGUFReader`` builds one numpy view per array element, which takes seconds for a
150k-token vocabulary; this reader skips arrays it is not asked for, so checking a file's
metadata costs milliseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.model.chat_template import ChatSpec

MAGIC = b"GGUF"
TOKENS = "tokenizer.ggml.tokens"

# GGUFValueType -> struct format (STRING=8 and ARRAY=9 are handled separately)
_SCALAR = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArrayInfo:
    """An array value that was not loaded: its element type and length."""

    type: int
    length: int


@dataclass
class GGUFInfo:
    """A GGUF file's metadata (``kv``) and tensor table (``tensors``: name -> (shape, type))."""

    path: Path
    version: int
    kv: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.kv.get(key, default)

    @property
    def arch(self) -> str | None:
        return self.kv.get("general.architecture")

    @property
    def file_type(self) -> str | None:
        """``general.file_type`` as a name (``F16``, ``Q4_K_M``, ...)."""
        import gguf

        ft = self.kv.get("general.file_type")
        if ft is None:
            return None
        try:
            return gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except ValueError:
            return str(ft)

    def chat_spec(self) -> ChatSpec:
        """What rendering the embedded chat template needs: the template, and BOS / EOS as
        llama.cpp sees them (the vocabulary is read from the file when it was not loaded)."""
        if not isinstance(self.kv.get(TOKENS), list):
            self.kv[TOKENS] = read(self.path, {TOKENS}).kv.get(TOKENS)
        add_bos = self.kv.get("tokenizer.ggml.add_bos_token")
        return ChatSpec(
            self.kv.get("tokenizer.chat_template") or None,
            token_text(self, self.kv.get("tokenizer.ggml.bos_token_id")) or "",
            token_text(self, self.kv.get("tokenizer.ggml.eos_token_id")) or "",
            add_bos if isinstance(add_bos, bool) else None,
            self.path.name,
        )

    def tensor_types(self) -> dict[str, int]:
        """How many tensors have each ggml type."""
        counts: dict[str, int] = {}
        for _, typ in self.tensors.values():
            counts[typ] = counts.get(typ, 0) + 1
        return dict(sorted(counts.items()))


class _Buf:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        (n,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8 + n

    def value(self, vtype: int, load: bool) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("I"), self.unpack("Q")
            if not load:
                if etype == _STRING:
                    for _ in range(n):
                        self.skip_string()
                elif etype in _SCALAR:
                    self.pos += n * struct.calcsize(_SCALAR[etype])
                else:
                    for _ in range(n):
                        self.value(etype, False)
                return ArrayInfo(etype, n)
            if etype in _SCALAR:
                fmt = f"<{n}{_SCALAR[etype]}"
                out = list(struct.unpack_from(fmt, self.data, self.pos))
                self.pos += struct.calcsize(fmt)
                return out
            return [self.value(etype, True) for _ in range(n)]
        return self.unpack(_SCALAR[vtype])


def is_gguf(path: Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def read(path: Path, arrays: frozenset[str] | set[str] = frozenset()) -> GGUFInfo:
    """Parse ``path``'s header; array values are loaded only for the keys in ``arrays``."""
    import mmap

    import gguf

    path = Path(path)
    if not is_gguf(path):
        raise InputError(
            f"{path} is not a GGUF file", "pass a .gguf file written by `deploykit convert`"
        )
    problem = None
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        buf = _Buf(view)
        try:
            buf.pos = 4
            version = buf.unpack("I")
            n_tensors, n_kv = buf.unpack("Q"), buf.unpack("Q")
            info = GGUFInfo(path, version)
            for _ in range(n_kv):
                key = buf.string()
                info.kv[key] = buf.value(buf.unpack("I"), key in arrays)
            for _ in range(n_tensors):
                name = buf.string()
                ndim = buf.unpack("I")
                shape = tuple(buf.unpack("Q") for _ in range(ndim))
                typ, _offset = buf.unpack("I"), buf.unpack("Q")
                try:
                    tname = gguf.GGMLQuantizationType(typ).name
                except ValueError:
                    tname = str(typ)
                info.tensors[name] = (shape, tname)
        except (struct.error, KeyError, UnicodeDecodeError) as exc:
            problem = str(exc)  # raised below: a live traceback would pin the mapping open
        finally:
            buf.data = b""
            view.release()
    if problem is not None:
        raise InputError(
            f"{path} is a truncated or corrupt GGUF file ({problem})",
            "convert or download it again",
        )
    return info


def token_text(info: GGUFInfo, token_id: int | None) -> str | None:
    """The text of token ``token_id`` (needs ``tokenizer.ggml.tokens`` loaded), or None."""
    tokens = info.kv.get(TOKENS)
    if token_id is None or not isinstance(tokens, list) or not 0 <= token_id < len(tokens):
        return None
    return tokens[token_id]
