"""The merge math: one function per kind of adapter operation, with the same operations, in
the same dtypes and order, as peft's ``merge_and_unload()`` (so the same bits)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from deploykit.core.errors import MergeError
from deploykit.merge.adapters import Op

#: Adapter dtypes peft upcasts to fp32 when it loads an adapter (autocast_adapter_dtype).
LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


class Workspace:
    """Flat buffers reused from one tensor to the next: a fresh tensor of hundreds of MB costs
    a page fault and a zeroed page per page, a reused buffer costs that once. A view of a slot
    is valid until that slot is next asked for: ``merged_tensor`` returns one only into a slot
    its caller names (the writer's, which hands a slot out again only once it is written)."""

    #: A buffer larger than this is dropped after its tensor (``trim``): an embedding or head
    #: merged once is not worth holding under everything that follows.
    KEEP = 512 << 20

    def __init__(self) -> None:
        self._slots: dict[str, torch.Tensor] = {}

    def get(self, slot: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A ``dtype`` tensor of ``shape`` in ``slot``'s bytes (any dtype: a slot is bytes)."""
        n = math.prod(shape) * dtype.itemsize
        buf = self._slots.get(slot)
        if buf is None or buf.numel() < n:
            self._slots.pop(slot, None)  # freed before the larger one is allocated
            buf = self._slots[slot] = torch.empty(n, dtype=torch.uint8)
        return buf[:n].view(dtype).view(shape)

    def bytes(self, slot: str, n: int) -> memoryview:
        """``n`` writable bytes of ``slot``."""
        return memoryview(self.get(slot, torch.uint8, (n,)).numpy())

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is a view of one of the buffers."""
        ptr = t.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == ptr for b in self._slots.values())

    def trim(self) -> None:
        """Drop the buffers larger than ``KEEP``."""
        for slot in [k for k, b in self._slots.items() if b.nbytes > self.KEEP]:
            del self._slots[slot]


#: Elements per step of the element-wise passes after LoRA's product (4 MiB of float32): a
#: step's pieces stay in cache between its passes, and merging a step at a time needs no
#: whole-tensor buffer but the product's. At Qwen2.5-7B's widths the passes of one MLP
#: projection took 0.13 s against 0.17 s whole; a whole merge, 810 MB RSS against 1.08 GB.
STEP = 1 << 20


def _lora_step(d: torch.Tensor, w: torch.Tensor, scaling: float, ws: Workspace, rounded):
    """One flat piece of peft's ``w + (B @ A) * scaling``: ``d`` (that piece of ``B @ A``, in
    float32) scaled and ``w`` added in float32 (a half-precision ``w`` widened exactly first),
    then rounded into ``rounded`` (``w``'s dtype)."""
    d.mul_(scaling)
    if w.dtype == torch.float32:
        d.add_(w)
    else:
        d.add_(ws.get("wide", torch.float32, (d.numel(),)).copy_(w))
    rounded.copy_(d)


def _lora(w: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scaling: float, ws: Workspace):
    """peft's ``w + (B @ A) * scaling`` (computed in float32, rounded to ``w``'s dtype) with its
    float32 temporaries and its result in ``ws`` (slot ``result``, or ``result2`` when ``w`` is
    in ``result``): the same operations on the same values, so the same bits."""
    delta = torch.mm(b, a, out=ws.get("delta", torch.float32, (b.shape[0], a.shape[1])))
    out = ws.get("result", w.dtype, tuple(w.shape))
    if out.untyped_storage().data_ptr() == w.untyped_storage().data_ptr():  # w is in "result"
        out = ws.get("result2", w.dtype, tuple(w.shape))
    flat, src, dest = delta.view(-1), w.reshape(-1), out.view(-1)
    for i in range(0, flat.numel(), STEP):
        j = min(i + STEP, flat.numel())
        _lora_step(flat[i:j], src[i:j], scaling, ws, dest[i:j])
    return out


_WIDENED_EXACTLY = (torch.float32, torch.float16, torch.bfloat16)


def lora_factors(op: Op, f, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """LoRA's ``B`` and ``A`` as peft holds them, when ``op`` is a plain LoRA whose merge into
    a ``dtype`` weight :func:`_lora` computes (in steps, in reused buffers); else None."""
    if op.kind != "lora" or op.fan_in_fan_out or dtype not in _WIDENED_EXACTLY:
        return None
    b, a = _factor(f, op, "B"), _factor(f, op, "A")
    if b.dtype == a.dtype == torch.float32 and b.dim() == a.dim() == 2:
        return b, a
    return None


def lora_cast(
    parts: Iterable[torch.Tensor],
    b: torch.Tensor,
    a: torch.Tensor,
    scaling: float,
    ws: Workspace,
    out: torch.Tensor,
) -> tuple[float, float]:
    """:func:`_lora` on a weight given as flat ``parts`` in order (read a step at a time), each
    rounded piece cast into ``out`` (the output's dtype, the weight's shape) as it is made: no
    whole-tensor buffer but ``B @ A``. Returns the rounded result's minimum and maximum (NaN
    when it holds a NaN), for the checks :func:`cast` makes; the caller makes them."""
    delta = torch.mm(b, a, out=ws.get("delta", torch.float32, tuple(out.shape)))
    flat, dest = delta.view(-1), out.view(-1)
    lo, hi, i = math.inf, -math.inf, 0
    for w in parts:
        j = i + w.numel()
        if j > flat.numel():
            raise ValueError(f"the weight's pieces hold more than its {flat.numel()} values")
        rounded = ws.get("rounded", w.dtype, (w.numel(),))
        _lora_step(flat[i:j], w, scaling, ws, rounded)
        step_lo, step_hi = extremes(rounded)
        if math.isnan(step_lo) or math.isnan(step_hi):  # (Python's min and max would drop it)
            return math.nan, math.nan  # not written whole: the caller takes the checked path
        lo, hi = min(lo, step_lo), max(hi, step_hi)
        dest[i:j].copy_(rounded)
        i = j
    if i != flat.numel():
        raise ValueError(f"the weight's pieces hold {i} of its {flat.numel()} values")
    return (lo, hi) if i else (0.0, 0.0)


def _factor(f, op: Op, role: str) -> torch.Tensor:
    """An adapter factor as peft holds it: fp16/bf16 adapters are upcast to fp32 on load."""
    t = f.get_tensor(op.keys[role])
    return t.float() if t.dtype in LOW_PRECISION else t


def _t(x: torch.Tensor, fifo: bool) -> torch.Tensor:
    return x.T if fifo else x


def apply(
    w: torch.Tensor | None, op: Op, f, dtype: torch.dtype, ws: Workspace | None = None
) -> torch.Tensor:
    """``w`` after ``op`` (``w`` is left as it is); ``w`` is None for a tensor the adapter adds,
    ``dtype`` the model's. ``ws``: buffers for LoRA's temporaries and result (then a view of
    ``ws``, valid until its slot is next used); else a new tensor."""
    if op.kind == "replace":
        return f.get_tensor(op.keys["T"]).to(dtype)
    assert w is not None
    if op.kind == "rows":
        idx = torch.tensor(op.extra["indices"], dtype=torch.long)
        return w.index_copy(0, idx, f.get_tensor(op.keys["rows"]).to(w.dtype))
    if op.kind == "ia3":
        return torch.mul(w, _t(_factor(f, op, "ia3"), op.fan_in_fan_out)).to(w.dtype)
    if op.kind == "ia3_bias":
        return torch.mul(w, _factor(f, op, "ia3").reshape(w.shape)).to(w.dtype)
    if op.kind == "lora_bias":
        return (w + _factor(f, op, "B_bias") * op.scaling).to(w.dtype)
    if op.kind == "embedding":  # peft rounds the delta to the weight's dtype before adding
        delta = (_factor(f, op, "emb_B") @ _factor(f, op, "emb_A")).T * op.scaling
        return w + delta.to(w.dtype)
    if op.kind == "adalora":
        a, b, e = (f.get_tensor(op.keys[r]) for r in ("A", "B", "E"))
        if op.extra["round_factors"]:  # peft recreates pruned factors in the base dtype first
            a, b, e = (x.to(w.dtype) for x in (a, b, e))
        a, b, e = (x.float() if x.dtype in LOW_PRECISION else x for x in (a, b, e))
        ranknum = torch.tensor([op.extra["ranknum"]])
        delta = _t(b @ (a * e), op.fan_in_fan_out) * op.scaling / (ranknum + 1e-5)
        return (w + delta).to(w.dtype)
    if ws is not None and (factors := lora_factors(op, f, w.dtype)) is not None:
        return _lora(w, *factors, op.scaling, ws)
    b, a = _factor(f, op, "B"), _factor(f, op, "A")
    # in place where peft allocates: a + b == b + a in IEEE arithmetic, so the bits are the same
    delta = _t((b @ a).mul_(op.scaling), op.fan_in_fan_out)
    if op.kind == "lora":
        return delta.add_(w).to(w.dtype)
    if op.kind == "dora":
        fifo = op.fan_in_fan_out
        norm = torch.linalg.norm(_t(w, fifo) + 1 * _t(delta, fifo), dim=1).to(delta.dtype)
        factor = _t((_factor(f, op, "m") / norm).view(-1, 1), fifo)
        return (factor * (w + delta)).to(w.dtype)
    raise MergeError(f"unsupported adapter operation {op.kind}", "report this adapter to deploykit")


def result_shape(shape: tuple[int, ...] | None, op: Op, shapes: dict[str, tuple]) -> tuple:
    """The shape after ``op``: checked before anything is computed or written."""
    if op.kind == "replace":
        return shapes[op.keys["T"]]
    if op.kind in ("lora", "dora", "adalora"):
        b, a = shapes[op.keys["B"]], shapes[op.keys["A"]]
        got = (b[0], a[-1]) if not op.fan_in_fan_out else (a[-1], b[0])
    elif op.kind == "embedding":
        got = (shapes[op.keys["emb_A"]][-1], shapes[op.keys["emb_B"]][0])
    elif op.kind == "rows":
        rows, indices = shapes[op.keys["rows"]], op.extra["indices"]
        assert shape is not None
        if (
            len(shape) != 2
            or rows != (len(indices), shape[-1])
            or max(indices, default=-1) >= shape[0]
        ):
            raise ValueError(
                f"trainable token rows {rows} for {len(indices)} token ids up to "
                f"{max(indices, default=-1)} do not fit {shape}"
            )
        return shape
    else:
        return shape  # element-wise scaling keeps the shape; torch checks broadcasting
    if got != shape:
        raise ValueError(f"adapter delta has shape {got}, the base tensor {shape}")
    return shape


#: The smallest magnitude float16 rounds to infinity (65504 plus half a step at that scale).
FP16_OVERFLOW = 65520.0


def extremes(t: torch.Tensor) -> tuple[float, float]:
    """``t``'s minimum and maximum in one reduction (NaN when it holds a NaN)."""
    lo, hi = torch.aminmax(t)
    return float(lo), float(hi)


def cast_fits(
    src: torch.dtype, dtype: torch.dtype, bounds: tuple[float, float], allow_overflow: bool
) -> bool:
    """Whether values within ``bounds`` (a tensor's min and max) pass :func:`cast`'s float16
    check on their own: always when the cast does not narrow to float16 or overflow is allowed
    (NaN and inf are not this check's business: callers check finiteness), else only when both
    lie inside float16's range (not for NaN)."""
    if dtype != torch.float16 or src == torch.float16 or allow_overflow:
        return True
    lo, hi = bounds
    return lo > -FP16_OVERFLOW and hi < FP16_OVERFLOW  # all finite and in range (False for NaN)


def cast(
    t: torch.Tensor,
    dtype: torch.dtype,
    name: str,
    allow_overflow: bool,
    bounds: tuple[float, float] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``t`` as ``dtype`` (into ``out``, of that dtype and ``t``'s shape, when given); a float16
    cast that turns finite values into inf is refused unless ``allow_overflow``. The check is
    one min/max reduction (or ``bounds``, ``t``'s already known); the exact count only when it
    trips."""
    if out is not None and (out.dtype, out.shape) != (dtype, t.shape):
        raise ValueError(f"{name}: a buffer of {out.dtype} {tuple(out.shape)} for {tuple(t.shape)}")
    out = t.to(dtype) if out is None else out.copy_(t)  # the same conversion either way
    if dtype == torch.float16 and t.dtype != torch.float16 and not allow_overflow:
        if cast_fits(t.dtype, dtype, bounds if bounds is not None else extremes(t), False):
            return out
        bad = torch.isinf(out) & ~torch.isinf(t)
        if bool(bad.any()):
            raise MergeError(
                f"{name} has {int(bad.sum())} values outside float16's range (max |x| "
                f"{t.abs().max().item():.4g} > 65504)",
                "write bfloat16 (merge --dtype bfloat16, ship --outtype bf16), or pass merge "
                "--allow-overflow to write them as inf",
            )
    return out
