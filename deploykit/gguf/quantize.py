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
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import ConversionError, InputError
from deploykit.gguf.convert import _fmt_bytes, check_output, disk_free, save_log
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tree as llamacpp
from deploykit.llamacpp.server import default_threads

#: Source file types llama-quantize accepts without --allow-requantize.
UNQUANTIZED = {"F16", "BF16", "F32"}
#: Calibration data must give at least this many tokens (two contexts of 32).
MIN_CALIBRATION_TOKENS = 64


@dataclass
class Plan:
    """One quantization: type, final path, whether it needs an imatrix, estimated bytes."""

    type: str
    output: Path
    needs_imatrix: bool
    est_bytes: int


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_types(spec: str, tree: llamacpp.Tree | None = None) -> list[str]:
    """``q4_k_m,Q8_0`` -> ``["Q4_K_M", "Q8_0"]``, validated against llama-quantize's list."""
    known = llamacpp.quant_types(tree)
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


def _dry_run(exe: Path, src: Path, qtype: str) -> tuple[bool, int]:
    """(needs an imatrix, quantized size in bytes) from ``llama-quantize --dry-run``."""
    proc = subprocess.run(
        [str(exe), "--dry-run", str(src), qtype], capture_output=True, text=True, timeout=600
    )
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ConversionError(
            f"llama-quantize cannot quantize {src.name} to {qtype}: {_last_error(text)}",
            f"its full output is in {save_log(text, 'quantize')}",
        )
    m = re.search(r"quant size\s*=\s*([\d.]+) MiB", text)
    size = int(float(m.group(1)) * (1 << 20)) if m else src.stat().st_size
    return "will require an imatrix" in text, size


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.search(r"error|failed|invalid|exception", ln, re.I)]
    return (errs or lines or ["no output"])[-1][:300]


def _render_jsonl(path: Path, template: str, bos: str, eos: str) -> str:
    """Chat JSONL (``{"messages": [...]}`` per line) rendered through ``template``."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tmpl = env.from_string(template)
    parts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"] if isinstance(row, dict) else row
            parts.append(
                tmpl.render(
                    messages=messages,
                    add_generation_prompt=False,
                    bos_token=bos,
                    eos_token=eos,
                    tools=row.get("tools") if isinstance(row, dict) else None,
                )
            )
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
    info = gguf_meta.read(src, {"tokenizer.ggml.tokens"})
    template = info.get("tokenizer.chat_template")
    if not template:
        raise InputError(
            f"{src.name} has no chat template to render {calibration.name} with",
            "pass a plain text calibration file instead",
        )
    bos = gguf_meta.token_text(info, info.get("tokenizer.ggml.bos_token_id")) or ""
    eos = gguf_meta.token_text(info, info.get("tokenizer.ggml.eos_token_id")) or ""
    return _render_jsonl(calibration, template, bos, eos), True


def count_tokens(src: Path, text_file: Path, special: bool, tree: llamacpp.Tree | None) -> int:
    """How many tokens llama.cpp makes of ``text_file`` with ``src``'s vocabulary."""
    cmd = [
        str(llamacpp.tool("llama-tokenize", tree)),
        "-m",
        str(src),
        "-f",
        str(text_file),
        "--ids",
        "--no-escape",
        "--log-disable",
    ]
    if not special:
        cmd.append("--no-parse-special")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ConversionError(f"llama-tokenize failed: {_last_error(proc.stderr)}", None)
    return len(json.loads(proc.stdout.strip().splitlines()[-1]))


