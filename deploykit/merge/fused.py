"""The merge fused into the GGUF conversion: the converter takes each tensor from the merge
plan as it writes it, so no merged copy of the model is written to disk.

Each tensor is the one ``merge`` would write (``merge.merged_tensor``: peft's operations in
peft's dtypes, cast to the merge's dtype), fed in the order the converter would read the
merged folder back: the GGUF is the same, byte for byte, as merging then converting.
Untouched tensors are memory-mapped from the base as the converter maps them; cast ones are
cast a chunk at a time into a file-backed buffer, so the converter's memory stays small.
"""

from __future__ import annotations

import gc
import json
import math
import mmap
import os
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploykit.core.errors import ConversionError
from deploykit.core.fsutil import fmt_bytes
from deploykit.llamacpp.hooked import TensorSource
from deploykit.merge import ops
from deploykit.merge.merge import MergePlan, merged_tensor, plan
from deploykit.merge.safetensors_io import CHUNK, DTYPES, Entry, nbytes

#: The adapter operations whose fused GGUF is tested byte for byte against merge-then-convert
#: (LoRA and rsLoRA, DoRA, full tensors: modules_to_save and resized vocabularies, embedding
#: LoRA); an adapter with any other merges to disk first.
FUSED_KINDS = frozenset({"lora", "dora", "replace", "embedding"})
#: Cast tensors larger than this go through a file-backed buffer instead of anonymous memory.
MAPPED_CAST = 64 << 20

PROVIDER = f"{__name__}:tensors"


def refusal(the_plan: MergePlan) -> str | None:
    """Why ``the_plan`` cannot be fused (None when it can)."""
    other = sorted(the_plan.kinds - FUSED_KINDS)
    if other:
        return f"the fused merge is not proven for {', '.join(other)} adapter operations"
    return None


def source(the_plan: MergePlan, scratch: Path, allow_overflow: bool = False) -> TensorSource:
    """A TensorSource for the converter; its plan file, report and cast buffers go in
    ``scratch``, a folder of the caller's (which removes it)."""
    spec = {
        "adapters": [str(a.path.resolve()) for a in the_plan.adapters],
        "base": str(the_plan.base_dir.resolve()),
        "dtype": the_plan.dtype,
        "shard_size": str(the_plan.shard_limit),
        "allow_overflow": allow_overflow,
        "scratch": str(Path(scratch).resolve()),
    }
    plan_file = Path(scratch) / "fused-merge.json"
    plan_file.write_text(json.dumps(spec), encoding="utf-8")
    shapes = {o.name: (o.dtype, o.shape) for o in the_plan.outs}
    casts = [nbytes(o.dtype, o.shape) for o in the_plan.outs if _mapped_cast(o)]
    return TensorSource(PROVIDER, plan_file, shapes, tuple(the_plan.inputs), max(casts, default=0))


def _mapped_cast(o) -> bool:
    """Whether ``o`` is cast through a file-backed buffer (an untouched, large, cast tensor)."""
    src = o.source
    return not o.ops and src.dtype != o.dtype and src.end - src.begin > MAPPED_CAST


def _mapped(entry: Entry) -> torch.Tensor:
    """``entry``'s data memory-mapped (copy-on-write, as the converter maps safetensors)."""
    data = np.memmap(entry.path, mode="c", offset=entry.begin, shape=entry.end - entry.begin)
    return torch.from_numpy(data).view(entry.torch_dtype).reshape(entry.shape)


def _unmapped() -> None:
    """What a region's reference gives before it is first mapped: nothing."""


