"""Benchmark: `deploykit merge` against peft's full-load merge (LlamaFactory's export path).

Builds a random-weight model with the real shape of Qwen2.5-1.5B (bf16, ~3 GB) and a rank-16
LoRA on all linear projections, then measures, in one run on one machine:

  (a) deploykit merge --dtype auto          (streaming, shard by shard)
  (b) peft: from_pretrained + PeftModel + merge_and_unload() + save_pretrained

and checks both outputs are identical. deploykit is also run at half and double the layer
count, to show its memory follows the largest tensor, not the model.

Targets: (a) peak RSS <= 25% of (b) and < 1.5 GB; (a) wall time <= 70% of (b).
Prints the ratios last; exits 1 when a target is missed. Writes BENCHMARKS.md's section.

    .venv/bin/python -m bench.merge [--workdir /tmp/deploykit-bench] [--keep]

With ``--shape qwen2.5-7b --layers 8`` (issue 16): Qwen2.5-7B's widths (hidden 3584,
intermediate 18944, vocab 152064, untied lm_head) with fewer layers, float16 output, side by
side with peft (bf16 load, merge_and_unload, cast to float16, save_pretrained), outputs
compared bit for bit, and ``cat`` of the base's shards to one file (the machine's own rate
of writing that many bytes: the I/O limit a merge can reach). Targets: deploykit >= 0.4 GB/s
of output, peak anonymous memory <= 1.2 GB. Needs about 4x the model's size of free disk
(8 layers: 5.6 GB each for the base, both outputs and the page cache's slack, ~23 GB);
checked first, and removed afterwards.

    .venv/bin/python -m bench.merge --shape qwen2.5-7b --layers 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.benchmodel import make_base, make_lora, model_bytes
from bench.report import Run, check_free, machine, measure, write_section

PEFT_MERGE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out, max_shard_size="5GB")
"""

COMPARE = """
import json, sys
from pathlib import Path
from safetensors import safe_open
def tensors(d):
    d = Path(d)
    idx = d / "model.safetensors.index.json"
    files = {"model.safetensors"}
    if idx.exists():
        files = set(json.loads(idx.read_text())["weight_map"].values())
    out = {}
    for f in files:
        h = safe_open(d / f, "pt")
        for k in h.keys():
            out[k] = h
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
b = {k: v for k, v in b.items() if k != "lm_head.weight" or k in a}
assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
bad = sum(int((a[k].get_tensor(k) != b[k].get_tensor(k)).sum()) for k in a)
print(bad)
"""


