"""Benchmark: `deploykit train` (LoRA) against a plain peft + transformers.Trainer script.

Both train the same LoRA (rank 8, alpha 16, all linear projections) with the same Trainer
settings on the same synthetic alpaca data, rendered through the model's chat template with
the loss on the answer only, on CPU, on two Qwen2-shaped models:

  tiny   the demo base (hidden 256, 2 layers, vocab 151936: ~40M parameters, mostly embedding)
  100M   a random Qwen2 (hidden 512, 8 layers, intermediate 1536, vocab 151936): ~101M

Measured per run: tokens per second (trained tokens / wall time of the whole command, and
/ the training loop alone), tokens per CPU second (user + system time) and peak RSS. Runs
alternate and repeat (--repeat); the best of each is kept, which damps noise from other work
on the machine.

Target: deploykit's overhead < 10%: tokens per CPU second >= 0.9 x plain (wall-clock
tokens/s is reported beside it, but on a shared machine it measures the neighbours) and
peak RSS <= 1.1 x plain.
Prints the ratios last; exits 1 when a target is missed. Writes BENCHMARKS.md's section.

    .venv/bin/python -m bench.train [--workdir /tmp/deploykit-bench-train] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
from pathlib import Path

SETTINGS = {
    "learning_rate": 1e-4,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "logging_steps": 2,
    "cutoff_len": 256,
    "seed": 0,
}
LORA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
#: The ~100M model: (hidden, layers, heads, kv heads, intermediate).
SHAPE_100M = (512, 8, 8, 2, 1536)
STEPS = {"tiny": 32, "100M": 12}

# The plain script: what a user writes with peft + Trainer, no deploykit. Same settings.
PLAIN = """
import json, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                          TrainingArguments, set_seed)

base, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = json.loads(sys.argv[5])
tok = AutoTokenizer.from_pretrained(base)
rows = []
for r in json.load(open(data)):
    user = [{"role": "user", "content": r["instruction"]}]
    prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": r["output"]}],
                                   tokenize=True, return_dict=True)["input_ids"]
    ids = full[: s["cutoff_len"]]
    labels = ([-100] * len(prompt) + full[len(prompt):])[: s["cutoff_len"]]
    rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
set_seed(s["seed"])
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                         target_modules=s["targets"], task_type="CAUSAL_LM"))
args = TrainingArguments(
    output_dir=out, learning_rate=s["learning_rate"], lr_scheduler_type=s["lr_scheduler_type"],
    warmup_steps=s["warmup_ratio"], per_device_train_batch_size=s["per_device_train_batch_size"],
    gradient_accumulation_steps=s["gradient_accumulation_steps"], max_steps=steps,
    logging_steps=s["logging_steps"], seed=s["seed"], save_strategy="no", report_to="none",
    remove_unused_columns=False, include_num_input_tokens_seen="non_padding",
    dataloader_pin_memory=False)
trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tok,
                  data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
result = trainer.train()
model.save_pretrained(out)
tok.save_pretrained(out)
print(json.dumps({"tokens_trained": int(trainer.state.num_input_tokens_seen),
                  "train_seconds": result.metrics["train_runtime"],
                  "train_loss": result.metrics["train_loss"]}))
"""

WORDS = [
    *("model", "adapter", "weights", "merge", "quantize", "template", "token", "layer"),
    *("rank", "alpha", "learning", "rate", "schedule", "warmup", "cosine", "batch"),
    *("gradient", "step", "epoch", "loss", "answer", "prompt", "system", "user", "data"),
]


def make_data(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Alpaca records of 24-word instructions and 24-word answers."""
    rng = random.Random(seed)
    rows = [
        {
            "instruction": " ".join(rng.choice(WORDS) for _ in range(24)) + "?",
            "input": "",
            "output": " ".join(rng.choice(WORDS) for _ in range(24)) + ".",
        }
        for _ in range(n)
    ]
    path.write_text(json.dumps(rows))
    return path


def make_model(out: Path, shape: tuple[int, int, int, int, int]) -> Path:
    """A random Qwen2-shaped bf16 model with the real Qwen2 tokenizer and chat template."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from deploykit.demo.tokenizer import tokenizer_dir
    from deploykit.llamacpp.tree import locate_tree

    hidden, layers, heads, kv, inter = shape
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok = tokenizer_dir("qwen2", locate_tree().path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok / name, tmp / name)
    tmp.rename(out)
    return out


def params(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            for k in h.keys():  # noqa: SIM118
                shape = h.get_slice(k).get_shape()
                size = 1
                for d in shape:
                    size *= d
                n += size
    return n


def deploykit_cmd(base: Path, data: Path, out: Path, steps: int) -> list[str]:
    cmd = [sys.executable, "-m", "deploykit", "train", "--base", str(base), "--data", str(data)]
    cmd += ["--out", str(out), "--force", "--max-steps", str(steps), "--json", "--lora-rank", "8"]
    cmd += ["--lora-alpha", "16", "--lora-target", ",".join(LORA_TARGETS), "--precision", "fp32"]
    for k, v in SETTINGS.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    return cmd


def plain_cmd(base: Path, data: Path, out: Path, steps: int) -> list[str]:
    settings = json.dumps({**SETTINGS, "targets": LORA_TARGETS})
    return [sys.executable, "-c", PLAIN, str(base), str(data), str(out), str(steps), settings]


def cpu_seconds(output: str) -> float:
    """User + system CPU seconds of a run, from `/usr/bin/time -v`."""
    user = re.search(r"User time \(seconds\): ([\d.]+)", output)
    system = re.search(r"System time \(seconds\): ([\d.]+)", output)
    return float(user.group(1)) + float(system.group(1))


def _result(output: str) -> dict:
    """The JSON object a run printed: deploykit's indented one, or the plain script's line."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('{"tokens_trained"'):
            return json.loads(line)
        if line == "{":
            end = lines.index("}", i)
            return json.loads("\n".join(lines[i : end + 1]))
    raise ValueError(f"no JSON result in the output: {output[-500:]}")


