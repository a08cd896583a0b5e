"""``deploykit doctor``: is everything deploykit runs present, and which versions?"""

from __future__ import annotations

import importlib.metadata
import os

from deploykit import __version__
from deploykit.core.errors import DeploykitError, InputError, OllamaError, ToolchainError
from deploykit.core.report import FAIL, PASS, WARN, Check, Report
from deploykit.llamacpp import build, tools
from deploykit.llamacpp import tree as llamacpp


def packages() -> list[str]:
    """The distributions deploykit needs (its own requirements, which include what the
    converter imports), as pip names; the dev-only extras aside."""
    import re

    try:
        requires = importlib.metadata.requires("deploykit") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return list(dict.fromkeys(n for n in names if n))


def _check(name: str, kind: str, status: str, detail: str = "", **data) -> Check:
    """A doctor check: ``kind`` is llama.cpp, converter, tool, package or ollama."""
    return Check(name, status, detail, {"kind": kind, **data})


def _missing(name: str, kind: str, exc: DeploykitError, **data) -> Check:
    return _check(name, kind, FAIL, f"{exc.message} (hint: {exc.hint})", hint=exc.hint, **data)


def _tree_checks() -> tuple[list[Check], llamacpp.Tree | None]:
    try:
        tree = llamacpp.locate_tree()
    except DeploykitError as exc:
        return [_missing("llama.cpp", "llama.cpp", exc)], None
    version = f"{tree.release or 'custom'} (commit {(tree.commit or 'unknown')[:12]})"
    checks = [
        _check(
            "llama.cpp",
            "llama.cpp",
            PASS,
            f"{version}, from {tree.origin}: {tree.path}",
            path=str(tree.path),
            version=version,
            origin=tree.origin,
        )
    ]
    conv_ok = tree.converter.is_file() and (tree.gguf_py / "gguf" / "__init__.py").is_file()
    hint = None if conv_ok else "the llama.cpp tree is incomplete; run `make vendor`"
    checks.append(
        _check(
            "convert_hf_to_gguf.py",
            "converter",
            PASS if conv_ok else FAIL,
            f"bundled gguf-py: {tree.gguf_py}" + (f" (hint: {hint})" if hint else ""),
            path=str(tree.converter),
            hint=hint,
        )
    )
    return checks, tree


def _tool_checks(tree: llamacpp.Tree) -> list[Check]:
    checks = []
    for name in build.TOOLS:
        try:
            path = tools.tool(name, tree)
        except DeploykitError as exc:
            checks.append(_missing(name, "tool", exc, path=str(build.bin_dir(tree) / name)))
            continue
        version = tools.tool_version(path) or f"built (commit {(tree.commit or '?')[:7]})"
        checks.append(
            _check(name, "tool", PASS, f"{version}  {path}", path=str(path), version=version)
        )
    return checks


def _package_checks() -> list[Check]:
    checks = []
    hint = "run `make venv` (pip install -c constraints.txt -e .)"
    for dist in packages():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            checks.append(_check(dist, "package", FAIL, f"not installed (hint: {hint})", hint=hint))
        else:
            checks.append(_check(dist, "package", PASS, version, version=version))
    return checks


def _ollama_check(host: str | None) -> Check:
    from deploykit.ollama.client import Client
    from deploykit.ollama.names import resolve_host

    host = resolve_host(host)
    try:
        with Client(host, timeout=3.0) as client:
            version = client.version()
    except (OllamaError, ValueError) as exc:
        hint = f"start `ollama serve` or set OLLAMA_HOST (now {host})"
        detail = f"not reachable: {getattr(exc, 'message', exc)} (not needed for a bundle)"
        return _check("ollama", "ollama", WARN, detail, path=host, hint=hint, required=False)
    return _check("ollama", "ollama", PASS, version, path=host, version=version, required=False)


def run(host: str | None = None) -> Report:
    """Every check. A missing required piece fails the report: exit 3 when only Python
    packages are missing (reinstall), else 6 (the llama.cpp toolchain)."""
    checks, tree = _tree_checks()
    if tree is not None:
        checks += _tool_checks(tree)
    checks += _package_checks()
    checks.append(_ollama_check(host))
    failed = [c for c in checks if not c.ok]
    only_packages = failed and all(c.data["kind"] == "package" for c in failed)
    hints = list(dict.fromkeys(c.data["hint"] for c in failed if c.data.get("hint")))
    return Report(
        "doctor",
        "deploykit's toolchain",
        checks,
        extra={"deploykit": __version__, "llama_cpp_dir_env": os.environ.get("LLAMA_CPP_DIR")},
        error=InputError if only_packages else ToolchainError,
        hint="; ".join(hints) or "see the report above",
    )
