"""The llama.cpp source tree every command uses (vendored, or ``$LLAMA_CPP_DIR``), and what it
knows: its converter, the architectures that converter supports, its pre-tokenizer table."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deploykit.core.errors import ConversionError, ToolchainError
from deploykit.llamacpp.vendor import Pin, vendored_stamp, vendored_tree_dir


@dataclass(frozen=True)
class Tree:
    """A llama.cpp source tree: where it is, where it came from, which commit."""

    path: Path
    origin: str  # "vendored" or "LLAMA_CPP_DIR"
    commit: str | None
    release: str | None  # llama-cpp-python version for the vendored tree

    @property
    def converter(self) -> Path:
        return self.path / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.path / "gguf-py"


def _git_head(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def locate_tree() -> Tree:
    """The llama.cpp tree every command uses: ``$LLAMA_CPP_DIR`` if set, else the vendored one."""
    if env := os.environ.get("LLAMA_CPP_DIR"):
        path = Path(env).expanduser().resolve()
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise ToolchainError(
                f"LLAMA_CPP_DIR={env} is not a llama.cpp tree (no convert_hf_to_gguf.py)",
                "point LLAMA_CPP_DIR at a llama.cpp checkout, or unset it to use the vendored one",
            )
        return Tree(path, "LLAMA_CPP_DIR", _git_head(path), None)
    pin = Pin.load()
    vendored = vendored_tree_dir(pin)
    stamp = vendored_stamp(vendored)
    if stamp is None or not (vendored / "convert_hf_to_gguf.py").is_file():
        raise ToolchainError(
            f"the vendored llama.cpp tree is missing ({vendored})",
            "run `deploykit toolchain vendor` (`make vendor` in a checkout), or set LLAMA_CPP_DIR",
        )
    if stamp.get("sha256") != pin.sha256:
        raise ToolchainError(
            f"{vendored} is llama-cpp-python {stamp.get('version')}, the pin says {pin.version}",
            "run `deploykit toolchain vendor` to extract the pinned release",
        )
    return Tree(vendored, "vendored", pin.llama_cpp_commit, pin.version)


def converter_env(tree: Tree) -> dict[str, str]:
    """Environment for the converter subprocess: always the tree's bundled gguf-py."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # with it set, the converter imports the index's gguf and breaks
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree.gguf_py), env.get("PYTHONPATH")]))
    return env


def converter_cmd(tree: Tree, *args: str) -> list[str]:
    """``python convert_hf_to_gguf.py ARGS`` with the project's interpreter."""
    return [sys.executable, str(tree.converter), *args]


def supported_architectures(tree: Tree | None = None) -> list[str]:
    """HF architecture names the tree's converter supports (``TEXT_MODEL_MAP``).

    Read statically from ``conversion/__init__.py`` (instant); falls back to the converter's
    ``--print-supported-models`` for trees laid out differently.
    """
    tree = tree or locate_tree()
    init = tree.path / "conversion" / "__init__.py"
    try:
        mod = ast.parse(init.read_text(encoding="utf-8"))
        for node in mod.body:
            target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
            if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP":
                value = ast.literal_eval(node.value)  # type: ignore[arg-type]
                return sorted(value)
    except (OSError, SyntaxError, ValueError):
        pass
    # a listing, not a conversion: a failure here only means "nothing known"
    out = subprocess.run(
        converter_cmd(tree, "--print-supported-models"),
        capture_output=True,
        text=True,
        env=converter_env(tree),
        timeout=300,
    )
    names = re.findall(
        r"^\s*-?\s*([A-Za-z0-9_.]+(?:ForCausalLM|Model|ForConditionalGeneration))",
        out.stdout + out.stderr,
        re.M,
    )
    return sorted(set(names))


def chkhsh_table(tree: Tree) -> tuple[str, dict[str, str]]:
    """The converter's pre-tokenizer check text and its ``chkhsh -> name`` table.

    Read from ``get_vocab_base_pre`` in the converter's sources (the last entry for a hash
    wins, as in the converter's chain of ``if``s).
    """
    for path in (tree.path / "conversion" / "base.py", tree.converter):
        if not path.is_file():
            continue
        src = path.read_text(encoding="utf-8")
        m = re.search(r"^\s*chktxt = (.+)$", src, re.M)
        if not m:
            continue
        table = dict(
            re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#.*\n)*\s*res = "([^"]+)"', src)
        )
        return ast.literal_eval(m.group(1)), table
    raise ConversionError(
        f"cannot find the pre-tokenizer table in {tree.path}", "run `make vendor`"
    )
