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
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.benchmodel import make_base, make_lora
from bench.report import Run, machine, measure, write_section

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


def _warm(path: Path) -> None:
    """Read a directory once so both contenders start with the same page cache."""
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def run_deploykit(base: Path, lora: Path, out: Path) -> Run:
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
        "auto",
        "--json",
    ]
    run = measure(cmd)
    if run.returncode != 0:
        raise SystemExit(f"deploykit merge failed:\n{run.output[-3000:]}")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the models for the next run")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

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
    cmp = subprocess.run(
        [sys.executable, "-c", COMPARE, str(work / "out-dk-28"), str(work / "out-peft")],
        capture_output=True,
        text=True,
    )
    differing = int(cmp.stdout.strip()) if cmp.returncode == 0 else -1

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
