"""Benchmark: `deploykit ship` end to end vs the manual chain users follow today.

On the Qwen2.5-1.5B-shaped random model (bench/benchmodel.py) with a rank-16 LoRA, one run,
same machine, same quant (Q4_K_M, 2 threads):

  manual: peft merge_and_unload + save_pretrained  ->  convert_hf_to_gguf.py  ->  llama-quantize
  deploykit ship --verify none --target none      (the like-for-like comparison)

plus the cost of `--verify light` reported separately. Targets: ship wall <= 80% of the manual
chain; ship's peak RSS no higher than the heaviest raw llama.cpp step run alone. Peak RSS and
peak anonymous memory are reported separately. Prints the ratios last; exits 1 on a miss.

    .venv/bin/python -m bench.ship [--workdir /tmp/deploykit-bench] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.benchmodel import make_base, make_lora
from bench.merge import PEFT_MERGE, _gb, _warm
from bench.report import machine, measure, write_section
from deploykit.llamacpp import tools
from deploykit.llamacpp import tree as llamacpp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.workdir
    base = make_base(work / "base-28", layers=28)
    lora = make_lora(base, work / "lora-28", rank=16)
    tree = llamacpp.locate_tree()
    for d in ("manual", "ship-work", "ship-out", "ship-light-work", "ship-light-out"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "manual").mkdir()

    _warm(base)
    runs = {}
    runs["merge (peft)"] = measure(
        [sys.executable, "-c", PEFT_MERGE, str(base), str(lora), str(work / "manual" / "merged")]
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):  # LlamaFactory's export saves these
        shutil.copyfile(base / name, work / "manual" / "merged" / name)
    runs["convert (convert_hf_to_gguf.py)"] = measure(
        llamacpp.converter_cmd(
            tree,
            str(work / "manual" / "merged"),
            "--outtype",
            "f16",
            "--outfile",
            str(work / "manual" / "f16.gguf"),
        ),
        env=llamacpp.converter_env(tree),
    )
    runs["quantize (llama-quantize)"] = measure(
        [
            str(tools.tool("llama-quantize", tree)),
            str(work / "manual" / "f16.gguf"),
            str(work / "manual" / "q4_k_m.gguf"),
            "Q4_K_M",
            "2",
        ]
    )
    for label, r in runs.items():
        if r.returncode != 0:
            raise SystemExit(f"{label} failed:\n{r.output[-2000:]}")
    manual_wall = sum(r.seconds for r in runs.values())
    llama_peak = max(
        runs["convert (convert_hf_to_gguf.py)"].max_rss, runs["quantize (llama-quantize)"].max_rss
    )

    def ship(verify: str, prefix: str):
        _warm(base)
        cmd = [
            sys.executable,
            "-m",
            "deploykit",
            "ship",
            "--adapter",
            str(lora),
            "--base",
            str(base),
            "--quant",
            "q4_k_m",
            "--name",
            "bench",
            "--target",
            "none",
            "--verify",
            verify,
            # random weights: the KL divergence of their quant says nothing; measure, don't gate
            "--allow-failed",
            "q4_k_m",
            "--work-dir",
            str(work / f"{prefix}-work"),
            "--out",
            str(work / f"{prefix}-out"),
        ]
        r = measure(cmd)
        if r.returncode != 0:
            raise SystemExit(f"ship --verify {verify} failed:\n{r.output[-3000:]}")
        return r

    dk = ship("none", "ship")
    light = ship("light", "ship-light")
    wall_ratio = dk.seconds / manual_wall
    checks = {
        "wall <= 80% of the manual chain": wall_ratio <= 0.80,
        "peak RSS <= heaviest raw llama.cpp step": dk.max_rss <= llama_peak,
    }
    rows = ["| run | wall | peak RSS | peak anon |", "|---|---|---|---|"]
    for label, r in runs.items():
        rows.append(
            f"| manual: {label} | {r.seconds:.1f} s | {_gb(r.max_rss)} | {_gb(r.max_anon)} |"
        )
    rows.append(
        f"| **manual chain, total** | **{manual_wall:.1f} s** | "
        f"{_gb(max(r.max_rss for r in runs.values()))} | |"
    )
    rows.append(
        f"| deploykit ship --verify none | {dk.seconds:.1f} s | {_gb(dk.max_rss)} | "
        f"{_gb(dk.max_anon)} |"
    )
    rows.append(
        f"| deploykit ship --verify light | {light.seconds:.1f} s | {_gb(light.max_rss)} | "
        f"{_gb(light.max_anon)} |"
    )
    body = "\n".join(
        [
            "## Ship: deploykit vs the manual chain (issue 10)",
            "",
            "Qwen2.5-1.5B-shaped random bf16 model, rank-16 LoRA on all linear projections, Q4_K_M "
            f"with 2 threads. Machine: {machine()}.",
            "",
            "    .venv/bin/python -m bench.ship",
            "",
            *rows,
            "",
            f"Ratios: ship wall / manual chain {wall_ratio:.2f} (target <= 0.80); ship peak RSS "
            f"{_gb(dk.max_rss)} vs heaviest raw llama.cpp step {_gb(llama_peak)}. "
            f"Cost of --verify light: {light.seconds - dk.seconds:.1f} s.",
            "",
            "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()),
        ]
    )
    write_section("ship", body)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(body)
    print(
        f"\nratios: wall {wall_ratio:.2f} (<= 0.80), peak RSS {_gb(dk.max_rss)} "
        f"(<= {_gb(llama_peak)})"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
