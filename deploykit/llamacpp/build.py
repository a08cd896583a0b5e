"""Build the llama.cpp tools deploykit runs into the cache (``make toolchain``).

The tools are built once per llama.cpp version, build flags, compiler and CPU into
``<cache>/llama.cpp/<key>/bin`` and reused by every later run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from deploykit.core import ui
from deploykit.core.errors import ToolchainError
from deploykit.core.fsutil import atomic_dir, atomic_write_json
from deploykit.core.paths import cache_dir
from deploykit.llamacpp.tree import Tree, locate_tree

#: Tools deploykit runs, which the build makes. All are required; ``doctor`` reports each.
TOOLS = (
    "llama-quantize",
    "llama-imatrix",
    "llama-perplexity",
    "llama-server",
    "llama-tokenize",
    "llama-cli",
    "llama-gguf-split",  # push: GGUFs over a hub's per-file limit
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


def _cxx() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def cmake_flags() -> list[str]:
    """CMAKE_FLAGS plus the compiler flags this machine's build needs."""
    flags = list(CMAKE_FLAGS)
    if platform.machine().lower() in ("x86_64", "amd64") and _accepts(NO_AMX):
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    return flags


def _accepts(cflags: str) -> bool:
    """Whether the C++ compiler accepts ``cflags``."""
    cxx = _cxx()
    if not cxx:
        return False
    proc = subprocess.run(
        [cxx, *cflags.split(), "-x", "c++", "-E", "-o", os.devnull, os.devnull],
        capture_output=True,
    )
    return proc.returncode == 0


def _compiler() -> str:
    cxx = _cxx() or ""
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


def _run_logged(cmd: list[str], log: Path, env: dict[str, str], bar=None) -> None:
    """Run a build step (cmake), appending its output to ``log``; ``[ N%]`` lines feed ``bar``."""
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
        raise ToolchainError(
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
    if not shutil.which("cmake"):
        raise ToolchainError("cmake is not installed", "install it: apt-get install cmake g++")
    if not _compiler():
        raise ToolchainError("no C++ compiler found", "install one: apt-get install g++")

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
