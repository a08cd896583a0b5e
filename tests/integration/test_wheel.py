"""A non-editable install works: the wheel carries deploykit's data (families, references, the
llama.cpp pin), and run outside the checkout (another working directory and HOME, no
LLAMA_CPP_DIR) it vendors llama.cpp into the cache, lists every family, detects one, and passes
doctor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.core.paths import cache_dir
from deploykit.ollama import families
from tests.support.cli import ROOT


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """deploykit's wheel (built from a copy of this tree) in a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    files = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout.split("\0")
    src = root / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root), str(src)])
    [wheel] = root.glob("deploykit-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(ROOT / "constraints.txt"),
    ]
    _run([*pip, "torch==2.13.0"])  # pinned first: an unpinned torch is a CUDA build
    _run([*pip, str(wheel)])
    home, cwd = root / "home", root / "elsewhere"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_DIR", "PYTHONPATH")}
    env.update(
        HOME=str(home),
        DEPLOYKIT_CACHE=str(cache_dir()),  # the built tools and the sdist, as CI would cache
        PIP_CACHE_DIR=str(Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip"))),
    )
    return {"bin": venv / "bin" / "deploykit", "env": env, "cwd": cwd, "wheel": wheel}


def _cli(installed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed["bin"]), *args],
        capture_output=True,
        text=True,
        env=installed["env"],
        cwd=installed["cwd"],
    )


def test_the_installed_package_is_not_the_checkout(installed):
    proc = _run(
        [
            str(installed["bin"].with_name("python")),
            "-c",
            "import deploykit; print(deploykit.__file__)",
        ],
        cwd=installed["cwd"],
        env=installed["env"],
    )
    assert not proc.stdout.strip().startswith(str(ROOT))


def test_toolchain_vendor_extracts_into_the_cache(installed):
    proc = _cli(installed, "toolchain", "vendor", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = Path(json.loads(proc.stdout)["path"])
    assert path.is_relative_to(cache_dir()) and (path / "convert_hf_to_gguf.py").is_file()


def test_templates_list_shows_every_family(installed):
    proc = _cli(installed, "templates", "list", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [f["name"] for f in json.loads(proc.stdout)["families"]]
    assert names == list(families.families())


def test_modelfile_detects_the_family_from_the_wheels_references(installed, f16, tmp_path):
    out = tmp_path / "Modelfile"
    proc = _cli(installed, "modelfile", "--gguf", str(f16["qwen2"]), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["family"] == "qwen2.5" and result["detected"] is True
    assert "TEMPLATE" in out.read_text()


def test_doctor_passes(installed):
    test_toolchain_vendor_extracts_into_the_cache(installed)
    proc = _cli(installed, "doctor", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    tree = next(c for c in report["checks"] if c["name"] == "llama.cpp")
    assert Path(tree["data"]["path"]).is_relative_to(cache_dir())
