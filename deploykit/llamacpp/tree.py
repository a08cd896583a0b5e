"""Locate the llama.cpp tree (vendored, or ``$LLAMA_CPP_DIR``) and build its tools into the cache.

The tools are built once per llama.cpp version, build flags, compiler and CPU into
``<cache>/llama.cpp/<key>/bin`` and reused by every later run (``make toolchain``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploykit.core import ui
from deploykit.core.errors import ConversionError, ToolchainError
from deploykit.core.fsutil import atomic_dir, atomic_write_json
from deploykit.core.paths import cache_dir
from deploykit.llamacpp.vendor import Pin, vendored_stamp, vendored_tree_dir

#: Tools deploykit runs. All are required; ``doctor`` reports each.
TOOLS = (
    "llama-quantize",
    "llama-imatrix",
    "llama-perplexity",
    "llama-server",
    "llama-tokenize",
    "llama-cli",
)

#: CMake flags of the cached build: Release, static, no tests/examples, no network features.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

#: ggml's AMX kernels (chosen by -march=native on Sapphire Rapids and newer) crash
#: llama-server on K-quants (SIGSEGV in ggml_backend_amx_mul_mat, seen with Q4_K_M on the
#: pinned commit): the cached build leaves AMX out. AVX-512 and VNNI stay.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_flags() -> list[str]:
    """CMAKE_FLAGS plus the compiler flags this machine's build needs."""
    flags = list(CMAKE_FLAGS)
    import platform

    if platform.machine().lower() in ("x86_64", "amd64") and _accepts(NO_AMX):
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return flags


def _accepts(cflags: str) -> bool:
    """Whether the C++ compiler accepts ``cflags``."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return False
    proc = subprocess.run(
        [cxx, *cflags.split(), "-x", "c++", "-E", "-o", os.devnull, os.devnull],
        capture_output=True,
    )
    return proc.returncode == 0


REBUILD_HINT = "run `make toolchain` (or `deploykit toolchain build`)"


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
            raise ConversionError(
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


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or ""
    if not cxx:
        return ""
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else cxx


def _cpu_flags() -> str:
    """The CPU feature set: a native (-march=native) build is only valid on a matching CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import platform

    return platform.machine()


def build_key(tree: Tree) -> str:
    """Cache key: llama.cpp identity + build flags + compiler + CPU features."""
    text = "\n".join([*cmake_flags(), _compiler(), _cpu_flags()])
    h = hashlib.sha256(text.encode()).hexdigest()[:10]
    if tree.origin == "vendored":
        return f"{tree.release}-{(tree.commit or 'unknown')[:7]}-{h}"
    ident = hashlib.sha256(f"{tree.path}\n{tree.commit}".encode()).hexdigest()[:8]
    return f"custom-{ident}-{h}"


def bin_dir(tree: Tree) -> Path:
    """Where ``tree``'s tools live: ``$LLAMA_CPP_DIR/build/bin`` if built there, else the cache."""
    if tree.origin == "LLAMA_CPP_DIR" and (tree.path / "build" / "bin").is_dir():
        return tree.path / "build" / "bin"
    return cache_dir() / "llama.cpp" / build_key(tree) / "bin"


def tool(name: str, tree: Tree | None = None) -> Path:
    """Path of a built llama.cpp tool, or a ConversionError naming the command that builds it."""
    tree = tree or locate_tree()
    path = bin_dir(tree) / name
    if not os.access(path, os.X_OK):
        raise ConversionError(
            f"llama.cpp tool {name} is not built (looked in {path.parent})", REBUILD_HINT
        )
    return path


def tool_version(path: Path) -> str | None:
    """``version: N (commit)`` as the tool prints it, or None."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version: .*", out.stdout + out.stderr)
    return m.group(0).strip() if m else None


def converter_env(tree: Tree) -> dict[str, str]:
    """Environment for the converter subprocess: always the tree's bundled gguf-py."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # with it set, the converter imports the index's gguf and breaks
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree.gguf_py), env.get("PYTHONPATH")]))
    return env


def converter_cmd(tree: Tree, *args: str) -> list[str]:
    """``python convert_hf_to_gguf.py ARGS`` with the project's interpreter."""
    return [sys.executable, str(tree.converter), *args]


