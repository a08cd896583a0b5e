"""``deploykit eval`` reproduces LlamaFactory's predict numbers on both demo fine-tunes (Qwen2
and Llama 3 templates): the scores are recomputed here, independently of deploykit's metric
and label code, with jieba, nltk and rouge-chinese as LlamaFactory's ``ComputeSimilarity``
computes them, against labels derived by hand from LlamaFactory's templates."""

from __future__ import annotations

import json

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from tests.support.cli import run_cli

# LlamaFactory 0.9.5: qwen's assistant slot is "{{content}}<|im_end|>\n", llama3's is
# "{{content}}<|eot_id|>"; the label is decoded with special tokens skipped.
SUFFIX = {"qwen2": "\n", "llama": ""}


def llamafactory_scores(preds: list[str], labels: list[str]) -> dict[str, float]:
    """ComputeSimilarity: per sample ROUGE F over jieba words and BLEU-4 over characters
    (method3), x100 rounded to 4 places, then the numpy mean."""
    rows = []
    for pred, label in zip(preds, labels, strict=True):
        hyp, ref = list(jieba.cut(pred)), list(jieba.cut(label))
        if not " ".join(hyp).split() or not " ".join(ref).split():
            scores = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            scores = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
        row = {k: round(v["f"] * 100, 4) for k, v in scores.items()}
        bleu = sentence_bleu(
            [list(label)], list(pred), smoothing_function=SmoothingFunction().method3
        )
        row["bleu-4"] = round(bleu * 100, 4)
        rows.append(row)
    return {f"predict_{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def evaluated(request, demo_dirs, tmp_path_factory):
    arch = request.param
    demo = demo_dirs[arch]
    work = tmp_path_factory.mktemp(f"lf-eval-{arch}")
    probes = json.loads((demo / "probes.json").read_text())["probes"]
    data = work / "probes.json"
    rows = [{"instruction": p["prompt"], "input": "", "output": p["answer"]} for p in probes]
    data.write_text(json.dumps(rows, ensure_ascii=False))
    out = work / "out"
    proc = run_cli("eval", "--data", str(data), "--hf", str(demo / "base"), "--adapter",
                   str(demo / "adapter"), "--max-new-tokens", "32", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    preds = [json.loads(x) for x in (out / "generated_predictions.jsonl").read_text().splitlines()]
    return {"arch": arch, "out": out, "rows": preds, "probes": probes, "data": data,
            "demo": demo, "work": work}  # fmt: skip


def test_predict_metrics_are_llamafactorys(evaluated):
    suffix = SUFFIX[evaluated["arch"]]
    labels = [p["answer"] + suffix for p in evaluated["probes"]]
    preds = [r["predict"] for r in evaluated["rows"]]
    assert preds == [p["answer"] for p in evaluated["probes"]]  # the fine-tune is exact
    assert [r["label"] for r in evaluated["rows"]] == labels  # as LlamaFactory writes them
    results = json.loads((evaluated["out"] / "predict_results.json").read_text())
    expected = llamafactory_scores(preds, labels)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-9), key
    # the Qwen label's newline costs BLEU-4 even on exact answers; Llama 3's label is clean
    assert (results["predict_bleu-4"] < 100) == (suffix != "")
    assert results["predict_model_preparation_time"] > 0


def test_dtype_runs_the_hf_model_in_bfloat16(evaluated):
    demo, out = evaluated["demo"], evaluated["work"] / "bf16"
    proc = run_cli("eval", "--data", str(evaluated["data"]), "--hf", str(demo / "base"),
                   "--adapter", str(demo / "adapter"), "--dtype", "bfloat16",
                   "--max-new-tokens", "32", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "eval_manifest.json").read_text())
    assert manifest["generation"]["dtype"] == "bfloat16"
    default = json.loads((evaluated["out"] / "eval_manifest.json").read_text())
    assert default["generation"]["dtype"] == "float32"
