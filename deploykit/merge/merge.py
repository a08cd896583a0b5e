"""Streaming adapter merge: shard by shard, one tensor at a time, bit-exact with peft.

Tensors no adapter touches are copied (or cast) chunk by chunk from input to output; touched
tensors are materialised one at a time and merged with the same operations, in the same
dtypes and order, as peft's ``merge_and_unload()`` (reference: peft-merge.md §2-3). Output
shards are written incrementally behind a header computed up front, into a temporary
directory that is renamed into place only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import InputError, MergeError
from deploykit.core.fsutil import atomic_dir, sha256_file
from deploykit.merge import adapters, ops
from deploykit.merge.adapters import Adapter, Op
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
from deploykit.model.hf_dir import ModelDir

OUT_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "auto": None}
FLOAT_TYPES = {"F64", "F32", "F16", "BF16"}
PROVENANCE = "deploykit_merge.json"


# --- the base model -----------------------------------------------------------------------


def _base_entries(base: Path) -> list[Entry]:
    index = base / "model.safetensors.index.json"
    if index.is_file():
        files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
    elif (base / "model.safetensors").is_file():
        files = {"model.safetensors": None}
    else:
        pickled = any(base.glob("pytorch_model*.bin"))
        raise InputError(
            f"{base} has no safetensors weights" + (" (only pickled *.bin)" if pickled else ""),
            "convert the base to safetensors (save_pretrained(safe_serialization=True))",
        )
    entries: list[Entry] = []
    for name in files:
        entries += read_header(base / name)[0]
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


def _embedding_name(names: list[str]) -> str | None:
    return next((n for n in names if n.endswith(EMBEDDING_NAMES)), None)


# --- writing ------------------------------------------------------------------------------


class _BackgroundWriter:
    """Writes buffers to a file on a second thread, so computing the next tensor overlaps
    writing the last one. At most ``depth`` buffers wait, which bounds the extra memory."""

    def __init__(self, fh, depth: int = 2) -> None:
        self._fh = fh
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (buf := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._fh.write(buf)
                except BaseException as exc:  # reported to the producer on its next call
                    self._error = exc

    def write(self, buf) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(buf)

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


def _write_tensor(fh, spec: _Out, handles, allow_overflow: bool) -> int:
    out_dtype = DTYPES[spec.dtype]
    src = spec.source
    if not spec.ops:
        assert src is not None
        for chunk in iter_chunks(src):
            if src.dtype == spec.dtype:
                fh.write(chunk)
            else:
                t = torch.frombuffer(bytearray(chunk), dtype=src.torch_dtype)
                fh.write(tensor_bytes(ops.cast(t, out_dtype, spec.name, allow_overflow)))
        return nbytes(spec.dtype, spec.shape)
    w = read_tensor(src) if src is not None else None
    for op, i in spec.ops:
        w = ops.apply(w, op, handles[i], spec.model_dtype)
    assert w is not None
    data = tensor_bytes(ops.cast(w, out_dtype, spec.name, allow_overflow))
    fh.write(data)
    return len(data)


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
        for i, (_, (adapter_ops, _)) in enumerate(plans):
            for op in adapter_ops.get(name, []):
                try:
                    shape = ops.result_shape(shape, op, shapes_per_adapter[i])
                except ValueError as exc:
                    raise MergeError(
                        f"{plans[i][0].path}: cannot merge into {name}: {exc}",
                        "check that the adapter was trained on this base (--base)",
                    ) from exc
                steps.append((op, i))
        base_dtype = src.dtype if src is not None else by_name[tied[1]].dtype
        dtype = base_dtype if out_code is None or base_dtype not in FLOAT_TYPES else out_code
        outs.append(_Out(name, dtype, tuple(shape), src, steps, DTYPES[base_dtype]))
    return outs


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


def _config(base: Path, outs: list[_Out], out_code: str | None, untied: bool) -> dict:
    cfg = dict(ModelDir(base).config)
    if out_code is not None:
        name = str(DTYPES[out_code]).removeprefix("torch.")
        cfg["torch_dtype"] = name
        if "dtype" in cfg:
            cfg["dtype"] = name
    emb = _embedding_name([o.name for o in outs])
    if emb:
        vocab = next(o.shape[0] for o in outs if o.name == emb)
        if cfg.get("vocab_size") not in (None, vocab):
            cfg["vocab_size"] = vocab
    if untied:
        cfg["tie_word_embeddings"] = False
    return cfg


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
    if dtype not in OUT_DTYPES:
        raise InputError(f"unknown --dtype {dtype}", f"use one of {', '.join(OUT_DTYPES)}")
    try:
        limit = parse_size(shard_size)
    except ValueError as exc:
        raise InputError(str(exc), "pass --shard-size like 5GB") from exc
    out = Path(out).resolve()
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output {out} already exists", "choose a new --out or pass --force")
    ads = [adapters.load(Path(p)) for p in adapter_dirs]
    base_dir = resolve_base(base, ads[0])
    if out in (base_dir, *(a.path.resolve() for a in ads)):
        raise InputError(f"--out {out} is an input directory", "choose a new --out")

    entries = _base_entries(base_dir)
    by_name = {e.name: e for e in entries}
    names = set(by_name)
    base_cfg = ModelDir(base_dir).config
    emb = _embedding_name([e.name for e in entries])
    tied = None
    if base_cfg.get("tie_word_embeddings", True) and "lm_head.weight" not in names and emb:
        tied = ("lm_head.weight", emb)
    plans, known = [], set(names)
    for a in ads:
        ops, created = adapters.plan(a, known, tied, lambda n: read_tensor(by_name[n]))
        known |= created
        plans.append((a, (ops, created)))
    shapes = [adapters.adapter_shapes(a) for a in ads]
    out_code = OUT_DTYPES[dtype]
    outs = _plan_outputs(entries, plans, out_code, shapes, tied)
    untied = tied is not None and any(o.name == tied[0] for o in outs)
    total = sum(nbytes(o.dtype, o.shape) for o in outs)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < total + (64 << 20):
        raise MergeError(
            f"not enough disk space in {out.parent}: need {total + (64 << 20)} bytes, {free} free",
            "free some space or choose another --out",
        )

    shards = _shards(outs, limit)
    changed = sum(1 for o in outs if o.ops)
    with atomic_dir(out, replace=force) as tmp, contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(a.weights, "pt")) for a in ads]
        weight_map = {}
        with ui.progress_bar("merging", total, unit="bytes") as bar:
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                with open(tmp / fname, "wb") as fh:
                    fh.write(
                        header_bytes([(o.name, o.dtype, o.shape) for o in shard], {"format": "pt"})
                    )
                    writer = _BackgroundWriter(fh)
                    try:
                        for o in shard:
                            n = _write_tensor(writer, o, handles, allow_overflow)
                            bar.advance(bar.task_ids[0], n)
                            weight_map[o.name] = fname
                    finally:
                        writer.close()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        cfg = _config(base_dir, outs, out_code, untied)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tok_src = next((a.path for a in reversed(ads) if a.has_tokenizer), base_dir)
        copied = _copy_side_files(base_dir, tok_src, tmp)
        provenance = {
            "deploykit": __version__,
            "base": str(base_dir),
            "adapters": [
                {
                    "path": str(a.path.resolve()),
                    "peft_type": a.peft_type,
                    "sha256": sha256_file(a.weights),
                }
                for a in ads
            ],
            "dtype": dtype,
            "shard_size": limit,
            "tensors": len(outs),
            "tensors_changed": changed,
            "tokenizer_from": str(tok_src),
            "versions": {"torch": torch.__version__},
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return {
        **provenance,
        "out": str(out),
        "shards": len(shards),
        "bytes": total,
        "files_copied": copied,
        "seconds": round(time.monotonic() - started, 2),
    }


def _copy_side_files(base: Path, tok_src: Path, dest: Path) -> list[str]:
    """generation_config and license from the base; tokenizer files from ``tok_src``."""
    copied = []
    for path in ModelDir(tok_src).tokenizer_files():
        rel = path.relative_to(tok_src)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
        copied.append(rel.as_posix())
    for path in [base / "generation_config.json", *base.glob("LICENSE*"), *base.glob("NOTICE*")]:
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
            copied.append(path.name)
    return copied
