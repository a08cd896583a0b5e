"""Streaming adapter merge: shard by shard, one tensor at a time, bit-exact with peft.

Tensors no adapter touches are copied (or cast) chunk by chunk from input to output; touched
tensors are materialised one at a time and merged with the same operations, in the same
dtypes and order, as peft's ``merge_and_unload()`` (reference: peft-merge.md §2-3). Output
shards are written incrementally behind a header computed up front, into a temporary
directory that is renamed into place only when everything succeeded.
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import InputError, MergeError
from deploykit.core.fsutil import (
    DirectFile,
    atomic_dir,
    check_not_input,
    link_or_copy,
    sha256_file,
    write_all,
)
from deploykit.merge import adapters, ops, output
from deploykit.merge.adapters import REFIT, Adapter, Op
from deploykit.merge.safetensors_io import (
    DTYPES,
    Entry,
    header_bytes,
    iter_chunks,
    nbytes,
    parse_size,
    read_header,
    read_tensor,
    tensor_bytes,
)
from deploykit.model import base as model_base
from deploykit.model.hf_dir import OVERLAY, PROVENANCE, ModelDir, read_json

OUT_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "auto": None}
FLOAT_TYPES = {"F64", "F32", "F16", "BF16"}
BAD_INDEX = "the model folder is incomplete or damaged: re-download the base"


# --- the base model -----------------------------------------------------------------------


def _base_entries(base: Path) -> list[Entry]:
    """Every tensor of the base's safetensors files, headers checked, index checked against
    them (each tensor where the index says, and in one file only)."""
    index = base / "model.safetensors.index.json"
    weight_map: dict[str, str] | None = None
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index} has no weight_map", BAD_INDEX)
        for name, file in weight_map.items():
            parts = PurePosixPath(file).parts if isinstance(file, str) else ()
            if not parts or parts[0] == "/" or ".." in parts or "\\" in file:
                raise InputError(f"{index} maps {name} to a bad file name {file!r}", BAD_INDEX)
        files = list(dict.fromkeys(weight_map.values()))
        for file in files:
            if not (base / file).is_file():
                raise InputError(f"{index} names {file}, which is not in {base}", BAD_INDEX)
    elif (base / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickled = any(base.glob("pytorch_model*.bin"))
        shards = any(base.glob("*.safetensors"))
        raise InputError(
            f"{base} has no model.safetensors"
            + (" (only pickled *.bin)" if pickled else "")
            + (" and no model.safetensors.index.json for its shards" if shards else ""),
            BAD_INDEX
            if shards
            else "convert the base to safetensors (save_pretrained(safe_serialization=True))",
        )
    entries: list[Entry] = []
    where: dict[str, str] = {}
    for file in files:
        for e in read_header(base / file)[0]:
            if e.name in where:
                raise InputError(
                    f"{base}: tensor {e.name} is in both {where[e.name]} and {file}", BAD_INDEX
                )
            where[e.name] = file
            entries.append(e)
    for name, file in (weight_map or {}).items():
        if where.get(name) != file:
            raise InputError(f"{index} puts {name} in {file}, which does not hold it", BAD_INDEX)
    return entries


def resolve_base(base: str | Path | None, first: Adapter) -> Path:
    """``--base``, else the adapter's ``base_model_name_or_path``, as a local model directory."""
    if base is not None:
        return model_base.resolve(base, relative_to=first.path, why=" (passed to --base)").path
    return model_base.resolve(
        first.base,
        relative_to=first.path,
        revision=first.config.get("revision"),
        why=f" (named by {first.path})",
    ).path


#: Input-embedding tensor names across architectures (the tensor an output head may share).
EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
#: Tensors with a row per vocabulary entry (an adapter may resize them, as peft's users do).
VOCAB_NAMES = (*EMBEDDING_NAMES, "lm_head.weight", "embed_out.weight")


def _embedding_name(names: list[str]) -> str | None:
    return next((n for n in names if n.endswith(EMBEDDING_NAMES)), None)


# --- writing ------------------------------------------------------------------------------


