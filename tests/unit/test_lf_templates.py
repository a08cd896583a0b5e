"""LlamaFactory 0.9.5's templates as data: the labels its predict builds, written here by hand
from its ``template.py`` (and ``processor/unsupervised.py``), not from deploykit's label code;
which template a model is taken to use; and that every family is mapped or declared unmapped."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from deploykit.core.errors import InputError
from deploykit.data import lf_templates
from deploykit.eval import backends
from deploykit.llamacpp.vendor import vendored_tree_dir
from deploykit.ollama import families

eval_run = importlib.import_module("deploykit.eval.run")  # deploykit.eval.run is also a name

# The predict label is encode_oneturn's response ids (+ eos when efficient_eos), decoded with
# skip_special_tokens, so eos, the model's special tokens and the template's stop words drop
# out. A ReasoningTemplate with enable_thinking true (the default) prepends add_thought() to
# an answer without thought words; false removes the answer's thought (the empty thought goes
# to the prompt). The default thought words are "<think>\n" and "\n</think>\n\n".
EMPTY_THINK = "<think>\n\n</think>\n\n"
#: template -> (label of "42" with enable_thinking true, with enable_thinking false)
LABELS = {
    # "{{content}}<|im_end|>" (the stop word is special)
    "phi4": ("42", "42"),
    # ChatML: "{{content}}<|im_end|>\n"
    "qwen3_5": (EMPTY_THINK + "42\n", "42\n"),
    "qwen3_5_nothink": ("42\n", "42\n"),
    "qwen3_6": (EMPTY_THINK + "42\n", "42\n"),
    "qwen3": (EMPTY_THINK + "42\n", "42\n"),
    "qwen3_nothink": ("42\n", "42\n"),
    "mimo_vl": (EMPTY_THINK + "42\n", "42\n"),
    "mimo": (EMPTY_THINK + "42\n", "42\n"),
    "mimo_v2": ("<think></think>42\n", "42\n"),  # thought_words ("<think>", "</think>")
    "lfm2": ("42\n", "42\n"),
    "qwen": ("42\n", "42\n"),
    "chatml": ("42\n", "42\n"),
    "smollm2": ("42\n", "42\n"),
    "smollm": ("42\n", "42\n"),
    "yi": ("42\n", "42\n"),
    "intern2": ("42\n", "42\n"),
    "falcon_h1": ("42\n", "42\n"),
    "cpm4": ("42\n", "42\n"),
    "ernie": ("42\n\n", "42\n\n"),  # "{{content}}<|im_end|>\n\n"
    "minimax2": (EMPTY_THINK + "42\n", "42\n"),  # "{{content}}[e~[\n", stop word "[e~["
    "minimax1": ("42\n", "42\n"),  # "{{content}}<end_of_sentence>\n"
    "moonlight": ("42", "42"),  # "{{content}}<|im_end|>"
    "kimi_vl": ("◁think▷◁/think▷42", "42"),
    # Llama, Mistral
    "llama4": ("42", "42"),  # "{{content}}<|eot|>"
    "llama3": ("42", "42"),  # "{{content}}<|eot_id|>"
    "llama2": ("42", "42"),  # no format_assistant: ["{{content}}", eos]
    "ministral3": ("42", "42"),
    "mistral_small": ("42", "42"),
    "ministral": ("42", "42"),
    "pixtral": ("42", "42"),
    "mistral": (" 42", " 42"),  # [" {{content}}", eos]
    # DeepSeek, GLM
    "deepseek3": ("42", "42"),
    "deepseekr1": (EMPTY_THINK + "42", "42"),
    "deepseek": ("42", "42"),
    "deepseekcoder": ("\n42\n\n", "\n42\n\n"),  # "\n{{content}}\n<|EOT|>\n"
    # "\n{{content}}" + efficient eos; GLM-4.7's empty thought is "</think>" alone
    "glm4_7": ("</think>\n42", "\n42"),
    "glm4_moe": (EMPTY_THINK + "\n42", "\n42"),
    "glmz1": (EMPTY_THINK + "\n42", "\n42"),
    "glm4": ("\n42", "\n42"),
    # Gemma: "{{content}}<end_of_turn>\n"; Gemma 4's <|channel>/<channel|> are no special tokens
    "gemma4": ("<|channel>thought\n<channel|>42\n", "42\n"),
    "gemma": ("42\n", "42\n"),
    "gemma2": ("42\n", "42\n"),
    "gemma3": ("42\n", "42\n"),
    "gemma3n": ("42\n", "42\n"),
    # gpt-oss: "{{content}}" + efficient eos; the harmony tokens are special, the words stay
    "gpt_oss": ("analysisassistantfinal42", "42"),
    "phi_small": ("42\n", "42\n"),
    "phi4_mini": ("42", "42"),
    "phi": ("42\n", "42\n"),
    "granite4": ("42\n", "42\n"),
    "granite3": ("42\n", "42\n"),
    "granite3_vision": ("42", "42"),
    "cohere": ("42", "42"),
    "hy3": ("<think></think>42", "42"),
    "hunyuan": ("42", "42"),
    "bailing_v2": ("42", "42"),
    "seed_oss": ("<seed:think></seed:think>42", "42"),
    "seed_coder": ("42", "42"),
    "exaone": ("42\n", "42\n"),  # ["{{content}}", eos, "\n"]
    "ernie_nothink": ("42", "42"),
    "olmo": ("42", "42"),
    "zephyr": ("42", "42"),
    "vicuna": ("42", "42"),
    "alpaca": ("42\n\n", "42\n\n"),  # ["{{content}}", eos, "\n\n"]
    "default": ("42\n", "42\n"),  # ["{{content}}", eos, "\n"]
    "empty": ("42", "42"),
}


def test_every_template_has_a_hand_derived_label():
    assert list(lf_templates.templates()) == list(LABELS)  # same names, same (file) order


@pytest.mark.parametrize("name", LABELS)
def test_label_is_llamafactorys(name):
    t = lf_templates.get(name)
    thinking, not_thinking = LABELS[name]
    assert t.label("42") == thinking
    assert t.label("42", enable_thinking=False) == not_thinking


def test_an_answer_with_its_own_thought_keeps_it_unless_thinking_is_off():
    qwen3, gpt = lf_templates.get("qwen3"), lf_templates.get("gpt_oss")
    answer = "<think>\nplan\n</think>\n\n42"
    assert qwen3.label(answer) == answer + "\n"  # no second empty thought
    assert qwen3.label(answer, enable_thinking=False) == "42\n"  # removed, "\n" stripped
    harmony = "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>final"
    harmony += "<|message|>42"
    assert gpt.label(harmony) == "analysisplanassistantfinal42"
    assert gpt.label(harmony, enable_thinking=False) == "42"


# --- which template a model uses --------------------------------------------------------------

#: upstream template (vendor/llama.cpp/models/templates) -> what eval scores it with: the
#: LlamaFactory template, None (its family has none: clean labels), or "error" (not known)
EVAL_CHOICE = {
    "Apertus-8B-Instruct": "error",
    "Apriel-1.6-15b-Thinker-fixed": "error",
    "Bielik-11B-v3.0-Instruct": None,
    "ByteDance-Seed-OSS": "seed_oss",
    "Cohere2MoE": None,
    "CohereForAI-c4ai-command-r-plus-tool_use": "cohere",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": None,
    "GLM-4.6": "glm4_moe",
    "GLM-4.7-Flash": "glm4_7",
    "GigaChat3-10B-A1.8B": None,
    "GigaChat3.1-10B-A1.8B": None,
    "HuggingFaceTB-SmolLM3-3B": "smollm2",
    "Kimi-K2-Instruct": "moonlight",
    "Kimi-K2-Thinking": None,
    "Kimi-K3": None,
    "LFM2-8B-A1B": "lfm2",
    "LFM2.5-8B-A1B": "lfm2",
    "LFM2.5-Instruct": "lfm2",
    "MiMo-VL": "mimo_vl",
    "MiniMax-M1": "minimax1",
    "MiniMax-M2": "minimax2",
    "MiniMax-M3": "minimax2",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral_small",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "qwen",
    "NVIDIA-Nemotron-Nano-v2": "error",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "qwen",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "qwen",
    "Qwen-QwQ-32B": "qwen",
    "Qwen-Qwen2.5-7B-Instruct": "qwen",
    "Qwen-Qwen3-0.6B": "qwen3",
    "Qwen3-Coder": "qwen3_nothink",
    "Qwen3.5-4B": "qwen3_5",
    "Reka-Edge": None,
    "Spark2.5": None,
    "StepFun3.5-Flash": None,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseekr1",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseekr1",
    "deepseek-ai-DeepSeek-V3.1": "deepseek3",
    "deepseek-ai-DeepSeek-V3.2": "deepseek3",
    "deepseek-ai-DeepSeek-V4-Flash-0731": None,
    "deepseek-ai-DeepSeek-V4": None,
    "fireworks-ai-llama-3-firefunction-v2": "llama3",
    "google-gemma-2-2b-it": "gemma",
    "google-gemma-4-31B-it-interleaved": "gemma4",
    "google-gemma-4-31B-it": "gemma4",
    "ibm-granite-granite-3.3-2B-Instruct": "granite3",
    "ibm-granite-granite-4.0": "granite4",
    "ibm-granite-granite-4.1": "granite4",
    "inclusionai-ling-3.0-flash": None,
    "llama-cpp-deepseek-r1": "deepseekr1",
    "llama-cpp-rwkv-world": None,
    "meetkai-functionary-medium-v3.1": "llama3",
    "meetkai-functionary-medium-v3.2": "llama3",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "microsoft-Phi-3.5-mini-instruct": "phi",
    "mistralai-Ministral-3-14B-Reasoning-2512": "ministral3",
    "mistralai-Mistral-Nemo-Instruct-2407": "ministral",
    "moonshotai-Kimi-K2": "moonlight",
    "muse-glimmer": "error",
    "openai-gpt-oss-120b": "gpt_oss",
    "openbmb-MiniCPM5-1B": "qwen",
    "poolside-Laguna-S-2.1": None,
    "poolside-Laguna-XS-2.1": None,
    "poolside-Laguna-XS.2": None,
    "tencent-Hy3": None,
    "unsloth-Apriel-1.5": "phi",
    "unsloth-mistral-Devstral-Small-2507": "mistral_small",
    "upstage-Solar-Open-100B": None,
}

#: upstream template -> the template its markers alone pick (a template that is no family's,
#: e.g. a fine-tune's edited Jinja, is recognised by them)
MARKERS_PICK = {
    "ByteDance-Seed-OSS": "seed_oss",
    "CohereForAI-c4ai-command-r-plus-tool_use": "cohere",
    "GLM-4.6": "glm4_moe",
    "GLM-4.7-Flash": "glm4_7",
    "Kimi-K2-Instruct": "moonlight",
    "LFM2.5-8B-A1B": "lfm2",
    "MiMo-VL": "mimo_vl",
    "MiniMax-M1": "minimax1",
    "MiniMax-M2": "minimax2",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral_small",
    "Qwen-Qwen2.5-7B-Instruct": "qwen",
    "Qwen-Qwen3-0.6B": "qwen3",
    "Qwen3-Coder": "qwen3_nothink",
    "Qwen3.5-4B": "qwen3_5",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseekr1",
    "deepseek-ai-DeepSeek-V3.1": "deepseek3",
    "deepseek-ai-DeepSeek-V3.2": "deepseek3",
    "google-gemma-2-2b-it": "gemma",
    "google-gemma-4-31B-it": "gemma4",
    "ibm-granite-granite-3.3-2B-Instruct": "granite3",
    "ibm-granite-granite-4.0": "granite4",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "microsoft-Phi-3.5-mini-instruct": "phi",
    "mistralai-Ministral-3-14B-Reasoning-2512": "ministral3",
    "mistralai-Mistral-Nemo-Instruct-2407": "ministral",
    "openai-gpt-oss-120b": "gpt_oss",
}


def _upstream(name: str) -> str:
    folder = vendored_tree_dir() / "models" / "templates"
    if not folder.is_dir():
        pytest.skip("the vendored llama.cpp tree is not extracted (make vendor)")
    return (folder / f"{name}.jinja").read_text(encoding="utf-8")


def _choice(chat_template: str) -> str | None:
    spec = backends.ModelSpec("ollama", "m")
    try:
        found = eval_run.label_template(spec, chat_template, "llamafactory", None)
    except InputError:
        return "error"
    return found.name if found else None


def test_the_table_covers_every_upstream_template():
    folder = vendored_tree_dir() / "models" / "templates"
    if not folder.is_dir():
        pytest.skip("the vendored llama.cpp tree is not extracted (make vendor)")
    assert sorted(p.stem for p in folder.glob("*.jinja")) == sorted(EVAL_CHOICE)


@pytest.mark.parametrize("name", EVAL_CHOICE)
def test_eval_scores_each_upstream_template_with_its_llamafactory_template(name):
    assert _choice(_upstream(name)) == EVAL_CHOICE[name]


@pytest.mark.parametrize("name", MARKERS_PICK)
def test_markers_pick_the_template(name):
    found = lf_templates.detect(_upstream(name))
    assert found is not None and found.name == MARKERS_PICK[name]


def test_an_ollama_models_template_is_scored_as_its_familys_jinja():
    for fam in families.shipped().values():
        if fam.template is None:
            continue
        jinja = Path(fam.reference_paths()[0]).read_text(encoding="utf-8")
        assert _choice(fam.template) == _choice(jinja), fam.name


def test_every_family_is_mapped_or_declared_unmapped():
    known = set(families.shipped())
    mapped = {f for t in lf_templates.templates().values() for f in t.families}
    unmapped = set(lf_templates.no_template())
    assert mapped | unmapped == known  # a new family has to say which
    assert not mapped & unmapped


def test_an_unmapped_family_is_scored_against_clean_labels_and_says_so(capsys):
    spec = backends.ModelSpec("ollama", "m")
    jinja = _upstream("llama-cpp-rwkv-world")
    assert eval_run.label_template(spec, jinja, "llamafactory", None) is None
    err = capsys.readouterr().err
    assert "LlamaFactory 0.9.5 has no template for the rwkv-world family" in err
    assert "labels are clean" in err
    # a named template still wins
    assert eval_run.label_template(spec, jinja, "llamafactory", "qwen").name == "qwen"


# --- the data is validated --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,message",
    [
        ('[templates.x]\nassistant = "{{content}}"\ncolour = 1\n', "colour"),
        ('[templates.x]\nassistant = "{{content}}"\nthought_words = ["<a>", "</a>"]\n',
         "thought_words and empty_thought go with reasoning"),
        ('[templates.x]\nassistant = "{{content}}"\nreasoning = true\nthought_words = ["<a>"]\n',
         "thought_words"),
        ('[templates.x]\nassistant = "{{content}}"\nmarkers = [""]\n', "empty string"),
        ('[templates.x]\nassistant = "answer"\n', "exactly once"),
        ('[templates.x]\nassistant = "{{content}}"\n[no_template]\nqwen3 = ""\n', "reason"),
        ('[templates.x]\nassistant = "{{content}}"\nfamilies = ["qwen3"]\n[no_template]\n'
         'qwen3 = "why"\n', "mapped and in [no_template]"),
        ('[templates.x]\nassistant = "{{content}}"\n[extra]\n', "extra"),
    ],
)  # fmt: skip
def test_a_bad_data_file_is_refused(tmp_path, body, message):
    path = tmp_path / "t.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(message)):
        lf_templates.templates(path)
