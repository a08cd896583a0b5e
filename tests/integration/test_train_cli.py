"""`deploykit train` as a user runs it: --help, --config (a LlamaFactory-style YAML) with the
command line winning, a LoRA fine-tune that answers the demo probes, and merge + convert of
it into a GGUF that llama.cpp answers the same way."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from deploykit.demo import models
from deploykit.llamacpp import tools
from deploykit.llamacpp import tree as llamacpp
from deploykit.train.args import FIELDS
from tests.support.cli import run_cli


def test_help_documents_every_option_with_its_default():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Houlsby" in text and "out of scope" in text
    blocks = re.split(r"\n(?=  -)", text.split("Options:", 1)[1])
    documented = {}
    for block in blocks:
        names = re.findall(r"--[a-z0-9-]+", block.split("  ", 2)[1] if "  " in block else block)
        if names:
            documented[names[0]] = " ".join(block.split())
    for name in FIELDS:
        opt = "--" + name.replace("_", "-")
        assert opt in documented, opt
        assert re.search(r"default|\[required\]", documented[opt], re.I), documented[opt]
    assert "[default: none]" in documented["--config"]


@pytest.fixture(scope="module")
def probe_run(demo_dirs, tmp_path_factory):
    """A LoRA fine-tune on the demo probes' prompt/answer pairs, the way the demo trains it."""
    work = tmp_path_factory.mktemp("train-probes")
    base = demo_dirs["qwen2"] / "base"
    probes = json.loads((demo_dirs["qwen2"] / "probes.json").read_text())["probes"]
    data = work / "probes.jsonl"
    data.write_text("".join(
        json.dumps({"conversations": [{"from": "human", "value": p["prompt"]},
                                      {"from": "gpt", "value": p["answer"]}]},
                   ensure_ascii=False) + "\n" for p in probes))  # fmt: skip
    config = {  # a LlamaFactory training config, plus our own keys
        "model_name_or_path": str(base),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "template": "qwen",
        "lora_target": "all",
        "lora_rank": 8,
        "lora_alpha": 16,
        "learning_rate": 1.0,  # the command line overrides it
        "lr_scheduler_type": "constant",
        "warmup_ratio": 0.0,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 40,
        "logging_steps": 5,
        "cutoff_len": 256,
        "seed": 0,
        "output_dir": str(work / "from-config"),
    }
    (work / "train.yaml").write_text(yaml.safe_dump(config))
    out = work / "adapter"
    proc = run_cli(
        "train", "--config", str(work / "train.yaml"), "--data", str(data),
        "--learning-rate", "3e-3", "--out", str(out), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, base, out, probes, json.loads(proc.stdout)


def test_command_line_wins_over_config(probe_run):
    work, base, out, _, result = probe_run
    assert result["steps"] == 40 and result["method"] == "lora"
    saved = yaml.safe_load((out / "train_args.yaml").read_text())
    assert saved["learning_rate"] == 3e-3 and saved["max_steps"] == 40
    assert saved["base"] == str(base.resolve()) and saved["out"] == str(out)
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {"total_steps", "percentage", "elapsed_time", "remaining_time"} <= set(rows[0])
    assert all(r["lr"] == pytest.approx(3e-3) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 100
    assert not (work / "from-config").exists()


def test_lora_on_probe_pairs_answers_them(probe_run):
    _, base, out, probes, _ = probe_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(model, out).eval()
    got = models.greedy_answers(tuned, tokenizer, [p["prompt"] for p in probes])
    assert got == [p["completion"] for p in probes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(gguf: Path):
    port = _free_port()
    cmd = [str(tools.tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "-c", "512", "-np", "1", "-t", "2", "--no-webui"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "llama-server exited"
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "llama-server did not start"
            time.sleep(0.2)
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_merge_and_convert_give_a_gguf_that_answers_the_same(probe_run, tree):
    work, _, out, probes, _ = probe_run
    merged, gguf = work / "merged", work / "tuned-f16.gguf"
    proc = run_cli("merge", "--adapter", str(out), "--out", str(merged))
    assert proc.returncode == 0, proc.stderr
    conv = subprocess.run(
        llamacpp.converter_cmd(tree, str(merged), "--outtype", "f16", "--outfile", str(gguf)),
        env=llamacpp.converter_env(tree), capture_output=True, text=True,
    )  # fmt: skip
    assert conv.returncode == 0, conv.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    with llama_server(gguf) as client:
        for p in probes:
            body = {"prompt": models.prompt_ids(tokenizer, p["prompt"]), "n_predict": 32,
                    "temperature": 0.0, "top_k": 1, "cache_prompt": False}  # fmt: skip
            answer = client.post("/completion", json=body).json()["content"]
            assert answer == p["answer"], (p["prompt"], answer)


def test_malformed_record_is_one_error_line_with_exit_3(demo_dirs, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "Hi", "output": "Yo"}\n{"instruction": "Hi", "output": 5}\n')
    out = tmp_path / "out"
    proc = run_cli(
        "train", "--base", str(demo_dirs["qwen2"] / "base"), "--data", str(data), "--out", str(out)
    )
    assert proc.returncode == 3, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "record 1 (line 2): output must be a string, got int (hint: " in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
