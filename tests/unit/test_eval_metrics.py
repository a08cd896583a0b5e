"""LlamaFactory's predict metrics with expectations worked out by hand, the eval data split,
the --max-drop gate and the comparison table, without any model."""

from __future__ import annotations

import json
import math

import pytest

from deploykit.core.errors import InputError, UsageError
from deploykit.eval import backends, compare, metrics
from deploykit.eval import samples as eval_data
from tests.support.cli import invoke, one_error_line

# How the scores are defined (LlamaFactory's ComputeSimilarity):
# - ROUGE: the texts are cut into words by jieba and rouge-chinese compares them. ROUGE-N
#   counts *distinct* n-grams: r = |hyp ∩ ref| / |ref|, p = |hyp ∩ ref| / |hyp|;
#   ROUGE-L uses the longest common subsequence over all words: r = LCS / len(ref),
#   p = LCS / len(hyp). F = 2pr / (p + r + 1e-8), x100, rounded to 4 places.
# - BLEU-4: over characters, clipped n-gram precisions p1..p4 with equal weights, brevity
#   penalty BP = exp(1 - r/c) when c < r; smoothing method3 replaces the k-th zero
#   precision 0/d by 1 / (2^k * d). A prediction with no matching character scores 0.


def approx(x: float) -> float:
    return pytest.approx(x, abs=1e-4)


def test_identical_english_scores_100():
    # "deploykit ships models": 3 words, every n-gram of the label is in the prediction
    s = metrics.similarity("deploykit ships models", "deploykit ships models")
    assert s == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}


def test_identical_chinese_scores_100():
    s = metrics.similarity("我是演示模型", "我是演示模型")
    assert s == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}


def test_identical_one_word_has_no_bigrams_and_a_smoothed_4gram():
    # "abc" is one word: no bigrams on either side, so ROUGE-2 is 0 even though the texts
    # are identical (a LlamaFactory quirk kept on purpose).
    # BLEU over 3 characters: p1 = 3/3, p2 = 2/2, p3 = 1/1, p4 = 0/1 (no 4-gram; the
    # denominator is at least 1) -> method3: 1/(2*1) = 1/2. BP = 1.
    # BLEU = (1 * 1 * 1 * 1/2) ** (1/4) = 0.840896... -> 84.0896
    s = metrics.similarity("abc", "abc")
    assert s["rouge-1"] == 100.0 and s["rouge-l"] == 100.0 and s["rouge-2"] == 0.0
    assert s["bleu-4"] == approx(100 * 0.5**0.25) == approx(84.0896)


