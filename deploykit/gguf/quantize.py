"""Quantize a GGUF with the vendored ``llama-quantize`` (and ``llama-imatrix`` when needed).

Types are checked against the tool's own list before anything runs; a type that needs an
importance matrix on this model (asked of ``llama-quantize --dry-run``, which knows the
per-tensor fallbacks) fails early unless ``--imatrix`` or ``--calibration`` is given. Each
output is written to a temp name and renamed, so a failure never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import ConversionError, InputError
from deploykit.core.fsutil import atomic_file, check_free_space, check_not_input, check_output_file
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tools
from deploykit.llamacpp.tree import Tree, locate_tree
from deploykit.model.chat_template import render_spec

#: Source file types llama-quantize accepts without --allow-requantize.
UNQUANTIZED = {"F16", "BF16", "F32"}
#: llama-quantize's per-tensor progress line: ``[  12/ 290] blk.1.attn_q.weight ...``.
_STEP = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


@dataclass
class Plan:
    """One quantization: type, final path, whether it needs an imatrix, estimated bytes."""

    type: str
    output: Path
    needs_imatrix: bool
    est_bytes: int


def parse_types(spec: str, tree: Tree | None = None) -> list[str]:
    """``q4_k_m,Q8_0`` -> ``["Q4_K_M", "Q8_0"]``, validated against llama-quantize's list."""
    known = tools.quant_types(tree)
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        if name not in known or name == "COPY":
            close = difflib.get_close_matches(name, [k for k in known if k != "COPY"], n=4)
            near = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(
                f"unknown quantization type {raw.strip()!r}{near}",
                "`deploykit quantize --list-types` shows what the pinned llama-quantize accepts",
            )
        if name not in out:
            out.append(name)
    if not out:
        raise InputError("no quantization type given", "pass --quant, e.g. --quant q4_k_m")
    return out


def base_name(path: Path) -> str:
    """``model-F16.gguf`` -> ``model`` (the ``<name>`` of ``<name>-<TYPE>.gguf``)."""
    stem = Path(path).name.removesuffix(".gguf")
    return re.sub(r"[-_.](f16|bf16|f32|fp16|fp32)$", "", stem, flags=re.I) or stem


def output_name(src: Path, qtype: str) -> str:
    """The file a quant of ``src`` is written to: ``model-F16.gguf`` -> ``model-Q4_K_M.gguf``."""
    return f"{base_name(src)}-{qtype}.gguf"


def _dry_run(exe: Path, src: Path, qtype: str) -> tuple[bool, int]:
    """(needs an imatrix, quantized size in bytes) from ``llama-quantize --dry-run``."""
    run = tools.run([exe, "--dry-run", src, qtype], timeout=600)
    run.check(f"llama-quantize cannot quantize {src.name} to {qtype}", ConversionError)
    m = re.search(r"quant size\s*=\s*([\d.]+) MiB", run.output)
    size = int(float(m.group(1)) * (1 << 20)) if m else src.stat().st_size
    return "will require an imatrix" in run.output, size


def render_jsonl(path: Path, gguf: gguf_meta.GGUFInfo) -> str:
    """Chat JSONL (``{"messages": [...], "tools": [...]}`` per line) rendered through the
    GGUF's chat template exactly as ``apply_chat_template`` would (no generation prompt)."""
    from jinja2 import TemplateError

    spec = gguf.chat_spec()
    if not spec.template:
        raise InputError(
            f"{gguf.path.name} has no chat template to render {path.name} with",
            "pass a plain text calibration file instead",
        )
    parts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"] if isinstance(row, dict) else row
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise TypeError("messages must be a list of objects")
            tools_ = row.get("tools") if isinstance(row, dict) else None
            parts.append(render_spec(spec, messages, tools=tools_, add_generation_prompt=False))
        except (ValueError, KeyError, TypeError, TemplateError) as exc:
            raise InputError(
                f"{path}:{n}: not a chat example ({exc})",
                'each line must be {"messages": [{"role": ..., "content": ...}, ...]}',
            ) from None
    return "".join(parts)


def calibration_text(src: Path, calibration: Path) -> tuple[str, bool]:
    """(text for llama-imatrix, whether it contains special tokens to parse)."""
    calibration = Path(calibration)
    if not calibration.is_file():
        raise InputError(f"calibration file not found: {calibration}", "check --calibration")
    if calibration.suffix.lower() != ".jsonl":
        return calibration.read_text(encoding="utf-8", errors="replace"), False
    return render_jsonl(calibration, gguf_meta.read(src, {gguf_meta.TOKENS})), True