class CastBuffers:
    """File-backed buffers for the casts of large untouched tensors, all in one unlinked file
    of the scratch folder: their pages are the page cache's, not the process's. A cast reuses
    the bytes of an earlier one once nothing holds that one any more (gguf-py drops a tensor
    once it is written), so a model's embedding and head share their pages: fresh memory is
    the dearest thing a cast touches (on this project's machines, half of a fused 7B-width
    conversion's time was spent giving the file's new pages their first touch)."""

    def __init__(self, scratch: Path) -> None:
        fd, path = tempfile.mkstemp(prefix="cast-", dir=scratch)
        os.unlink(path)  # gone with the process; its pages with the last mapping
        self._file = os.fdopen(fd, "r+b")
        self._regions: list[tuple[int, int, Callable]] = []  # offset, size, what maps it

    def get(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A ``dtype`` tensor of ``shape`` over bytes of the file that no live tensor maps."""
        n = math.prod(shape) * dtype.itemsize
        if not n:
            return torch.empty(shape, dtype=dtype)
        size = -(-n // mmap.PAGESIZE) * mmap.PAGESIZE
        k = self._take(size)
        if k is None:
            gc.collect()  # a written tensor in a reference cycle: freed now, not later
            k = self._take(size)
        if k is None:  # new bytes, allocated first: a full disk is an error here, not a SIGBUS
            end = sum(size for _, size, _ in self._regions)
            try:
                os.posix_fallocate(self._file.fileno(), end, size)
            except OSError as exc:
                raise ConversionError(
                    f"no room in the scratch folder for {fmt_bytes(size)} of cast tensors: "
                    f"{exc.strerror or exc}",
                    "free some disk space (or convert with --outtype auto: nothing is cast)",
                ) from None
            self._regions.append((end, size, _unmapped))
            k = len(self._regions) - 1
        off = self._regions[k][0]
        mapped = np.memmap(self._file, mode="r+", offset=off, shape=(n,), dtype=np.uint8)
        self._regions[k] = (off, size, weakref.ref(mapped))
        return torch.from_numpy(mapped).view(dtype).reshape(shape)

    def _take(self, size: int) -> int | None:
        """The region of ``size`` bytes cut from the smallest free one that holds them (free
        neighbours joined first); None when none does."""
        joined: list[tuple[int, int, Callable]] = []
        for off, n, ref in self._regions:  # in file order, end to end
            if joined and ref() is None and joined[-1][2]() is None:
                joined[-1] = (joined[-1][0], joined[-1][1] + n, _unmapped)
            else:
                joined.append((off, n, _unmapped if ref() is None else ref))
        self._regions = joined
        free = [k for k, (_, n, ref) in enumerate(joined) if ref() is None and n >= size]
        if not free:
            return None
        k = min(free, key=lambda k: joined[k][1])
        off, n, _ = joined[k]
        if n > size:  # the rest stays free
            joined.insert(k + 1, (off + size, n - size, _unmapped))
        joined[k] = (off, size, _unmapped)
        return k


def _cast_mapped(entry: Entry, dtype: torch.dtype, name: str, allow: bool, bufs: CastBuffers):
    """``entry`` cast to ``dtype`` (the merge's cast, overflow check included), a chunk at a
    time into one of ``bufs``."""
    src = _mapped(entry).reshape(-1)
    out = bufs.get(dtype, (src.numel(),))
    step = max(1, CHUNK // src.element_size())
    for i in range(0, src.numel(), step):
        out[i : i + step] = ops.cast(src[i : i + step], dtype, name, allow)
    return out.reshape(entry.shape)


def tensors(model: Any, lazy: Any, plan_file: Path) -> dict[str, Callable[[], Any]]:
    """The provider (run in the converter's process): every output tensor of the merge, in
    the converter's reading order, through the model class's own ``filter_tensors``."""
    spec = json.loads(Path(plan_file).read_text(encoding="utf-8"))
    the_plan = plan(
        [Path(a) for a in spec["adapters"]], Path(spec["base"]), spec["dtype"], spec["shard_size"]
    )
    ads, allow, scratch = the_plan.adapters, bool(spec["allow_overflow"]), Path(spec["scratch"])
    ws = ops.Workspace()  # the converter materialises one tensor at a time
    bufs: list[CastBuffers] = []  # made on the first large cast

    def compute(o) -> torch.Tensor:
        if o.ops:
            return merged_tensor(o, ads, allow, ws)
        if o.source.dtype == o.dtype:  # untouched: the base's bytes, mapped as the converter does
            return _mapped(o.source)
        if _mapped_cast(o):
            bufs[:] = bufs or [CastBuffers(scratch)]
            return _cast_mapped(o.source, DTYPES[o.dtype], o.name, allow, bufs[0])
        return ops.cast(_mapped(o.source), DTYPES[o.dtype], o.name, allow)

    out: dict[str, Callable[[], Any]] = {}
    for o in the_plan.converter_order():
        if model.lazy:
            meta = lazy.meta_with_dtype_and_shape(DTYPES[o.dtype], o.shape)
            gen = lambda o=o, meta=meta: lazy(meta=meta, args=(o,), func=compute)  # noqa: E731
        else:
            gen = lambda o=o: compute(o)  # noqa: E731
        if item := model.filter_tensors((o.name, gen)):
            out[item[0]] = item[1]
    return out
