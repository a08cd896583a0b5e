"""Rebuild real Hugging Face tokenizers from llama.cpp's ``models/ggml-vocab-*.gguf``.

The vocab files carry the exact tokens and merges of Qwen2 and Llama 3; the pre-tokenizer
regexes are the ones llama.cpp itself uses for ``qwen2`` and ``llama-bpe``. The result is
checked against the vendored ``.inp/.out`` test vectors (``llamacpp.vocab.read_vectors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from deploykit.core.fsutil import atomic_dir, sha256_file
from deploykit.core.paths import cache_dir

NORMAL, CONTROL = 1, 3  # gguf token types

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """How one tokenizer family is rebuilt: which vocab file, which regex, which config."""

    name: str  # the llama.cpp pre-tokenizer name, also the vocab file's stem
    regex: str
    ignore_merges: bool
    nfc: bool
    trim_offsets: bool
    bos: str | None
    eos: str
    pad: str | None
    tokenizer_class: str
    template: str  # file in models/templates/


SPECS = {
    "qwen2": TokenizerSpec(
        name="qwen2",
        regex=QWEN2_REGEX,
        ignore_merges=False,
        nfc=True,
        trim_offsets=False,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        tokenizer_class="Qwen2Tokenizer",
        template="Qwen-Qwen2.5-7B-Instruct.jinja",
    ),
    "llama-bpe": TokenizerSpec(
        name="llama-bpe",
        regex=LLAMA3_REGEX,
        ignore_merges=True,  # llama.cpp sets ignore_merges for llama-bpe
        nfc=False,
        trim_offsets=True,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        tokenizer_class="PreTrainedTokenizerFast",
        template="meta-llama-Llama-3.1-8B-Instruct.jinja",
    ),
}


def _strings(reader: GGUFReader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _ints(reader: GGUFReader, key: str) -> list[int]:
    field = reader.fields[key]
    return [int(field.parts[i][0]) for i in field.data]


def build_tokenizer(spec: TokenizerSpec, vocab_gguf: Path) -> tuple[Tokenizer, list[str]]:
    """The ``tokenizers`` object for ``spec`` and the list of its special tokens."""
    reader = GGUFReader(vocab_gguf)
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    types = _ints(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    normal = [t for t, ty in zip(tokens, types, strict=True) if ty == NORMAL]
    if tokens[: len(normal)] != normal:
        raise ValueError(f"{vocab_gguf}: normal tokens are not a dense prefix")
    control = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == CONTROL]

    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(normal)},
            merges=merges,
            byte_fallback=False,
            ignore_merges=spec.ignore_merges,
        )
    )
    if spec.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(spec.regex), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, trim_offsets=spec.trim_offsets, use_regex=False),
        ]
    )
    byte_level = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in control])
    for i, t in control:
        if tok.token_to_id(t) != i:
            raise ValueError(f"{vocab_gguf}: special token {t!r} landed on {tok.token_to_id(t)}")
    if spec.bos:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{spec.bos} $A",
                    pair=f"{spec.bos} $A {spec.bos}:1 $B:1",
                    special_tokens=[(spec.bos, bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = byte_level
    return tok, [t for _, t in control]


def tokenizer_config(spec: TokenizerSpec, tok: Tokenizer, specials: list[str], chat_template: str):
    """A ``tokenizer_config.json`` like the upstream model's, chat template included."""
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in specials
    }
    cfg = {
        "add_bos_token": spec.bos is not None,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": spec.bos,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": spec.eos,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": spec.pad,
        "split_special_tokens": False,
        "tokenizer_class": spec.tokenizer_class,
        "unk_token": None,
    }
    if spec.name == "qwen2":
        cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    return cfg


def tokenizer_dir(spec_name: str, llama_cpp: Path) -> Path:
    """A cached directory with ``tokenizer.json`` + ``tokenizer_config.json`` (built once)."""
    spec = SPECS[spec_name]
    models_dir = llama_cpp / "models"
    vocab = models_dir / f"ggml-vocab-{spec.name}.gguf"
    template = models_dir / "templates" / spec.template
    digest = f"{sha256_file(vocab)[:12]}-{sha256_file(template)[:8]}"
    key = f"{spec.name}-{digest}-{tokenizers.__version__}"
    final = cache_dir() / "tokenizers" / key
    if (final / "tokenizer_config.json").is_file():
        return final
    tok, specials = build_tokenizer(spec, vocab)
    cfg = tokenizer_config(spec, tok, specials, template.read_text(encoding="utf-8"))
    with atomic_dir(final, replace=True) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return final