def main(argv: list[str] | None = None) -> int:
    from bench.report import machine, measure, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench-train"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    opts = ap.parse_args(argv)
    work = opts.workdir
    work.mkdir(parents=True, exist_ok=True)

    from deploykit.demo import models as demo
    from deploykit.llamacpp.tree import locate_tree

    if not (work / "demo" / "base").is_dir():
        demo.init(work / "demo", "qwen2", locate_tree().path, force=True)
    bases = {"tiny": work / "demo" / "base", "100M": make_model(work / "m100", SHAPE_100M)}
    data = make_data(work / "data.json")

    rows, ratios, ok = [], [], True
    for name, base in bases.items():
        steps = STEPS[name]
        best: dict[str, dict] = {}
        for rep in range(opts.repeat):
            for impl, make in (("deploykit", deploykit_cmd), ("plain", plain_cmd)):
                out = work / f"out-{name}-{impl}"
                shutil.rmtree(out, ignore_errors=True)
                r = measure(make(base, data, out, steps))
                if r.returncode != 0:
                    print(r.output[-3000:], file=sys.stderr)
                    raise SystemExit(f"{impl} on {name} failed (exit {r.returncode})")
                res = _result(r.output)
                m = {
                    "wall": r.seconds,
                    "cpu": cpu_seconds(r.output),
                    "rss": r.max_rss,
                    "tokens": res["tokens_trained"],
                    "train": res["train_seconds"],
                }
                m["tps"] = m["tokens"] / m["wall"]
                m["cpu_tps"] = m["tokens"] / m["cpu"]
                m["loop_tps"] = m["tokens"] / m["train"]
                print(
                    f"{name:5} {impl:9} run {rep + 1}: {m['wall']:6.1f} s, {m['cpu']:6.1f} CPU s, "
                    f"{m['tps']:7.1f} tok/s ({m['loop_tps']:.1f} in the loop, "
                    f"{m['cpu_tps']:.1f} per CPU s), peak RSS {m['rss'] / 2**30:.2f} GB",
                    flush=True,
                )
                prev = best.get(impl)
                best[impl] = {
                    k: (max if k.endswith("tps") else min)(m[k], prev[k]) if prev else m[k]
                    for k in m
                }
        d, p = best["deploykit"], best["plain"]
        if d["tokens"] != p["tokens"]:
            raise SystemExit(f"{name}: token counts differ ({d['tokens']} vs {p['tokens']})")
        n = params(base)
        for impl, m in (("deploykit train", d), ("plain peft + Trainer", p)):
            rows.append(
                f"| {impl} | {name} ({n / 1e6:.0f}M) | {steps} | {m['tokens']} | {m['wall']:.1f} s "
                f"| {m['cpu']:.1f} s | {m['tps']:.0f} | {m['loop_tps']:.0f} | {m['cpu_tps']:.1f} "
                f"| {m['rss'] / 2**30:.2f} GB |"
            )
        tps, loop, rss = d["tps"] / p["tps"], d["loop_tps"] / p["loop_tps"], d["rss"] / p["rss"]
        cpu = d["cpu_tps"] / p["cpu_tps"]
        met = cpu >= 0.9 and rss <= 1.1
        ok &= met
        ratios.append(
            f"{name}: tokens per CPU second {cpu:.3f}, peak RSS {rss:.3f} — "
            + ("met" if met else "MISSED")
            + f" (wall tokens/s {tps:.3f}, training loop {loop:.3f})"
        )

    body = "\n".join(
        [
            "## Train: deploykit vs a plain peft + Trainer script (issue 8)",
            "",
            "LoRA r=8, alpha 16 on all linear projections, fp32 on CPU, batch 2, constant lr "
            "1e-4, synthetic alpaca records (~80 tokens each after the chat template, "
            "loss on the answer). Best of "
            f"{opts.repeat} alternating runs. Tokens/s = trained (non-padding) tokens / wall "
            "time of the whole command (start-up, data, training, saving, plot); the loop "
            "column is the training loop alone; tokens / CPU s divides by the command's user + "
            "system CPU time, which other work on a shared machine disturbs less than wall "
            "time (not nothing: busy cores inflate it too), so the overhead target is judged on "
            "it and on peak RSS. "
            f"Machine: {machine()}.",
            "",
            f"    .venv/bin/python -m bench.train --repeat {opts.repeat}",
            "",
            "| run | model | steps | tokens | wall | CPU | tokens/s | tokens/s (loop) "
            "| tokens / CPU s | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Ratios (deploykit / plain): " + "; ".join(ratios) + ".",
            "",
            "Target: overhead < 10% (tokens per CPU second >= 0.9x, peak RSS <= 1.1x): "
            + ("met" if ok else "MISSED"),
        ]
    )
    if not opts.no_write:
        write_section("train", body)
    if not opts.keep:
        for out in work.glob("out-*"):
            shutil.rmtree(out, ignore_errors=True)
    print()
    print("\n".join(ratios))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
