"""Benchmark: `deploykit convert` + `deploykit quantize` against the vendored tools run by hand.

Builds a random-weight model with the real shape of Qwen2.5-1.5B (bf16, ~3 GB), then measures
in one run on one machine, alternating the two ways, best of --repeat:

  raw:       python vendor/llama.cpp/convert_hf_to_gguf.py BASE --outtype f16 --outfile F16
             llama-quantize F16 Q4_K_M.gguf Q4_K_M THREADS
  deploykit: deploykit convert BASE --out F16          (pre-checks, progress, template check,
             deploykit quantize F16 --quant q4_k_m      temp name + fsync + rename)

Target: deploykit's wall time and peak RSS within 5% of the raw tools' for each step.
deploykit fsyncs its outputs (nothing half-written at a final path); the raw tools do not, so
each raw run is followed by an fsync of its output, timed with it, to compare the same work.
Prints the ratios last; exits 1 when a target is missed. Writes BENCHMARKS.md's section.

    .venv/bin/python -m bench.convert [--workdir /tmp/deploykit-bench-convert] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

from bench.benchmodel import make_base
from bench.report import Run, machine, measure, write_section
from deploykit.llamacpp import tools
from deploykit.llamacpp import tree as llamacpp

TARGET = 1.05


def _fsync(path: Path) -> float:
    started = time.monotonic()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.monotonic() - started


def cpu_seconds(run: Run) -> float:
    """User + system CPU seconds of the command and its children (from /usr/bin/time -v)."""
    total = 0.0
    for key in ("User time (seconds)", "System time (seconds)"):
        m = re.search(re.escape(key) + r": ([\d.]+)", run.output)
        total += float(m.group(1)) if m else 0.0
    return total


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _check(run: Run, what: str) -> Run:
    if run.returncode != 0:
        print(run.output[-3000:], file=sys.stderr)
        raise SystemExit(f"{what} failed (exit {run.returncode})")
    return run


def raw(base: Path, out: Path, threads: int) -> tuple[Run, Run]:
    tree = llamacpp.locate_tree()
    f16, q4 = out / "raw-F16.gguf", out / "raw-Q4_K_M.gguf"
    conv = _check(
        measure(
            llamacpp.converter_cmd(tree, str(base), "--outtype", "f16", "--outfile", str(f16)),
            env=llamacpp.converter_env(tree),
        ),
        "raw convert",
    )
    conv.seconds += _fsync(f16)
    quant = _check(
        measure(
            [str(tools.tool("llama-quantize", tree)), str(f16), str(q4), "Q4_K_M", str(threads)]
        ),
        "raw quantize",
    )
    quant.seconds += _fsync(q4)
    return conv, quant


def deploykit(base: Path, out: Path, threads: int) -> tuple[Run, Run]:
    f16 = out / "model-F16.gguf"
    dk = [sys.executable, "-m", "deploykit"]
    conv = _check(measure([*dk, "convert", str(base), "--out", str(f16)]), "deploykit convert")
    quant = _check(
        measure([*dk, "quantize", str(f16), "--quant", "q4_k_m", "--threads", str(threads)]),
        "deploykit quantize",
    )
    return conv, quant


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench-convert"))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each way; the best counts")
    ap.add_argument("--layers", type=int, default=28)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    base = make_base(args.workdir / f"qwen25-1.5b-shape-{args.layers}l", layers=args.layers)
    out = args.workdir / "out"
    best: dict[str, list[Run]] = {}
    sizes: dict[str, int] = {}
    for i in range(args.repeat):
        for name, fn in (
            (("raw", raw), ("deploykit", deploykit))
            if i % 2 == 0
            else (
                ("deploykit", deploykit),
                ("raw", raw),
            )
        ):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            runs = list(fn(base, out, threads))
            if name == "deploykit":
                sizes = {t: (out / f"model-{t}.gguf").stat().st_size for t in ("F16", "Q4_K_M")}
            print(
                f"run {i + 1} {name:9}: convert {runs[0].seconds:6.1f}s "
                f"{_gb(runs[0].max_rss)}, quantize {runs[1].seconds:6.1f}s {_gb(runs[1].max_rss)}",
                flush=True,
            )
            prev = best.get(name)
            best[name] = [
                r if prev is None or r.seconds < p.seconds else p
                for r, p in zip(runs, prev or runs, strict=True)
            ]
    shutil.rmtree(out, ignore_errors=True)

    rows, ratios, ok = [], [], True
    for k, step in enumerate(("convert (f16)", "quantize (Q4_K_M)")):
        r, d = best["raw"][k], best["deploykit"][k]
        t, m = d.seconds / r.seconds, d.max_rss / r.max_rss
        c = cpu_seconds(d) / max(cpu_seconds(r), 1e-9)
        ok = ok and t <= TARGET and m <= TARGET
        rows.append(
            f"| {step} | {r.seconds:.1f} s | {d.seconds:.1f} s | {t:.3f} | "
            f"{cpu_seconds(r):.1f} s | {cpu_seconds(d):.1f} s | {c:.3f} | "
            f"{_gb(r.max_rss)} | {_gb(d.max_rss)} | {m:.3f} |"
        )
        ratios.append(f"{step}: time x{t:.3f}, CPU time x{c:.3f}, peak RSS x{m:.3f}")
    load = os.getloadavg()
    body = "\n".join(
        [
            "## GGUF conversion and quantization (`bench/convert.py`)",
            "",
            f"Random-weight Qwen2.5-1.5B-shaped model ({args.layers} layers, bf16, tied "
            f"embeddings); {machine()}; {threads} quantize threads; best of {args.repeat} "
            f"alternating runs. Output sizes: F16 {_gb(sizes['F16'])}, Q4_K_M "
            f"{_gb(sizes['Q4_K_M'])}. Raw runs include an fsync of their output (deploykit "
            "fsyncs before its rename). Target: deploykit within 5% of the raw tools.",
            "",
            "| step | raw wall | deploykit wall | wall ratio | raw CPU | deploykit CPU "
            "| CPU ratio | raw peak RSS | deploykit peak RSS | RSS ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Load average at the end: {load[0]:.2f} on {os.cpu_count()} cores (the machine is "
            "shared with other jobs: wall times carry their contention; CPU time, user + system "
            "of the command and its children, is the steadier measure of overhead). "
            "Gate (wall time and peak RSS): " + ("**met**." if ok else "**missed**."),
            "",
            "Reproduce: `.venv/bin/python -m bench.convert --repeat 2`",
        ]
    )
    write_section("convert", body)
    print(body)
    print("\n".join(["", "ratios (deploykit / raw):", *ratios]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