class _BackgroundWriter:
    """Writes buffers to a file on a second thread, so computing the next tensor overlaps
    writing the last one. At most ``depth`` buffers wait, which bounds the extra memory.

    Merged tensors are cast into two workspace slots in turn (:meth:`slot`): one is written
    while the next tensor is computed into the other, and a slot is handed out again only once
    the tensor last cast into it is written."""

    SLOTS = ("out0", "out1")

    def __init__(self, fh, depth: int = 2) -> None:
        self._fh = fh
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._sent = self._written = 0
        self._done = threading.Condition()
        self._last: dict[str, int] = {}  # slot -> the number of the write that last used it
        self._turn = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (buf := self._q.get()) is not None:
            if self._error is None:
                try:
                    write_all(self._fh, buf)
                except BaseException as exc:  # reported to the producer on its next call
                    self._error = exc.with_traceback(None)  # its frames hold a slot's view
            del buf  # the slot's memory is not held past its write
            with self._done:
                self._written += 1
                self._done.notify_all()

    def write(self, buf, slot: str | None = None) -> None:
        """Queue ``buf``; ``slot``: the workspace slot it is a view of (from :meth:`slot`)."""
        if self._error is not None:
            raise self._error
        self._q.put(buf)
        self._sent += 1
        if slot is not None:
            self._last[slot] = self._sent

    def slot(self) -> str:
        """A workspace slot that no queued or unwritten buffer is a view of."""
        slot = self.SLOTS[self._turn % len(self.SLOTS)]
        self._turn += 1
        with self._done:
            self._done.wait_for(lambda: self._written >= self._last.get(slot, 0))
        if self._error is not None:
            raise self._error
        return slot

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@dataclass
class _Out:
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Entry | None
    ops: list[tuple[Op, int]]  # (op, adapter index)
    model_dtype: torch.dtype  # the dtype peft's in-memory model holds it in