def _run_logged(cmd: list[str], log: Path, env: dict[str, str], bar=None) -> None:
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        done = 0
        for line in proc.stdout:
            fh.write(line)
            if bar is not None and (m := re.match(r"\[\s*(\d+)%\]", line)):
                pct = int(m.group(1))
                if pct > done:
                    if not ui.console.is_terminal and pct // 10 > done // 10:
                        ui.info(f"  ... {pct}%")  # a log-friendly heartbeat for CI
                    done = pct
                    bar.update(bar.task_ids[0], completed=pct)
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise ConversionError(
            f"building llama.cpp failed ({cmd[0]} exit {rc}): {tail[0][:200]}",
            f"see the full log in {log}",
        )


def build(tree: Tree | None = None, jobs: int | None = None, force: bool = False) -> dict:
    """Build TOOLS for ``tree`` into the cache (no-op when already built); returns a summary."""
    tree = tree or locate_tree()
    final = cache_dir() / "llama.cpp" / build_key(tree)
    summary = {
        "tree": str(tree.path),
        "origin": tree.origin,
        "commit": tree.commit,
        "bin_dir": str(final / "bin"),
    }
    if not force and all(os.access(final / "bin" / t, os.X_OK) for t in TOOLS):
        return {**summary, "action": "up-to-date"}
    for prog in ("cmake",):
        if not shutil.which(prog):
            raise ConversionError(
                f"{prog} is not installed", "install it: apt-get install cmake g++"
            )
    if not _compiler():
        raise ConversionError("no C++ compiler found", "install one: apt-get install g++")

    work = final.with_name(final.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    flags = cmake_flags()
    env = dict(os.environ)
    if tree.origin == "vendored":
        # The extracted tree has no .git: name the pinned commit, and keep git from
        # finding the enclosing (deploykit) repository instead.
        flags += [
            f"-DLLAMA_BUILD_COMMIT={(tree.commit or 'unknown')[:7]}",
            "-DLLAMA_BUILD_NUMBER=0",
        ]
        env["GIT_CEILING_DIRECTORIES"] = str(tree.path.parent)
    jobs = jobs or os.cpu_count() or 2
    started = time.monotonic()
    ui.info(f"building llama.cpp tools in {work} (about 10 minutes on 2 cores; log: {log})")
    _run_logged(["cmake", "-S", str(tree.path), "-B", str(work / "build"), *flags], log, env)
    with ui.progress_bar("compiling llama.cpp", 100) as bar:
        cmd = ["cmake", "--build", str(work / "build"), "-j", str(jobs), "--target", *TOOLS]
        _run_logged(cmd, log, env, bar)
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "bin").mkdir()
        for t in TOOLS:
            shutil.copy2(work / "build" / "bin" / t, tmp / "bin" / t)
        shutil.copy2(log, tmp / "build.log")
        atomic_write_json(
            tmp / "build.json",
            {
                **summary,
                "flags": flags,
                "compiler": _compiler(),
                "seconds": round(time.monotonic() - started, 1),
            },
        )
    shutil.rmtree(work, ignore_errors=True)
    return {**summary, "action": "built", "seconds": round(time.monotonic() - started, 1)}


# --- added for convert / quantize / verify (issue 4) ---------------------------------------

_QUANT_LINE = re.compile(r"^\s*(?:(\d+)\s+or\s+)?([A-Z][A-Z0-9_]*)\s+:\s*(.*)$")


def quant_types(tree: Tree | None = None) -> dict[str, str]:
    """The quantization types ``llama-quantize`` itself accepts: NAME -> its description.

    Parsed from the tool's ``--help`` ("allowed quantization types"), so the list always
    matches the pinned build.
    """
    exe = tool("llama-quantize", tree)
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    if "allowed quantization types" not in text:
        raise ConversionError(
            f"could not read the quantization types from {exe} --help", REBUILD_HINT
        )
    types: dict[str, str] = {}
    for line in text.split("allowed quantization types", 1)[1].splitlines():
        if m := _QUANT_LINE.match(line):
            types[m.group(2)] = m.group(3).strip()
    return types


def supported_architectures(tree: Tree | None = None) -> list[str]:
    """HF architecture names the tree's converter supports (``TEXT_MODEL_MAP``).

    Read statically from ``conversion/__init__.py`` (instant); falls back to the converter's
    ``--print-supported-models`` for trees laid out differently.
    """
    import ast

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