@pytest.mark.parametrize("pred,label", [("abc", "xyz"), ("你好", "再见")])
def test_disjoint_strings_score_0(pred, label):
    # no word and no character in common: every precision is 0 -> everything 0
    assert metrics.similarity(pred, label) == {
        "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}  # fmt: skip


@pytest.mark.parametrize("pred,label", [("", "hello"), ("hello", ""), ("", "")])
def test_empty_prediction_or_label_scores_0(pred, label):
    assert metrics.similarity(pred, label) == {
        "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}  # fmt: skip


def test_partial_overlap_english():
    # pred "the cat sat", label "the cat sat on the mat"
    # words: hyp [the, cat, sat]; ref [the, cat, sat, on, the, mat]
    # ROUGE-1: distinct ref unigrams {the, cat, sat, on, mat} = 5, hyp 3, overlap 3
    #   p = 3/3, r = 3/5 -> F = 2*0.6/1.6 = 0.75 -> 75.0
    # ROUGE-2: ref bigrams {the cat, cat sat, sat on, on the, the mat} = 5,
    #   hyp {the cat, cat sat} = 2, overlap 2: p = 1, r = 2/5 -> F = 0.8/1.4 -> 57.1429
    # ROUGE-L: LCS = 3 (the cat sat); r = 3/6, p = 3/3 -> F = 1/1.5 -> 66.6667
    # BLEU: the 11 characters are a prefix of the 22-character label, so every clipped
    #   n-gram of the prediction matches: p1..p4 = 1; BP = exp(1 - 22/11) = e^-1
    #   -> 36.7879
    s = metrics.similarity("the cat sat", "the cat sat on the mat")
    assert s["rouge-1"] == approx(75.0)
    assert s["rouge-2"] == approx(100 * 0.8 / 1.4)
    assert s["rouge-l"] == approx(100 * 1 / 1.5)
    assert s["bleu-4"] == approx(100 * math.exp(-1))


def test_partial_overlap_chinese():
    # pred "我爱北京", label "我爱北京天安门"; jieba: [我, 爱, 北京] and [我, 爱, 北京, 天安门]
    # ROUGE-1: overlap 3, p = 3/3, r = 3/4 -> F = 1.5/1.75 -> 85.7143
    # ROUGE-2: hyp {我爱, 爱北京}, ref {我爱, 爱北京, 北京天安门}: p = 1, r = 2/3 -> F = 0.8 -> 80.0
    # ROUGE-L: LCS 3, r = 3/4, p = 1 -> 85.7143
    # BLEU: 4 characters, a prefix of the 7-character label: p1..p4 = 1 (the one 4-gram
    #   我爱北京 matches); BP = exp(1 - 7/4) = exp(-0.75) -> 47.2367
    s = metrics.similarity("我爱北京", "我爱北京天安门")
    assert s["rouge-1"] == approx(100 * 1.5 / 1.75)
    assert s["rouge-2"] == approx(80.0)
    assert s["rouge-l"] == approx(100 * 1.5 / 1.75)
    assert s["bleu-4"] == approx(100 * math.exp(-0.75))


def test_partial_overlap_with_smoothing():
    # pred "abcd", label "abxd" (one word each, different -> ROUGE 0)
    # characters: unigrams a b c d vs a b x d -> 3 of 4 match: p1 = 3/4
    # bigrams ab bc cd vs ab bx xd -> ab only: p2 = 1/3
    # trigrams abc bcd vs abx bxd -> none: 0/2 -> first zero: 1/(2^1 * 2) = 1/4
    # 4-grams abcd vs abxd -> none: 0/1 -> second zero: 1/(2^2 * 1) = 1/4
    # BP = 1 (same length). BLEU = (3/4 * 1/3 * 1/4 * 1/4) ** (1/4) = (1/64) ** (1/4)
    #   = 0.353553... -> 35.3553
    s = metrics.similarity("abcd", "abxd")
    assert s["rouge-1"] == s["rouge-2"] == s["rouge-l"] == 0.0
    assert s["bleu-4"] == approx(100 * (1 / 64) ** 0.25)


def test_predict_results_are_means_and_speed_metrics():
    # two samples: identical (all 100) and disjoint (all 0) -> every mean is 50
    scores = [metrics.similarity("same text", "same text"), metrics.similarity("abc", "xyz")]
    r = metrics.predict_results(scores, runtime=4.0, preparation=1.234567)
    assert r == {
        "predict_bleu-4": 50.0, "predict_rouge-1": 50.0, "predict_rouge-2": 50.0,
        "predict_rouge-l": 50.0, "predict_runtime": 4.0, "predict_samples_per_second": 0.5,
        "predict_steps_per_second": 0.5, "predict_model_preparation_time": 1.2346,
    }  # fmt: skip


# LlamaFactory's labels: the assistant slot of its template, decoded with special tokens
# skipped. Qwen's slot is `{{content}}<|im_end|>\n` -> "answer\n"; Llama 3's is
# `{{content}}<|eot_id|>` -> "answer".
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>"
    "\n\n{{ m.content }}<|eot_id|>{% endfor %}"
)
OLLAMA_QWEN = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"


@pytest.mark.parametrize(
    "chat_template,name,label",
    [(QWEN_TEMPLATE, "qwen", "42\n"), (OLLAMA_QWEN, "qwen", "42\n"),
     (LLAMA3_TEMPLATE, "llama3", "42"), ("<start_of_turn>x<end_of_turn>", "gemma", "42\n")],
)  # fmt: skip
def test_llamafactory_label_from_the_models_template(chat_template, name, label):
    from deploykit.data import lf_templates

    found = lf_templates.detect(chat_template)
    assert found is not None and found.name == name
    assert found.label("42") == label


def test_the_llamafactory_label_lowers_bleu_of_an_exact_answer():
    # "abcd" against "abcd\n": 4 of 5 reference characters, all 4 predicted ones match,
    # every precision is 1 up to p4 = 1/1, BP = exp(1 - 5/4) -> 77.8801; ROUGE is unchanged
    # (jieba's "\n" word is whitespace that rouge-chinese drops)
    s = metrics.similarity("abcd", "abcd\n")
    assert s["bleu-4"] == approx(100 * math.exp(-0.25))
    assert s["rouge-1"] == s["rouge-l"] == 100.0


def test_template_names_and_families_are_real():
    from deploykit.data import lf_templates
    from deploykit.ollama import families

    known = families.shipped()
    for t in lf_templates.templates().values():
        assert set(t.families) <= set(known), t.name
    with pytest.raises(InputError, match="unknown LlamaFactory template 'nope'"):
        lf_templates.get("nope")


def test_an_unrecognised_template_is_refused_unless_named(tmp_path):
    from deploykit.eval import run

    spec = backends.ModelSpec("ollama", "m")
    with pytest.raises(InputError, match="cannot tell which LlamaFactory template m uses"):
        run.label_template(spec, "{{ .Prompt }}", "llamafactory", None)
    assert run.label_template(spec, "{{ .Prompt }}", "llamafactory", "llama3").name == "llama3"
    assert run.label_template(spec, "{{ .Prompt }}", "clean", None) is None


def test_metric_names():
    assert metrics.key("BLEU-4") == metrics.key("predict_bleu-4") == "predict_bleu-4"
    with pytest.raises(ValueError):
        metrics.key("bleu")


# --- data --------------------------------------------------------------------------------


def test_prompt_is_every_turn_before_the_last_answer(tmp_path):
    alpaca = {"instruction": "Add", "input": "2 3", "output": "5", "system": "Be exact.",
              "history": [["Hi", "Hello!"]]}  # fmt: skip
    sharegpt = {"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Goodbye."},
    ]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps([alpaca]))
    (tmp_path / "s.jsonl").write_text(json.dumps(sharegpt) + "\n")
    (a, s), files = eval_data.load([tmp_path / "a.json", tmp_path / "s.jsonl"])
    assert files == [tmp_path / "a.json", tmp_path / "s.jsonl"]
    assert a.label == "5" and [m["role"] for m in a.messages] == [
        "system", "user", "assistant", "user"]  # fmt: skip
    assert a.messages[-1]["content"] == "Add\n2 3"
    assert s.label == "Goodbye." and [m["content"] for m in s.messages] == ["Hi", "Hello!", "Bye"]