def compute_imatrix(
    src: Path,
    calibration: Path,
    out: Path,
    threads: int | None = None,
    tree: Tree | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Compute an importance matrix for ``src`` from ``calibration`` into ``out`` (atomic)."""
    started = time.monotonic()
    text, special = calibration_text(src, calibration)
    fd, tname = tempfile.mkstemp(prefix=".deploykit-calib-", suffix=".txt", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    text_file = Path(tname)
    try:
        n = len(tools.tokenize_file(src, text_file, special, tree))
        if n < tools.MIN_CALIBRATION_TOKENS:
            raise InputError(
                f"calibration data {calibration} is too short: {n} tokens, "
                f"at least {tools.MIN_CALIBRATION_TOKENS} needed",
                "pass more text (a few thousand tokens gives a useful importance matrix)",
            )
        ctx = tools.chunk_ctx(n)
        with atomic_file(out) as tmp:
            cmd = [tools.tool("llama-imatrix", tree), "-m", src, "-f", text_file, "-o", tmp]
            cmd += ["-c", str(ctx), "--no-ppl", "-t", str(threads or tools.batch_threads())]
            if special:
                cmd.append("--parse-special")
            run = tools.run(cmd, bar="computing the importance matrix")
            run.check("llama-imatrix failed", ConversionError, "check the calibration data")
            if tmp.stat().st_size == 0:
                raise ConversionError("llama-imatrix wrote no importance matrix", run.log_hint())
    finally:
        with contextlib.suppress(FileNotFoundError):
            text_file.unlink()
    return {
        "imatrix": str(out),
        "calibration": str(calibration),
        "tokens": n,
        "ctx": ctx,
        "chat_rendered": special,
        "seconds": round(time.monotonic() - started, 2),
    }


def _step(line: str) -> dict[str, int] | None:
    m = _STEP.match(line)
    return {"completed": int(m.group(1)), "total": int(m.group(2))} if m else None


def quantize(
    src: Path,
    types: list[str],
    out_dir: Path | None = None,
    out: Path | None = None,
    imatrix: Path | None = None,
    calibration: Path | None = None,
    threads: int | None = None,
    tree: Tree | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Quantize ``src`` to every type in ``types``; returns a summary for ``--json``. An
    existing output file is replaced only with ``force``."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"input not found: {src}", "pass the f16 GGUF from `deploykit convert`")
    info = gguf_meta.read(src)  # InputError for a non-GGUF
    tree = tree or locate_tree()
    if info.file_type and info.file_type not in UNQUANTIZED:
        raise InputError(
            f"{src.name} is already quantized ({info.file_type})",
            "quantize from the f16, bf16 or f32 GGUF written by `deploykit convert`",
        )
    if out is not None and len(types) > 1:
        raise InputError("--out names one file but several types were given", "use --out-dir")
    if imatrix is not None and calibration is not None:
        raise InputError("--imatrix and --calibration are alternatives", "pass only one")
    if imatrix is not None and not gguf_meta.is_gguf(imatrix) and imatrix.suffix != ".dat":
        raise InputError(f"{imatrix} is not an importance matrix (GGUF or .dat)", "check --imatrix")
    folder = Path(out).parent if out is not None else Path(out_dir or src.parent)
    name = base_name(src)
    outputs = [Path(out)] if out is not None else [folder / output_name(src, t) for t in types]
    matrix = [folder / f"{name}-imatrix.gguf"] if calibration is not None else []
    for path in [*outputs, *matrix]:  # the importance matrix is written beside the quants
        if path.resolve() == src.resolve():
            raise InputError(f"output {path} is the input", "pass another --out")
        check_not_input(path, [src, imatrix, calibration])
        check_output_file(path, force=force)

    exe = tools.tool("llama-quantize", tree)
    plans = []
    for qtype, path in zip(types, outputs, strict=True):
        needs, size = _dry_run(exe, src, qtype)
        plans.append(Plan(qtype, path, needs, size))
    needing = [p.type for p in plans if p.needs_imatrix]
    if needing and imatrix is None and calibration is None:
        raise ConversionError(
            f"{', '.join(needing)} needs an importance matrix on this model",
            "pass --calibration FILE (text, or chat JSONL rendered through the model's template) "
            "or --imatrix FILE",
        )
    check_free_space(
        folder,
        sum(p.est_bytes for p in plans),
        ConversionError,
        "the outputs",
        "free some space or pass --out-dir on another disk",
    )

    imatrix_info = None
    if calibration is not None:
        imatrix = folder / f"{name}-imatrix.gguf"
        imatrix_info = compute_imatrix(src, calibration, imatrix, threads, tree)
    results = []
    for plan in plans:
        started = time.monotonic()
        with atomic_file(plan.output) as tmp:
            cmd: list[str | Path] = [exe]
            if imatrix is not None:
                cmd += ["--imatrix", imatrix]
            cmd += [src, tmp, plan.type, str(threads or os.cpu_count() or 1)]
            run = tools.run(cmd, bar=f"quantizing to {plan.type}", progress=_step)
            if not run.ok and not run.crashed and "No space left" in run.output:
                raise ConversionError("the disk filled up while quantizing", "free some space")
            run.check(f"llama-quantize failed for {plan.type}", ConversionError)
        m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", run.output)
        results.append(
            {
                "type": plan.type,
                "output": str(plan.output),
                "bytes": plan.output.stat().st_size,
                "imatrix": imatrix is not None,
                "fallback_tensors": int(m.group(1)) if m else 0,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    return {
        "input": str(src),
        "outputs": results,
        "imatrix": str(imatrix) if imatrix is not None else None,
        "imatrix_computed": imatrix_info,
        "llama_cpp_commit": tree.commit,
    }