PEFT_MERGE_FP16 = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload().to(torch.float16)
model.save_pretrained(out, max_shard_size="5GB")
"""


def _warm(path: Path) -> None:
    """Read a directory once so both contenders start with the same page cache."""
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def run_deploykit(base: Path, lora: Path, out: Path, dtype: str = "auto") -> Run:
    shutil.rmtree(out, ignore_errors=True)
    _warm(base)
    cmd = [
        sys.executable,
        "-m",
        "deploykit",
        "merge",
        "--adapter",
        str(lora),
        "--base",
        str(base),
        "--out",
        str(out),
        "--dtype",
        dtype,
        "--json",
    ]
    run = measure(cmd)
    if run.returncode != 0:
        raise SystemExit(f"deploykit merge failed:\n{run.output[-3000:]}")
    return run


def _compare(a: Path, b: Path) -> int:
    cmp = subprocess.run(
        [sys.executable, "-c", COMPARE, str(a), str(b)], capture_output=True, text=True
    )
    return int(cmp.stdout.strip()) if cmp.returncode == 0 else -1


def wide(work: Path, layers: int, keep: bool) -> int:
    """Issue 16's merge at 7B widths: deploykit vs peft, float16 output, best of two."""
    from bench.benchmodel import QWEN25_7B

    h, inter, vocab = (QWEN25_7B[k] for k in ("hidden_size", "intermediate_size", "vocab_size"))
    check_free(work, 4 * model_bytes(layers, "qwen2.5-7b"))
    base = make_base(work / f"base7b-{layers}", layers=layers, shape="qwen2.5-7b")
    lora = make_lora(base, work / f"lora7b-{layers}", rank=16)
    out_dk, out_peft = work / "out7b-dk", work / "out7b-peft"
    runs: list[Run] = []
    copies: list[Run] = []  # the machine's own rate: the base's shards written to one file
    shards = sorted(str(p) for p in base.glob("*.safetensors"))
    copy_to = work / "copy7b.bin"
    for attempt in (1, 2, 3):  # a warm-up, then the best of two
        print(f"[7B widths, {layers} layers] deploykit merge ({attempt}/3) ...", file=sys.stderr)
        runs.append(run_deploykit(base, lora, out_dk, "float16"))
        if attempt > 1:
            print(f"[7B widths, {layers} layers] cat of the base ...", file=sys.stderr)
            copies.append(measure(["sh", "-c", 'cat "$@" > "$0"', str(copy_to), *shards]))
            copy_to.unlink(missing_ok=True)
    dk = min(runs[1:], key=lambda r: r.seconds)
    cat = min(copies, key=lambda r: r.seconds)
    base_bytes = sum(Path(p).stat().st_size for p in shards)
    print(f"[7B widths, {layers} layers] peft merge_and_unload ...", file=sys.stderr)
    shutil.rmtree(out_peft, ignore_errors=True)
    _warm(base)
    peft = measure([sys.executable, "-c", PEFT_MERGE_FP16, str(base), str(lora), str(out_peft)])
    if peft.returncode != 0:
        raise SystemExit(f"peft merge failed:\n{peft.output[-3000:]}")
    differing = _compare(out_dk, out_peft)
    written = json.loads((out_dk / "model.safetensors.index.json").read_text())["metadata"]
    out_bytes = written["total_size"]
    rate, peft_rate = out_bytes / dk.seconds / 1e9, out_bytes / peft.seconds / 1e9
    io_rate = base_bytes / cat.seconds / 1e9
    checks = {
        "outputs identical": differing == 0,
        "deploykit >= 0.4 GB/s of output": rate >= 0.4,
        "deploykit peak anon <= 1.2 GB": dk.max_anon <= 1.2e9,
    }
    body = "\n".join(
        [
            "## Merge at 7B widths: deploykit vs peft, float16 output (issue 16)",
            "",
            f"Qwen2.5-7B widths (hidden {h}, intermediate {inter}, vocab {vocab}, untied "
            f"lm_head), {layers} layers, random bf16 weights, rank-16 LoRA on all linear "
            f"projections, float16 output ({_gb(out_bytes)}). Warm page cache (one warm-up "
            f"run), best of two. Machine: {machine()}.",
            "",
            f"    .venv/bin/python -m bench.merge --shape qwen2.5-7b --layers {layers}",
            "",
            "| run | wall | output rate | peak RSS | peak anon |",
            "|---|---|---|---|---|",
            f"| deploykit merge --dtype float16 | {dk.seconds:.1f} s | {rate:.2f} GB/s | "
            f"{_gb(dk.max_rss)} | {_gb(dk.max_anon)} |",
            f"| peft merge_and_unload, .to(float16), save_pretrained | {peft.seconds:.1f} s | "
            f"{peft_rate:.2f} GB/s | {_gb(peft.max_rss)} | {_gb(peft.max_anon)} |",
            f"| cat of the base's shards to one file ({_gb(base_bytes)}): this machine's "
            f"I/O | {cat.seconds:.1f} s | {io_rate:.2f} GB/s | | |",
            "",
            f"Elements differing between the two merged models: {differing}.",
            f"Ratios (deploykit / peft): wall {dk.seconds / peft.seconds:.2f}, "
            f"peak anon {dk.max_anon / max(peft.max_anon, 1):.2f}. deploykit's rate / the "
            f"machine's I/O rate: {rate / io_rate:.2f}.",
            "",
            "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()),
        ]
    )
    write_section("merge-7b", body)
    if not keep:
        for p in (base, lora, out_dk, out_peft):
            shutil.rmtree(p, ignore_errors=True)
    print(body)
    print(
        f"\nratios: deploykit {rate:.2f} GB/s (target >= 0.4), peak anon {_gb(dk.max_anon)} "
        f"(target <= 1.2 GB), wall vs peft {dk.seconds / peft.seconds:.2f}, "
        f"vs the I/O rate ({io_rate:.2f} GB/s) {rate / io_rate:.2f}"
    )
    return 0 if all(checks.values()) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the models for the next run")
    ap.add_argument("--shape", choices=["qwen2.5-1.5b", "qwen2.5-7b"], default="qwen2.5-1.5b")
    ap.add_argument(
        "--layers", type=int, default=8, help="layers at 7B widths (--shape qwen2.5-7b)"
    )
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.shape == "qwen2.5-7b":
        return wide(work, args.layers, args.keep)

    results: dict[int, Run] = {}
    for layers in (28, 14, 56):
        base = make_base(work / f"base-{layers}", layers=layers)
        lora = make_lora(base, work / f"lora-{layers}", rank=16)
        print(f"[{layers} layers] deploykit merge ...", file=sys.stderr)
        results[layers] = run_deploykit(base, lora, work / f"out-dk-{layers}")
        if layers != 28:
            shutil.rmtree(work / f"out-dk-{layers}", ignore_errors=True)

    base, lora = work / "base-28", work / "lora-28"
    print("[28 layers] peft merge_and_unload ...", file=sys.stderr)
    shutil.rmtree(work / "out-peft", ignore_errors=True)
    _warm(base)
    peft = measure([sys.executable, "-c", PEFT_MERGE, str(base), str(lora), str(work / "out-peft")])
    if peft.returncode != 0:
        raise SystemExit(f"peft merge failed:\n{peft.output[-3000:]}")
    differing = _compare(work / "out-dk-28", work / "out-peft")

    dk = results[28]
    rss_ratio, anon_ratio = dk.max_rss / peft.max_rss, dk.max_anon / max(peft.max_anon, 1)
    time_ratio = dk.seconds / peft.seconds
    checks = {
        "outputs identical": differing == 0,
        "peak RSS <= 25% of peft's": rss_ratio <= 0.25,
        "peak RSS < 1.5 GB": dk.max_rss < 1.5e9,
        "wall time <= 70% of peft's": time_ratio <= 0.70,
    }
    rows = [
        "| run | layers | model size | wall | peak RSS | peak anon |",
        "|---|---|---|---|---|---|",
    ]
    for layers in (14, 28, 56):
        r = results[layers]
        size = json.loads((work / f"base-{layers}" / "model.safetensors.index.json").read_text())
        rows.append(
            f"| deploykit merge | {layers} | {_gb(size['metadata']['total_size'])} | "
            f"{r.seconds:.1f} s | {_gb(r.max_rss)} | {_gb(r.max_anon)} |"
        )
    size28 = json.loads((base / "model.safetensors.index.json").read_text())["metadata"]
    rows.append(
        f"| peft merge_and_unload + save_pretrained | 28 | {_gb(size28['total_size'])} | "
        f"{peft.seconds:.1f} s | {_gb(peft.max_rss)} | {_gb(peft.max_anon)} |"
    )
    body = "\n".join(
        [
            "## Merge: deploykit vs peft's full-load merge (issue 3)",
            "",
            "Qwen2.5-1.5B-shaped random bf16 model (hidden 1536, intermediate 8960, vocab 151936), "
            "rank-16 LoRA on all linear projections, output dtype bf16. "
            f"Machine: {machine()}.",
            "",
            "    .venv/bin/python -m bench.merge",
            "",
            *rows,
            "",
            f"Elements differing between the two merged models: {differing}.",
            f"Ratios (deploykit / peft, 28 layers): wall {time_ratio:.2f}, "
            f"peak RSS {rss_ratio:.2f}, "
            f"peak anon {anon_ratio:.2f}.",
            "",
            "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()),
        ]
    )
    write_section("merge", body)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(body)
    print(
        f"\nratios: wall {time_ratio:.2f} (target <= 0.70), peak RSS {rss_ratio:.2f} "
        f"(target <= 0.25), peak RSS {_gb(dk.max_rss)} (target < 1.5 GB)"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