def test_dataset_info_and_max_samples(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "d.json"}}))
    got, files = eval_data.load([], "mine", tmp_path, max_samples=2)
    assert files == [tmp_path / "d.json"]
    assert [x.label for x in got] == ["a0", "a1"]


def test_a_record_without_an_answer_is_named(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    bad = {"conversations": [{"from": "gpt", "value": "I speak first"}]}
    (tmp_path / "d.json").write_text(json.dumps([rec, bad]))
    with pytest.raises(InputError, match=r"d.json: record 1: has no user turn"):
        eval_data.load([tmp_path / "d.json"])


# --- gate and table ----------------------------------------------------------------------


def run(label: str, bleu: float, rouge_l: float, sps: float = 2.0) -> dict:
    m = {"predict_bleu-4": bleu, "predict_rouge-1": 90.0, "predict_rouge-2": 80.0,
         "predict_rouge-l": rouge_l, "predict_samples_per_second": sps}  # fmt: skip
    return {"label": label, "metrics": m}


def test_max_drop_points_and_percent():
    assert compare.parse_max_drop("bleu-4=2") == compare.MaxDrop("predict_bleu-4", 2.0)
    assert compare.parse_max_drop("rouge-l=5%").relative
    for bad in ("bleu-4", "bleu=2", "bleu-4=x", "bleu-4=-1", "runtime=1"):
        with pytest.raises(UsageError):
            compare.parse_max_drop(bad)
    runs = [run("f16", 80.0, 70.0), run("q8_0", 79.0, 69.0), run("q2_k", 77.5, 66.0)]
    gates = [compare.parse_max_drop("bleu-4=2"), compare.parse_max_drop("rouge-l=5%")]
    cmp = compare.compare(runs, gates)
    # q8_0: bleu drop 1 <= 2, rouge-l drop 1 <= 5% of 70 = 3.5 -> passes
    # q2_k: bleu drop 2.5 > 2; rouge-l drop 4 > 3.5 -> both fail
    assert not cmp["ok"]
    assert [(f["model"], f["metric"], f["drop"], f["max_drop"]) for f in cmp["failures"]] == [
        ("q2_k", "predict_bleu-4", 2.5, 2.0), ("q2_k", "predict_rouge-l", 4.0, 3.5)]  # fmt: skip
    assert compare.compare(runs[:2], gates)["ok"]
    # improvements are never drops
    assert compare.compare([runs[2], runs[0]], gates)["ok"]


def test_tables_show_deltas_against_the_first():
    cmp = compare.compare([run("f16", 80.0, 70.0), run("q4_k_m", 78.5, 71.25, 3.0)], [])
    md = compare.table_markdown(cmp).splitlines()
    assert md[0] == "| model | bleu-4 | rouge-1 | rouge-2 | rouge-l | samples/s |"
    assert md[2] == "| f16 (baseline) | 80.00 | 90.00 | 80.00 | 70.00 | 2.00 |"
    assert md[3] == (
        "| q4_k_m | 78.50 (-1.50) | 90.00 (+0.00) | 80.00 (+0.00) | 71.25 (+1.25) | 3.00 (+1.00) |"
    )
    text = compare.table_text(cmp).splitlines()
    assert text[0].split() == ["model", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "samples/s"]
    assert "78.50 (-1.50)" in text[2]


def test_compare_specs(tmp_path):
    gguf = tmp_path / "m-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert backends.parse_spec(str(gguf)) == backends.ModelSpec("gguf", str(gguf))
    assert backends.parse_spec(str(gguf)).label == "m-Q4_K_M"
    assert backends.parse_spec("demo:q4", "http://h:1").kind == "ollama"
    assert backends.parse_spec("ollama:demo:q4").ref == "demo:q4"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "lora").mkdir()
    spec = backends.parse_spec(f"hf:{tmp_path / 'base'}+{tmp_path / 'lora'}")
    assert (spec.kind, spec.adapter, spec.label) == ("hf", str(tmp_path / "lora"), "base+lora")
    (tmp_path / "lora" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "base")})
    )
    spec = backends.parse_spec(str(tmp_path / "lora"))  # an adapter brings its base
    assert (spec.ref, spec.adapter) == (str(tmp_path / "base"), str(tmp_path / "lora"))
    with pytest.raises(InputError):
        backends.parse_spec("gguf:/nonexistent.gguf")
    with pytest.raises(InputError, match="is not a GGUF file"):
        backends.parse_spec(f"gguf:{tmp_path / 'lora' / 'adapter_config.json'}")
    with pytest.raises(InputError, match="no config.json"):
        backends.parse_spec(f"hf:{tmp_path}")


