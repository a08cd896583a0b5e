"""``deploykit doctor``: is everything deploykit runs present, and which versions?"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass

from deploykit import __version__
from deploykit.core.errors import DeploykitError, OllamaError
from deploykit.llamacpp import tree as llamacpp
from deploykit.ollama import client as ollama

#: Distributions deploykit (and the converter it runs) imports.
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "gguf",
    "numpy",
    "sentencepiece",
    "protobuf",
    "pyyaml",
    "jinja2",
    "httpx",
    "click",
    "rich",
    "huggingface-hub",
    "modelscope",
)


@dataclass
class Check:
    name: str
    kind: str  # "llama.cpp", "tool", "converter", "package", "ollama"
    ok: bool
    required: bool
    path: str | None = None
    version: str | None = None
    detail: str | None = None
    hint: str | None = None


def _tree_checks() -> tuple[list[Check], llamacpp.Tree | None]:
    try:
        tree = llamacpp.locate_tree()
    except DeploykitError as exc:
        return [
            Check("llama.cpp", "llama.cpp", False, True, detail=exc.message, hint=exc.hint)
        ], None
    checks = [
        Check(
            "llama.cpp",
            "llama.cpp",
            True,
            True,
            path=str(tree.path),
            version=f"{tree.release or 'custom'} (commit {(tree.commit or 'unknown')[:12]})",
            detail=f"from {tree.origin}",
        )
    ]
    conv_ok = tree.converter.is_file() and (tree.gguf_py / "gguf" / "__init__.py").is_file()
    checks.append(
        Check(
            "convert_hf_to_gguf.py",
            "converter",
            conv_ok,
            True,
            path=str(tree.converter),
            detail=f"bundled gguf-py: {tree.gguf_py}",
            hint=None if conv_ok else "the llama.cpp tree is incomplete; run `make vendor`",
        )
    )
    return checks, tree


def _tool_checks(tree: llamacpp.Tree) -> list[Check]:
    checks = []
    for name in llamacpp.TOOLS:
        try:
            path = llamacpp.tool(name, tree)
        except DeploykitError as exc:
            checks.append(
                Check(
                    name,
                    "tool",
                    False,
                    True,
                    path=str(llamacpp.bin_dir(tree) / name),
                    detail=exc.message,
                    hint=exc.hint,
                )
            )
            continue
        version = llamacpp.tool_version(path) or f"built (commit {(tree.commit or '?')[:7]})"
        checks.append(Check(name, "tool", True, True, path=str(path), version=version))
    return checks


def _package_checks() -> list[Check]:
    checks = []
    for dist in PACKAGES:
        try:
            checks.append(
                Check(dist, "package", True, True, version=importlib.metadata.version(dist))
            )
        except importlib.metadata.PackageNotFoundError:
            checks.append(
                Check(
                    dist,
                    "package",
                    False,
                    True,
                    detail="not installed",
                    hint="run `make venv` (pip install -c constraints.txt -e .)",
                )
            )
    return checks


def _ollama_check(host: str) -> Check:
    try:
        with ollama.Client(host, timeout=3.0) as client:
            version = client.version()
    except (OllamaError, ValueError) as exc:
        return Check(
            "ollama",
            "ollama",
            False,
            False,
            path=host,
            detail=f"not reachable: {getattr(exc, 'message', exc)}",
            hint=f"start `ollama serve` or set OLLAMA_HOST (now {host})",
        )
    return Check("ollama", "ollama", True, False, path=host, version=version)


def run(host: str | None = None) -> dict:
    """Every check; ``ok`` is false when a required piece is missing."""
    checks, tree = _tree_checks()
    if tree is not None:
        checks += _tool_checks(tree)
    checks += _package_checks()
    checks.append(_ollama_check(ollama.resolve_host(host)))
    return {
        "deploykit": __version__,
        "ok": all(c.ok for c in checks if c.required),
        "llama_cpp_dir_env": os.environ.get("LLAMA_CPP_DIR"),
        "checks": [asdict(c) for c in checks],
    }
