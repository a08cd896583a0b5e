"""Rebuild real Hugging Face tokenizers from llama.cpp's ``models/ggml-vocab-*.gguf``.

The vocab files carry the exact tokens and merges of Qwen2, Llama 3, Qwen3.5 and Gemma 4; the
pre-tokenizer regexes are the ones llama.cpp itself uses for ``qwen2``, ``llama-bpe`` and
``qwen35`` (Gemma 4 is a SentencePiece-style BPE: spaces become ``▁``, byte fallback). The
result is checked against the vendored ``.inp/.out`` test vectors
(``llamacpp.vocab.read_vectors``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import tokenizers
from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from deploykit.core.fsutil import atomic_dir, sha256_file
from deploykit.core.paths import cache_dir

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # gguf token types

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen3.5's: letters keep their combining marks (``\p{M}``).
QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
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
    vocab: str = ""  # the vocab file's stem when it is not ``name``
    metaspace: bool = False  # SentencePiece-style BPE (Gemma): ``▁`` for spaces, byte fallback
    extra_config: tuple[tuple[str, object], ...] = ()  # more tokenizer_config.json keys


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
    "qwen35": TokenizerSpec(
        name="qwen35",
        regex=QWEN35_REGEX,
        ignore_merges=False,
        nfc=False,  # no normalizer: llama.cpp's test vectors keep decomposed accents apart
        trim_offsets=False,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        # what transformers loads Qwen3.5 checkpoints with: tokenizer.json as is (its
        # Qwen3_5Tokenizer class would add an NFC normalizer llama.cpp does not have)
        tokenizer_class="TokenizersBackend",
        template="Qwen3.5-4B.jinja",
    ),
    "gemma4": TokenizerSpec(
        name="gemma4",
        vocab="gemma-4",
        regex="",
        ignore_merges=False,
        nfc=False,
        trim_offsets=False,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        tokenizer_class="GemmaTokenizer",
        template="google-gemma-4-31B-it.jinja",
        metaspace=True,
        extra_config=(("unk_token", "<unk>"), ("mask_token", "<mask>"), ("padding_side", "left")),
    ),
}


def _strings(reader: GGUFReader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _ints(reader: GGUFReader, key: str) -> list[int]:
    field = reader.fields[key]
    return [int(field.parts[i][0]) for i in field.data]


def _byte_level(spec: TokenizerSpec, tokens, types, merges) -> tuple[Tokenizer, list]:
    """GPT-2 style byte-level BPE: the normal tokens are a dense prefix, then the specials."""
    normal = [t for t, ty in zip(tokens, types, strict=True) if ty == NORMAL]
    if tokens[: len(normal)] != normal:
        raise ValueError("normal tokens are not a dense prefix")
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
    tok.decoder = decoders.ByteLevel()
    specials = [
        (i, t) for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == CONTROL
    ]
    return tok, specials


def _metaspace(tokens, types, merges) -> tuple[Tokenizer, list]:
    """SentencePiece-style BPE (Gemma 4): every token in the vocabulary, spaces as ``▁``,
    unknown bytes as ``<0xXX>``; control and user-defined tokens are the specials."""
    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            byte_fallback=True,
            fuse_unk=True,
            unk_token="<unk>",
        )
    )
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = [
        (i, t)
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
        if ty in (CONTROL, USER_DEFINED)
    ]
    return tok, specials


def build_tokenizer(spec: TokenizerSpec, vocab_gguf: Path) -> tuple[Tokenizer, list[str]]:
    """The ``tokenizers`` object for ``spec`` and the list of its special tokens."""
    reader = GGUFReader(vocab_gguf)
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    types = _ints(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    try:
        if spec.metaspace:
            tok, control = _metaspace(tokens, types, merges)
        else:
            tok, control = _byte_level(spec, tokens, types, merges)
    except ValueError as exc:
        raise ValueError(f"{vocab_gguf}: {exc}") from None
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in control])
    for i, t in control:
        if tok.token_to_id(t) != i:
            raise ValueError(f"{vocab_gguf}: special token {t!r} landed on {tok.token_to_id(t)}")
    post = (
        []
        if spec.metaspace
        else [processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
    )
    if spec.bos:
        bos_id = tok.token_to_id(spec.bos)
        post.append(
            processors.TemplateProcessing(
                single=f"{spec.bos} $A",
                pair=f"{spec.bos} $A {spec.bos}:1 $B:1",
                special_tokens=[(spec.bos, bos_id)],
            )
        )
    tok.post_processor = post[0] if len(post) == 1 else processors.Sequence(post)
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
    if spec.name in ("qwen2", "qwen35"):
        cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    named = {spec.bos, spec.eos, spec.pad, *(v for _, v in spec.extra_config)}
    if spec.metaspace:  # every control token is special, as in the upstream config
        cfg["extra_special_tokens"] = [t for t in specials if t not in named]
    cfg.update(dict(spec.extra_config))
    return cfg


def tokenizer_dir(spec_name: str, llama_cpp: Path) -> Path:
    """A cached directory with ``tokenizer.json`` + ``tokenizer_config.json`` (built once)."""
    spec = SPECS[spec_name]
    models_dir = llama_cpp / "models"
    vocab = models_dir / f"ggml-vocab-{spec.vocab or spec.name}.gguf"
    template = models_dir / "templates" / spec.template
    recipe = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    digest = f"{sha256_file(vocab)[:12]}-{sha256_file(template)[:8]}-{recipe}"
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