# --- bad data through the command: one error line naming the record -----------------------


@pytest.mark.parametrize(
    "content,code,message",
    [
        ('[{"instruction": "Hi", "output": "Yo"}, {"instruction": "Hi"}]', 3,
         "d.json: record 1: output must be a string, got missing"),
        ("", 3, "d.json has no records"),
        ('[{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]}]',
         3, "d.json: record 0: conversations[1]: unknown from 'bot'"),
        ('[{"question": "Hi"}]', 3, "d.json: record 0: cannot tell its format"),
    ],
)  # fmt: skip
def test_bad_data_is_one_error_line_naming_the_record(tmp_path, content, code, message):
    (tmp_path / "d.json").write_text(content)
    proc = invoke("eval", "--data", str(tmp_path / "d.json"), "--ollama", "demo")
    assert message in one_error_line(proc, code)


def test_wrong_format_names_are_one_error_line(tmp_path):
    (tmp_path / "d.json").write_text('[{"instruction": "Hi", "output": "Yo"}]')
    proc = invoke("eval", "--data", str(tmp_path / "d.json"), "--ollama", "demo",
                  "--formatting", "alpacca")  # fmt: skip
    assert "'alpacca' is not one of" in one_error_line(proc, 2)
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"mine": {"file_name": "d.json", "formatting": "sharegtp"}})
    )
    proc = invoke("eval", "--dataset", "mine", "--dataset-dir", str(tmp_path), "--ollama",
                  "demo")  # fmt: skip
    assert "unknown formatting 'sharegtp'" in one_error_line(proc, 3)


def test_usage_errors(tmp_path):
    (tmp_path / "d.json").write_text('[{"instruction": "Hi", "output": "Yo"}]')
    data = ["--data", str(tmp_path / "d.json")]
    for args, what in [
        (["--ollama", "a", "--gguf", "b.gguf"], "exactly one of"),
        (["--ollama", "a", "--adapter", str(tmp_path)], "--adapter goes with --hf"),
        (["--ollama", "a", "--max-drop", "bleu-4=1"], "--max-drop needs models to compare"),
        (["--ollama", "a", "--compare", "b", "--max-drop", "bleu=1"], "bad --max-drop"),
    ]:
        proc = invoke("eval", *data, *args)
        assert what in one_error_line(proc, 2), args
