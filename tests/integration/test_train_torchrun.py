"""``torchrun --nproc_per_node 2 -m deploykit train`` on CPU (gloo, OMP_NUM_THREADS=1) is
data-parallel training: one adapter, one trainer_log.jsonl, one plot and one summary, from
rank 0, and with a fixed data order, dropout 0 and the same global batch it reaches the final
loss of a one-process run. Costs about 30 s on 2 cores (two 3-step runs on the demo base)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.train import run

RECORDS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}
           for i in range(8)]  # fmt: skip


def train(cmd: list[str], base: Path, data: Path, out: Path, per_device: int):
    args = ["-m", "deploykit", "train", "--base", str(base), "--data", str(data),
            "--out", str(out), "--cutoff-len", "96", "--max-steps", "3", "--logging-steps", "1",
            "--learning-rate", "1e-3", "--lr-scheduler-type", "constant", "--warmup-ratio", "0",
            "--lora-rank", "4", "--lora-dropout", "0", "--seed", "0",
            "--gradient-accumulation-steps", "1", "--per-device-train-batch-size", str(per_device),
            "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(demo_dirs, tmp_path_factory):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    work = tmp_path_factory.mktemp("torchrun")
    base = demo_dirs["qwen2"] / "base"
    data = work / "data.json"
    data.write_text(json.dumps(RECORDS))
    # the same global batch of 4: one process x 4, or two processes x 2
    one = train([sys.executable], base, data, work / "one", 4)
    two = train([str(torchrun), "--standalone", "--nproc_per_node", "2"],
                base, data, work / "two", 2)  # fmt: skip
    return {"work": work, "one": one, "two": two}


def test_two_processes_write_one_adapter_log_and_plot(runs):
    work, two = runs["work"], runs["two"]
    out = work / "two"
    assert (out / "adapter_model.safetensors").is_file() and (out / run.PLOT_FILE).is_file()
    rows = run.read_log(out / run.LOG_FILE)
    assert [r["current_steps"] for r in rows] == [1, 2, 3]  # rank 0's rows only, once
    assert json.loads(two.stdout)["steps"] == 3  # one summary: a second would not parse
    assert two.stderr.count("training lora on 8 examples") == 1
    assert sorted(p.name for p in work.iterdir()) == ["data.json", "one", "two"]  # no temp left


def test_two_processes_reach_the_one_process_loss(runs):
    one = run.read_log(runs["work"] / "one" / run.LOG_FILE)
    two = run.read_log(runs["work"] / "two" / run.LOG_FILE)
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one]  # the data is split, not copied
    final_one, final_two = one[-1]["loss"], two[-1]["loss"]
    assert abs(final_two - final_one) <= 1e-3 * abs(final_one)
    summary_one, summary_two = json.loads(runs["one"].stdout), json.loads(runs["two"].stdout)
    assert summary_two["train_loss"] == pytest.approx(summary_one["train_loss"], rel=1e-3)
