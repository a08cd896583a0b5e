"""The rebuilt tokenizers reproduce llama.cpp's own test vectors exactly."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from deploykit.demo.tokenizer import SPECS, tokenizer_dir
from deploykit.llamacpp.vocab import read_vectors


@pytest.fixture(scope="module", params=sorted(SPECS))
def rebuilt(request, tree):
    name = request.param
    vocab = SPECS[name].vocab or name
    vectors = read_vectors(tree.path / "models" / f"ggml-vocab-{vocab}.gguf")
    return name, tokenizer_dir(name, tree.path), vectors


def test_vectors_are_the_standard_46(rebuilt):
    name, _, vectors = rebuilt
    assert len(vectors) == {"qwen35": 50}.get(name, 46)  # Qwen3.5's adds combining marks
    assert vectors[2] == ("", [])  # the empty string is a test too


def test_tokenizers_library_matches_all_vectors(rebuilt):
    name, directory, vectors = rebuilt
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    wrong = [(s, ids) for s, ids in vectors if tok.encode(s, add_special_tokens=False).ids != ids]
    assert wrong == [], f"{name}: {len(wrong)}/{len(vectors)} vectors differ, first: {wrong[:1]}"


def test_autotokenizer_matches_all_vectors(rebuilt):
    name, directory, vectors = rebuilt
    tok = AutoTokenizer.from_pretrained(directory)
    wrong = [(s, ids) for s, ids in vectors if tok.encode(s, add_special_tokens=False) != ids]
    assert wrong == [], f"{name}: {len(wrong)}/{len(vectors)} vectors differ, first: {wrong[:1]}"


def test_special_tokens_keep_their_ids(tree):
    qwen = AutoTokenizer.from_pretrained(tokenizer_dir("qwen2", tree.path))
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert qwen.eos_token == "<|im_end|>"
    llama = AutoTokenizer.from_pretrained(tokenizer_dir("llama-bpe", tree.path))
    assert llama.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"]) == [128000, 128009]
    assert llama.encode("hi")[0] == 128000  # Llama 3 adds BOS
    qwen35 = AutoTokenizer.from_pretrained(tokenizer_dir("qwen35", tree.path))
    assert qwen35.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
    assert qwen35.eos_token == "<|im_end|>" and qwen35.bos_token is None
    gemma = AutoTokenizer.from_pretrained(tokenizer_dir("gemma4", tree.path))
    assert gemma.convert_tokens_to_ids(["<bos>", "<eos>", "<|turn>", "<turn|>"]) == [2, 1, 105, 106]
    assert gemma.encode("hi")[0] == 2  # Gemma adds BOS
    assert gemma.decode(gemma.encode("a\tb  é <|turn>", add_special_tokens=False)) == (
        "a\tb  é <|turn>"
    )


def test_chat_templates_are_the_upstream_ones(tree):
    for name, spec in SPECS.items():
        tok = AutoTokenizer.from_pretrained(tokenizer_dir(name, tree.path))
        upstream = (tree.path / "models" / "templates" / spec.template).read_text()
        assert tok.chat_template == upstream


def test_qwen_template_injects_its_default_system_prompt(tree):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir("qwen2", tree.path))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