def compute_imatrix(
    src: Path,
    calibration: Path,
    out: Path,
    threads: int | None = None,
    tree: llamacpp.Tree | None = None,
) -> dict[str, Any]:
    """Compute an importance matrix for ``src`` from ``calibration`` into ``out`` (atomic)."""
    started = time.monotonic()
    text, special = calibration_text(src, calibration)
    fd, tname = tempfile.mkstemp(prefix=".deploykit-calib-", suffix=".txt", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    text_file = Path(tname)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        n = count_tokens(src, text_file, special, tree)
        if n < MIN_CALIBRATION_TOKENS:
            raise InputError(
                f"calibration data {calibration} is too short: {n} tokens, "
                f"at least {MIN_CALIBRATION_TOKENS} needed",
                "pass more text (a few thousand tokens gives a useful importance matrix)",
            )
        ctx = min(512, 2 ** int(math.log2(n // 2)))
        cmd = [
            str(llamacpp.tool("llama-imatrix", tree)),
            "-m",
            str(src),
            "-f",
            str(text_file),
            "-o",
            str(tmp),
            "-c",
            str(ctx),
            "--no-ppl",
            "-t",
            str(threads or default_threads()),
        ]
        if special:
            cmd.append("--parse-special")
        with ui.progress_bar("computing the importance matrix", None):
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.is_file():
            raise ConversionError(
                f"llama-imatrix failed: {_last_error(proc.stdout + proc.stderr)}",
                f"check the calibration data; full output in "
                f"{save_log(proc.stdout + proc.stderr, 'imatrix')}",
            )
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    finally:
        for p in (text_file, tmp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return {
        "imatrix": str(out),
        "calibration": str(calibration),
        "tokens": n,
        "ctx": ctx,
        "chat_rendered": special,
        "seconds": round(time.monotonic() - started, 2),
    }


def _run_quantize(cmd: list[str], label: str) -> tuple[int, str]:
    """Run llama-quantize with a progress bar over its ``[ i/ n]`` tensor lines."""
    out: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    with ui.progress_bar(label, None) as bar:
        for line in proc.stdout:
            out.append(line)
            if m := re.match(r"^\[\s*(\d+)/\s*(\d+)\]", line):
                bar.update(bar.task_ids[0], completed=int(m.group(1)), total=int(m.group(2)))
    return proc.wait(), "".join(out)


def quantize(
    src: Path,
    types: list[str],
    out_dir: Path | None = None,
    out: Path | None = None,
    imatrix: Path | None = None,
    calibration: Path | None = None,
    threads: int | None = None,
    tree: llamacpp.Tree | None = None,
) -> dict[str, Any]:
    """Quantize ``src`` to every type in ``types``; returns a summary for ``--json``."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"input not found: {src}", "pass the f16 GGUF from `deploykit convert`")
    info = gguf_meta.read(src)  # InputError for a non-GGUF
    tree = tree or llamacpp.locate_tree()
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
    outputs = [Path(out)] if out is not None else [folder / f"{name}-{t}.gguf" for t in types]
    for path in outputs:
        check_output(path)
        if path.resolve() == src.resolve():
            raise InputError(f"output {path} is the input", "pass another --out")

    exe = llamacpp.tool("llama-quantize", tree)
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
    need_bytes = sum(p.est_bytes for p in plans)
    if disk_free(folder) < need_bytes * 1.05:
        raise ConversionError(
            f"not enough disk space in {folder}: the outputs need about {_fmt_bytes(need_bytes)} "
            f"({need_bytes} bytes), {_fmt_bytes(disk_free(folder))} free",
            "free some space or pass --out-dir on another disk",
        )

    imatrix_info = None
    if calibration is not None:
        imatrix = folder / f"{name}-imatrix.gguf"
        imatrix_info = compute_imatrix(src, calibration, imatrix, threads, tree)
    results = []
    for plan in plans:
        started = time.monotonic()
        fd, tname = tempfile.mkstemp(
            prefix=f".{plan.output.name}.", suffix=".partial", dir=plan.output.parent
        )
        os.close(fd)
        tmp = Path(tname)
        cmd = [str(exe)]
        if imatrix is not None:
            cmd += ["--imatrix", str(imatrix)]
        cmd += [str(src), str(tmp), plan.type, str(threads or os.cpu_count() or 1)]
        try:
            rc, text = _run_quantize(cmd, f"quantizing to {plan.type}")
            if rc != 0:
                if "No space left" in text:
                    raise ConversionError("the disk filled up while quantizing", "free some space")
                raise ConversionError(
                    f"llama-quantize failed for {plan.type}: {_last_error(text)}",
                    f"its full output is in {save_log(text, 'quantize')}",
                )
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, plan.output)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", text)
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
