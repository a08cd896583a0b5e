"""llama.cpp's tokenizer test vectors (``models/ggml-vocab-*.gguf.inp`` / ``.out``)."""

from __future__ import annotations

from pathlib import Path

from deploykit.core.errors import InputError
from deploykit.llamacpp.tree import Tree


def read_vectors(vocab_gguf: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: (text, expected ids) from ``.inp`` / ``.out``."""
    inp = Path(f"{vocab_gguf}.inp").read_text(encoding="utf-8")
    out = Path(f"{vocab_gguf}.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()  # a trailing separator ends the last test
    ids = [[int(x) for x in line.split()] for line in out.split("\n")]
    return list(zip(texts, ids[: len(texts)], strict=True))


def suite_texts(tree: Tree, pre: str | None) -> list[str]:
    """The fixed multilingual suite: the test texts of ``pre``'s vocabulary (else Llama 3's
    or Qwen2's), so a tokenizer is checked on text it was written for."""
    models = tree.path / "models"
    for name in (pre, "llama-bpe", "qwen2"):
        if name and (models / f"ggml-vocab-{name}.gguf.inp").is_file():
            return [t for t, _ in read_vectors(models / f"ggml-vocab-{name}.gguf")]
    raise InputError(f"no tokenizer test texts in {models}", "run `make vendor`")
