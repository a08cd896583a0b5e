"""``deploykit eval`` on the demo fine-tune through all three backends: the model in Ollama
(the compatible test server), its f16 and q4_k_m GGUFs (llama-server), and the HF base with
the unmerged adapter (transformers); --compare with the --max-drop gate; Ctrl-C; a crashed
llama-server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.eval.run import PREDICTIONS
from tests.support.cli import one_error_line, run_cli

KEYS = {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l",
        "predict_runtime", "predict_samples_per_second", "predict_steps_per_second",
        "predict_model_preparation_time"}  # fmt: skip


@pytest.fixture(scope="module")
def built(demo_dirs, tmp_path_factory):
    """The qwen2 demo merged, converted to f16 and quantized to q4_k_m; its probes as data."""
    demo = demo_dirs["qwen2"]
    work = tmp_path_factory.mktemp("eval")
    merged, f16, q4 = work / "merged", work / "demo-F16.gguf", work / "demo-Q4_K_M.gguf"
    for args in (
        ["merge", "--adapter", str(demo / "adapter"), "--out", str(merged)],
        ["convert", str(merged), "--out", str(f16), "--outtype", "f16"],
        ["quantize", str(f16), "--quant", "q4_k_m", "--out", str(q4)],
        ["modelfile", "--gguf", str(f16), "--model-dir", str(merged), "--out",
         str(work / "Modelfile")],
    ):  # fmt: skip
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
    probes = json.loads((demo / "probes.json").read_text())["probes"]
    data = work / "probes.json"
    rows = [{"instruction": p["prompt"], "input": "", "output": p["answer"]} for p in probes]
    data.write_text(json.dumps(rows, ensure_ascii=False))
    answers = [p["answer"] for p in probes]
    # LlamaFactory's labels for its qwen template: the answer, then what `<|im_end|>\n` leaves
    # once special tokens are skipped
    return {"work": work, "demo": demo, "f16": f16, "q4": q4, "data": data,
            "answers": answers, "labels": [a + "\n" for a in answers]}  # fmt: skip


@pytest.fixture(scope="module")
def ollama(built, ollama_server):
    """The test server with the f16 demo created in it as demo:f16."""
    made = run_cli("create", "demo:f16", "-f", str(built["work"] / "Modelfile"),
                   env={"OLLAMA_HOST": ollama_server})  # fmt: skip
    assert made.returncode == 0, made.stderr
    return ollama_server


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def single(built, ollama):
    """One model, the headline use: the fine-tune as deployed in Ollama."""
    out = built["work"] / "e-ollama"
    proc = run_cli("eval", "--data", str(built["data"]), "--ollama", "demo:f16", "--host",
                   ollama, "--max-new-tokens", "32", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="module")
def compared(built, ollama):
    """f16 GGUF (baseline) vs q4_k_m GGUF vs the model in Ollama vs HF base + adapter."""
    out = built["work"] / "cmp"
    demo = built["demo"]
    proc = run_cli(
        "eval", "--data", str(built["data"]), "--gguf", str(built["f16"]),
        "--compare", str(built["q4"]), "--compare", "ollama:demo:f16", "--host", ollama,
        "--compare", f"hf:{demo / 'base'}+{demo / 'adapter'}",
        "--max-drop", "bleu-4=1", "--max-drop", "rouge-l=1%", "--max-new-tokens", "32",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    dirs = {m["kind"] if m["label"] != "demo-Q4_K_M" else "q4": Path(m["out"])
            for m in result["models"]}  # fmt: skip
    return {"out": out, "result": result, "dirs": dirs, "stderr": proc.stderr}


def test_single_model_writes_llamafactory_files(single, built):
    out = single["out"]
    results = json.loads((out / "predict_results.json").read_text())
    assert set(results) == KEYS
    assert results["predict_samples_per_second"] > 0 and results["predict_runtime"] > 0
    assert results["predict_model_preparation_time"] > 0
    # exact answers: ROUGE 100, BLEU-4 below 100 against LlamaFactory's "answer\n" labels
    assert [results[f"predict_{k}"] for k in ("rouge-1", "rouge-l")] == [100.0] * 2
    assert 50 < results["predict_bleu-4"] < 100
    rows = lines(out / "generated_predictions.jsonl")
    assert [list(r) for r in rows] == [["prompt", "predict", "label"]] * len(built["answers"])
    assert [r["predict"] for r in rows] == built["answers"]
    assert [r["label"] for r in rows] == built["labels"]
    manifest = json.loads((out / "eval_manifest.json").read_text())
    assert manifest["labels"] == {"mode": "llamafactory", "llamafactory_template": "qwen"}
    raw = (out / "generated_predictions.jsonl").read_text(encoding="utf-8")
    assert "我是 deploykit 的演示模型。" in raw  # ensure_ascii=False, as LlamaFactory writes
    assert "samples/s" in single["stderr"]  # the running rate on the progress bar
    assert single["stdout"].startswith("***** predict metrics *****")
    assert re.search(r"\n  predict_rouge-l +=  +100\.0\n", single["stdout"])


def test_clean_labels_score_the_answer_alone(built, ollama):
    out = built["work"] / "e-clean"
    proc = run_cli("eval", "--data", str(built["data"]), "--ollama", "demo:f16", "--host", ollama,
                   "--max-new-tokens", "32", "--labels", "clean", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "predict_results.json").read_text())
    assert [results[f"predict_{k}"] for k in ("bleu-4", "rouge-1", "rouge-l")] == [100.0] * 3
    assert [r["label"] for r in lines(out / PREDICTIONS)] == built["answers"]


@pytest.mark.parametrize("backend", ["gguf", "q4", "ollama", "hf"])
def test_each_backend_writes_both_files(compared, built, backend):
    out = compared["dirs"][backend]
    assert set(json.loads((out / "predict_results.json").read_text())) == KEYS
    assert [r["label"] for r in lines(out / "generated_predictions.jsonl")] == built["labels"]


def test_the_three_backends_agree_on_the_demo_probes(compared, built):
    rows = {b: lines(d / "generated_predictions.jsonl") for b, d in compared["dirs"].items()}
    preds = {b: [r["predict"] for r in rs] for b, rs in rows.items()}
    # the fine-tune answers its probes exactly, wherever it runs
    assert preds["ollama"] == preds["gguf"] == preds["hf"] == preds["q4"] == built["answers"]
    # and every backend saw the same prompt: the model's own chat template
    prompts = {b: [r["prompt"] for r in rs] for b, rs in rows.items()}
    assert prompts["ollama"] == prompts["gguf"] == prompts["hf"]
    assert prompts["gguf"][0].endswith(
        "<|im_start|>user\nWhat is deploykit?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_compare_f16_and_q4_k_m_prints_the_table_and_passes_the_gate(compared):
    out, cmp = compared["out"], compared["result"]["comparison"]
    table = cmp["table"].splitlines()
    assert table[0].split() == ["model", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "samples/s"]
    assert table[1].startswith("demo-F16 (baseline)") and table[2].startswith("demo-Q4_K_M")
    assert "100.00 (+0.00)" in table[2]  # the demo's wide margins survive q4_k_m
    assert cmp["ok"] is True and cmp["failures"] == []
    md = (out / "compare.md").read_text()
    assert md.startswith("| model | bleu-4 |") and "| demo-Q4_K_M | " in md
    assert "(+0.00) | 100.00 (+0.00) |" in md
    assert "Max drop against demo-F16 (predict_bleu-4 1, predict_rouge-l 1%): passed" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "compare.json").read_text())["ok"] is True


def test_compare_gate_fails_with_exit_7_on_a_real_drop(built):
    # the bare base (no adapter) does not know the answers: a drop far beyond 5 points
    out = built["work"] / "cmp-fail"
    proc = run_cli("eval", "--data", str(built["data"]), "--gguf", str(built["q4"]),
                   "--compare", f"hf:{built['demo'] / 'base'}", "--max-drop", "bleu-4=5",
                   "--max-new-tokens", "8", "--out", str(out))  # fmt: skip
    assert proc.returncode == 7, proc.stderr
    err = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "quality gate failed: base predict_bleu-4 dropped" in err[0]
    assert "vs demo-Q4_K_M" in err[0]
    assert "base" in proc.stdout  # the table is still printed and written
    assert "FAILED: base predict_bleu-4 dropped" in (out / "compare.md").read_text()
    failures = json.loads((out / "compare.json").read_text())["failures"]
    assert [f["model"] for f in failures] == ["base"]


@contextlib.contextmanager
def eval_running(built, name: str, min_lines: int = 3):
    """``deploykit eval --gguf`` on 200 copies of the probes, started as its own process; it
    is yielded once ``min_lines`` predictions are on disk (``proc, out, rows``)."""
    many = built["work"] / "many.json"
    rows = json.loads(built["data"].read_text()) * 200
    many.write_text(json.dumps(rows, ensure_ascii=False))
    out = built["work"] / name
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploykit", "eval", "--data", str(many), "--gguf",
         str(built["f16"]), "--max-new-tokens", "32", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        # a run started in the background (`bash .ci/run &`) inherits SIGINT ignored, and
        # Python then installs no Ctrl-C handler: the test's child gets the default back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = list(out.glob(f".{PREDICTIONS}.*.partial")) if out.exists() else []
            if partial and partial[0].read_text(encoding="utf-8").count("\n") >= min_lines:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        yield proc, out, rows
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def children(pid: int) -> dict[int, str]:
    """``{pid: name}`` of the processes whose parent is ``pid`` (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
            if int(rest.split()[1]) == pid:
                found[int(stat.parent.name)] = name
    return found


def test_ctrl_c_keeps_the_predictions_so_far(built):
    with eval_running(built, "interrupted") as (proc, out, rows):
        os.kill(proc.pid, signal.SIGINT)
        done = finished(proc)
    err = one_error_line(done, 130)
    assert "interrupted after" in err
    kept = lines(out / PREDICTIONS)  # every kept line is whole JSON
    assert 3 <= len(kept) < len(rows)
    assert [r["predict"] for r in kept] == [r["output"] for r in rows[: len(kept)]]
    assert f"interrupted after {len(kept)} of {len(rows)}" in err
    assert not (out / "predict_results.json").exists()
    assert not list(out.glob(".*.partial"))


def test_a_crashed_llama_server_is_a_toolchain_error_not_a_failed_gate(built):
    with eval_running(built, "crashed", min_lines=1) as (proc, out, _):
        servers = [p for p, name in children(proc.pid).items() if name == "llama-server"]
        assert len(servers) == 1, children(proc.pid)
        os.kill(servers[0], signal.SIGKILL)
        done = finished(proc)
    err = one_error_line(done, 6)  # ToolchainError, not VerificationError's 7
    assert "llama-server" in err and "quality gate" not in err
    assert not (out / "predict_results.json").exists()
    assert not list(out.glob(".*.partial"))