def _nonfinite(t: torch.Tensor, allow_overflow: bool) -> int:
    """How many values of ``t`` are NaN or inf (NaN only where inf is allowed in float16): one
    min/max reduction, the exact count only when it finds one."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    lo, hi = ops.extremes(t)
    if math.isfinite(lo) and math.isfinite(hi):
        return 0
    bad = torch.isnan(t) if allow_overflow and t.dtype == torch.float16 else ~torch.isfinite(t)
    return int(bad.sum())


def merged_tensor(
    spec: _Out,
    ads: list[Adapter],
    allow_overflow: bool,
    ws: ops.Workspace | None = None,
    into: str | None = None,
) -> torch.Tensor:
    """The tensor ``spec`` (one an adapter changes) as the merge writes it: its ops applied
    in peft's dtypes, checked, cast to its dtype. ``ws``: buffers reused from tensor to tensor
    for the base tensor and the temporaries. ``into``: the slot of ``ws`` it is cast into (a
    view of it is returned; a plain LoRA is then merged a step at a time); else a new tensor."""
    ws = ws or ops.Workspace()
    out_dtype = DTYPES[spec.dtype]
    src = spec.source
    if into is not None and (out := _streamed(spec, ads, allow_overflow, ws, into)) is not None:
        ws.trim()
        return out
    w0 = w = None
    if src is not None:  # a tensor the adapter replaces is read once, to count its NaNs
        buf = (
            None
            if spec.ops[0][0].kind == "replace"
            else ws.get("source", src.torch_dtype, src.shape)
        )
        w0 = w = read_tensor(src, buf).to(spec.model_dtype)
    for op, i in spec.ops:
        w = ops.apply(w, op, ads[i].tensors, spec.model_dtype, ws)
    assert w is not None
    bounds = ops.extremes(w) if w.is_floating_point() and w.numel() else (0.0, 0.0)
    if not all(map(math.isfinite, bounds)):  # only then counted, the base's own ones too
        after = _nonfinite(w, allow_overflow)
        before = _nonfinite(w0, allow_overflow) if w0 is not None else 0
        if after > before:
            names = ", ".join(dict.fromkeys(str(ads[i].path) for _, i in spec.ops))
            raise MergeError(
                f"merging {names} into {spec.name} gives {after - before} NaN or infinite values",
                "check the adapter's lora_alpha and weights (a diverged fine-tune?)",
            )
    if into is not None:
        out = ops.cast(
            w, out_dtype, spec.name, allow_overflow, bounds, ws.get(into, out_dtype, w.shape)
        )
    else:
        out = ops.cast(w, out_dtype, spec.name, allow_overflow, bounds)
        out = out.clone() if ws.holds(out) else out  # never a view of the workspace
    ws.trim()
    return out


def _streamed(
    spec: _Out, ads: list[Adapter], allow_overflow: bool, ws: ops.Workspace, into: str
) -> torch.Tensor | None:
    """``spec`` merged by :func:`ops.lora_cast` into slot ``into``, its base read a step at a
    time, when it is one plain LoRA on a base tensor of the model's dtype and passes the checks
    on its minimum and maximum; else None (and the whole-tensor path, which counts and names
    what is wrong, makes it)."""
    src = spec.source
    if src is None or len(spec.ops) != 1 or src.torch_dtype != spec.model_dtype:
        return None
    op, i = spec.ops[0]
    factors = ops.lora_factors(op, ads[i].tensors, spec.model_dtype)
    if factors is None:
        return None
    out = ws.get(into, DTYPES[spec.dtype], src.shape)
    step = ops.STEP * src.torch_dtype.itemsize
    parts = (
        torch.frombuffer(chunk, dtype=src.torch_dtype)
        for chunk in iter_chunks(src, step, into=lambda n: ws.bytes("part", n))
    )
    lo, hi = ops.lora_cast(parts, *factors, op.scaling, ws, out)
    finite = math.isfinite(lo) and math.isfinite(hi)
    return (
        out
        if finite and ops.cast_fits(src.torch_dtype, out.dtype, (lo, hi), allow_overflow)
        else None
    )


def _write_tensor(
    fh: _BackgroundWriter, spec: _Out, ads: list[Adapter], allow_overflow: bool, ws: ops.Workspace
) -> int:
    src = spec.source
    if spec.ops:
        slot = fh.slot()
        data = tensor_bytes(merged_tensor(spec, ads, allow_overflow, ws, into=slot))
        fh.write(data, slot)
        return len(data)
    assert src is not None  # untouched: a chunk at a time, through reused buffers
    dtype, slot = DTYPES[spec.dtype], ""
    if src.dtype == spec.dtype:  # read straight into the writer's slots

        def into(n: int) -> memoryview:
            nonlocal slot
            slot = fh.slot()
            return ws.bytes(slot, n)

        for chunk in iter_chunks(src, into=into):
            fh.write(chunk, slot)
    else:  # read into one buffer, cast into the writer's slots
        for chunk in iter_chunks(src, into=lambda n: ws.bytes("chunk", n)):
            t = torch.frombuffer(chunk, dtype=src.torch_dtype)
            slot = fh.slot()
            out = ops.cast(t, dtype, spec.name, allow_overflow, out=ws.get(slot, dtype, t.shape))
            fh.write(tensor_bytes(out), slot)
    return nbytes(spec.dtype, spec.shape)


def _model_dtype(base_dtype: str, out_code: str | None) -> str:
    """The dtype peft's model holds a tensor in: the base's, or float32 for a float32 output
    (peft on a base loaded in float32: no rounding to the base's half precision)."""
    return "F32" if out_code == "F32" and base_dtype in ("F16", "BF16") else base_dtype


def _plan_outputs(entries, plans, out_code, shapes_per_adapter, tied) -> list[_Out]:
    by_name = {e.name: e for e in entries}
    order = [e.name for e in entries]
    for _, created in (p for _, p in plans):
        order += sorted(n for n in created if n not in order)
    outs = []
    for name in order:
        src = by_name.get(name)
        shape = src.shape if src is not None else None
        steps: list[tuple[Op, int]] = []
        for i, (a, (adapter_ops, _)) in enumerate(plans):
            for op in adapter_ops.get(name, []):
                try:
                    new = ops.result_shape(shape, op, shapes_per_adapter[i])
                    if op.kind == "replace" and shape is not None and new != shape:
                        _check_resize(name, shape, new)
                except ValueError as exc:
                    raise MergeError(f"{a.path}: cannot merge into {name}: {exc}", REFIT) from exc
                shape = new
                steps.append((op, i))
        base_dtype = src.dtype if src is not None else by_name[tied[1]].dtype
        dtype = base_dtype if out_code is None or base_dtype not in FLOAT_TYPES else out_code
        model_dtype = DTYPES[_model_dtype(base_dtype, out_code)]
        outs.append(_Out(name, dtype, tuple(shape), src, steps, model_dtype))
    resized = {o.name: o.shape[0] for o in outs if o.name.endswith(VOCAB_NAMES)}
    if len(set(resized.values())) > 1 and any(
        o.name in resized and o.source and o.shape != o.source.shape for o in outs
    ):
        raise MergeError(
            f"the adapters resize the vocabulary unevenly: {resized} rows",
            "peft refuses such an adapter: resize the embeddings and the output head together",
        )
    return outs


def _check_resize(name: str, old: tuple, new: tuple) -> None:
    """A full tensor may replace a base tensor of another shape only to resize a vocabulary."""
    if not (name.endswith(VOCAB_NAMES) and len(old) == len(new) and old[1:] == new[1:]):
        raise ValueError(f"the adapter's full tensor has shape {new}, the base's {old}")


def _shards(outs: list[_Out], limit: int) -> list[list[_Out]]:
    shards: list[list[_Out]] = [[]]
    size = 0
    for o in outs:
        n = nbytes(o.dtype, o.shape)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(o)
        size += n
    return shards


def _written_dtype(outs: list[_Out]) -> str | None:
    """The float dtype most of the written values have (what config.json must say)."""
    sizes: Counter[str] = Counter()
    for o in outs:
        if o.dtype in FLOAT_TYPES:
            sizes[o.dtype] += math.prod(o.shape)
    return sizes.most_common(1)[0][0] if sizes else None


def _dtype_name(code: str) -> str:
    return str(DTYPES[code]).removeprefix("torch.")


def _config(base: Path, outs: list[_Out], written: str | None, untied: bool) -> dict:
    cfg = dict(ModelDir(base).config)
    if written is not None:
        cfg["torch_dtype"] = _dtype_name(written)
        if "dtype" in cfg:
            cfg["dtype"] = _dtype_name(written)
    emb = _embedding_name([o.name for o in outs])
    if emb:
        vocab = next(o.shape[0] for o in outs if o.name == emb)
        if cfg.get("vocab_size") not in (None, vocab):
            cfg["vocab_size"] = vocab
    if untied:
        cfg["tie_word_embeddings"] = False
    return cfg


@dataclass
class MergePlan:
    """Everything a merge will write, checked before anything is: the adapters (loaded and
    vetted), the base folder and every output tensor with its operations, dtype and shape."""

    adapters: list[Adapter]
    base_dir: Path
    outs: list[_Out]
    untied: bool
    dtype: str  # as requested
    shard_limit: int

    @property
    def inputs(self) -> list[Path]:
        """The folders the merge reads (never written)."""
        return [self.base_dir, *(a.path for a in self.adapters)]

    @property
    def total_bytes(self) -> int:
        return sum(nbytes(o.dtype, o.shape) for o in self.outs)

    @property
    def kinds(self) -> set[str]:
        """The kinds of adapter operation the merge applies."""
        return {op.kind for o in self.outs for op, _ in o.ops}

    def shards(self) -> list[list[_Out]]:
        return _shards(self.outs, self.shard_limit)

    def converter_order(self) -> list[_Out]:
        """The outputs in the order llama.cpp's converter reads them back from the merged
        folder (shard by shard, each shard's tensors by name): a fused conversion that feeds
        them in this order writes the same GGUF, byte for byte."""
        return [o for shard in self.shards() for o in sorted(shard, key=lambda o: o.name)]

    def config(self) -> dict:
        """The merged model's config.json: the base's, with dtype, vocabulary and tying."""
        return _config(self.base_dir, self.outs, _written_dtype(self.outs), self.untied)

    def provenance(self) -> dict:
        written = _written_dtype(self.outs)
        return {
            "deploykit": __version__,
            "base": str(self.base_dir),
            "adapters": [
                {
                    "path": str(a.path.resolve()),
                    "peft_type": a.peft_type,
                    "sha256": sha256_file(a.weights),
                }
                for a in self.adapters
            ],
            "dtype": _dtype_name(written) if written else self.dtype,
            "dtype_requested": self.dtype,
            "shard_size": self.shard_limit,
            "tensors": len(self.outs),
            "tensors_changed": sum(1 for o in self.outs if o.ops),
            "tokenizer_from": str(self.tokenizer_source),
            "versions": {"torch": torch.__version__},
        }

    @property
    def tokenizer_source(self) -> Path:
        """The last adapter that saved a tokenizer (fine-tunes that add tokens), else the base."""
        return next((a.path for a in reversed(self.adapters) if a.has_tokenizer), self.base_dir)

    def write_side_files(self, dest: Path, provenance: dict, link: bool = False) -> list[str]:
        """config.json, the tokenizer, generation config and license, and the provenance;
        ``link``: the files taken as they are are hard links to the inputs where possible
        (written last: a name they share with what is written fails, never writes into one)."""
        (dest / "config.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        (dest / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        return _copy_side_files(self.base_dir, self.tokenizer_source, dest, link)


def plan(
    adapter_dirs: list[Path],
    base: str | Path | None = None,
    dtype: str = "float16",
    shard_size: str = "5GB",
) -> MergePlan:
    """Load and vet the adapters, resolve and check the base, and plan every output tensor
    (shapes and dtypes checked); nothing is computed or written."""
    if dtype not in OUT_DTYPES:
        raise InputError(f"unknown --dtype {dtype}", f"use one of {', '.join(OUT_DTYPES)}")
    try:
        limit = parse_size(shard_size)
    except ValueError as exc:
        raise InputError(str(exc), "pass --shard-size like 5GB") from exc
    ads = [adapters.load(Path(p)) for p in adapter_dirs]
    base_dir = resolve_base(base, ads[0])
    entries = _base_entries(base_dir)  # every header read and checked
    ModelDir(base_dir).check_weights()  # a config that lies about its weights: before any work

    by_name = {e.name: e for e in entries}
    base_shapes = {e.name: e.shape for e in entries}
    base_cfg = ModelDir(base_dir).config
    emb = _embedding_name([e.name for e in entries])
    tied = None
    if base_cfg.get("tie_word_embeddings", True) and "lm_head.weight" not in by_name and emb:
        tied = ("lm_head.weight", emb)
    plans, known = [], dict(base_shapes)
    for a in ads:
        a_ops, created = adapters.plan(a, known, tied, lambda n: read_tensor(by_name[n]))
        known |= {n: a.tensors.shapes[a_ops[n][0].keys["T"]] for n in created}
        plans.append((a, (a_ops, created)))
    _warn_shared(plans, tied)
    shapes = [a.tensors.shapes for a in ads]
    outs = _plan_outputs(entries, plans, OUT_DTYPES[dtype], shapes, tied)
    untied = tied is not None and any(o.name == tied[0] for o in outs)
    return MergePlan(ads, base_dir, outs, untied, dtype, limit)


def merge(
    adapter_dirs: list[Path],
    out: Path,
    base: str | Path | None = None,
    dtype: str = "float16",
    shard_size: str = "5GB",
    allow_overflow: bool = False,
    force: bool = False,
) -> dict:
    """Merge ``adapter_dirs`` (in order) into their base; write a Hugging Face model to ``out``."""
    started = time.monotonic()
    check_not_input(Path(out), [Path(p) for p in adapter_dirs])
    out = Path(out).resolve()
    output.prepare(out, force)
    the_plan = plan(adapter_dirs, base, dtype, shard_size)
    _check_output(out, the_plan)
    total = the_plan.total_bytes
    free = shutil.disk_usage(out.parent).free
    if free < total + (64 << 20):
        raise MergeError(
            f"not enough disk space in {out.parent}: need {total + (64 << 20)} bytes, {free} free",
            "free some space or choose another --out",
        )

    shards = the_plan.shards()
    ads = the_plan.adapters
    empty = out.is_dir() and not any(out.iterdir())  # an empty folder holds nothing to lose
    ws = ops.Workspace()
    with output.errors(out), atomic_dir(out, replace=force or empty) as tmp:
        weight_map = {}
        with ui.progress_bar("merging", total, unit="bytes") as bar:
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                with DirectFile(tmp / fname) as fh:
                    header = header_bytes(
                        [(o.name, o.dtype, o.shape) for o in shard], {"format": "pt"}
                    )
                    fh.write(header)
                    writer = _BackgroundWriter(fh)
                    try:
                        for o in shard:
                            n = _write_tensor(writer, o, ads, allow_overflow, ws)
                            bar.advance(bar.task_ids[0], n)
                            weight_map[o.name] = fname
                    finally:
                        writer.close()
                    expected = len(header) + sum(nbytes(o.dtype, o.shape) for o in shard)
                    if fh.tell() != expected:  # the header's offsets must hold what was written
                        raise MergeError(
                            f"{fname}: wrote {fh.tell()} bytes where its header says {expected}",
                            "this is a bug in deploykit merge: please report it",
                        )
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        provenance = the_plan.provenance()
        copied = the_plan.write_side_files(tmp, provenance)
    return {
        **provenance,
        "out": str(out),
        "shards": len(shards),
        "bytes": total,
        "files_copied": copied,
        "seconds": round(time.monotonic() - started, 2),
    }


def write_overlay(the_plan: MergePlan, out: Path) -> dict:
    """The merged model's folder without its weights, for a merge fused into the conversion:
    config.json, tokenizer, generation config and license exactly as ``merge`` writes them,
    and a provenance that names the base and adapters the weights come from (what loads the
    model in transformers reads the fine-tune from them, unmerged).

    The files taken as they are (tokenizer, generation config, license) are hard links to the
    inputs' where the file system allows: an overlay is deploykit's own (a step's outputs,
    checked by hash on reuse, or a temporary folder), never written again, and takes no disk
    for them (``merge`` copies: its folder is the user's)."""
    out = Path(out).resolve()
    _check_output(out, the_plan)
    provenance = {
        **the_plan.provenance(),
        OVERLAY: {
            "base": str(the_plan.base_dir),
            "adapters": [str(a.path.resolve()) for a in the_plan.adapters],
        },
    }
    with output.errors(out), atomic_dir(out) as tmp:
        copied = the_plan.write_side_files(tmp, provenance, link=True)
    return {**provenance, "out": str(out), "files_copied": copied}


def _check_output(out: Path, the_plan: MergePlan) -> None:
    ads = the_plan.adapters
    check_not_input(out, [the_plan.base_dir, *(a.path for a in ads), *(a.weights for a in ads)])
    check_not_input(out, list(dict.fromkeys(o.source.path for o in the_plan.outs if o.source)))


def _warn_shared(plans, tied) -> None:
    """peft warns when a tied output head is adapted: its delta lands on the shared tensor."""
    if tied is None:
        return
    head = tied[0].removesuffix(".weight")
    for a, (a_ops, _) in plans:
        mods = {op.module for op in a_ops.get(tied[1], []) if op.kind != "replace"}
        if head in mods:
            ui.warn(
                f"{a.path} adapts {head}, which shares its tensor with {tied[1]} "
                "(tie_word_embeddings): its delta is merged into the shared tensor, as peft does"
            )


def _copy_side_files(base: Path, tok_src: Path, dest: Path, link: bool = False) -> list[str]:
    """generation_config and license from the base; tokenizer files from ``tok_src``; hard
    links where ``link`` and the file system allow."""
    put = link_or_copy if link else shutil.copyfile
    copied = []
    for path in ModelDir(tok_src).tokenizer_files():
        rel = path.relative_to(tok_src)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        put(path, dest / rel)
        copied.append(rel.as_posix())
    for path in [base / "generation_config.json", *base.glob("LICENSE*"), *base.glob("NOTICE*")]:
        if path.is_file():
            put(path, dest / path.name)
            copied.append(path.name)
    return copied
