"""Materialise the pinned llama.cpp tree from the llama-cpp-python sdist on the package index.

Upstream git is unreachable from our machines, so the tree comes from a source release the
package index carries. The pin (version, sha256, upstream commit) is ``vendor/llama.cpp.json``,
shipped as package data. From a checkout the tree is extracted to ``vendor/llama.cpp``
(git-ignored); from an installed wheel, into the cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploykit.core import ui
from deploykit.core.errors import DownloadError, InputError
from deploykit.core.fsutil import atomic_write_json, sha256_file
from deploykit.core.paths import cache_dir, checkout_root, package_data

STAMP = ".deploykit-vendor.json"
PIN_FILE = "vendor/llama.cpp.json"


def vendored_tree_dir(pin: Pin | None = None) -> Path:
    """Where the pinned tree lives: ``vendor/llama.cpp`` in a checkout, else in the cache."""
    root = checkout_root()
    if root is not None:
        return root / "vendor" / "llama.cpp"
    pin = pin or Pin.load()
    return cache_dir() / "llama.cpp-src" / f"{pin.version}-{pin.llama_cpp_commit[:12]}"


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    llama_cpp_commit: str

    @classmethod
    def load(cls, path: Path | None = None) -> Pin:
        path = path or package_data(PIN_FILE)
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(
                f"cannot read the llama.cpp pin {path}: {exc}",
                "restore vendor/llama.cpp.json from git",
            ) from exc


def vendored_stamp(tree: Path) -> dict | None:
    """What ``make vendor`` recorded in the extracted tree, or None if it is not there."""
    try:
        return json.loads((tree / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _download_sdist(pin: Pin, into: Path) -> Path:
    """Fetch the pinned sdist with pip (so the user's index configuration applies)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
        f"{pin.package}=={pin.version}",
    ]
    ui.info(f"downloading {pin.filename} from the package index ...")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = into / pin.filename
    if proc.returncode != 0 or not found.is_file():
        last = (proc.stderr.strip().splitlines() or ["pip printed nothing"])[-1]
        raise DownloadError(
            f"could not download {pin.package}=={pin.version}: {last}",
            "check that the package index is reachable, or pass --sdist FILE",
        )
    return found


def _sdist(pin: Pin, sdist: Path | None) -> Path:
    """A verified copy of the pinned sdist: the given file, the cached one, or a fresh download."""
    cached = cache_dir() / "sdist" / pin.filename
    if sdist is None and cached.is_file() and sha256_file(cached) == pin.sha256:
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(sdist) if sdist else _download_sdist(pin, Path(tmp))
        if not src.is_file():
            raise InputError(f"sdist not found: {src}", "pass the path of the downloaded .tar.gz")
        digest = sha256_file(src)
        if digest != pin.sha256:
            raise DownloadError(
                f"{src.name} has sha256 {digest}, the pin says {pin.sha256}",
                "the file is corrupt or not the pinned release; delete it and run `make vendor`",
            )
        if src.resolve() == cached.resolve():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + ".partial")
        shutil.copyfile(src, partial)
        os.replace(partial, cached)
    return cached


def _extract(pin: Pin, sdist: Path, dest: Path) -> None:
    """Extract only the pinned subdirectory, checking the upstream commit it was built from."""
    with tarfile.open(sdist) as tar:
        top = tar.getmembers()[0].name.split("/", 1)[0]
        prefix = f"{top}/{pin.subdir}/"
        head = tar.extractfile(f"{top}/.git/modules/{pin.subdir}/HEAD")
        commit = head.read().decode().strip() if head else ""
        if commit != pin.llama_cpp_commit:
            raise DownloadError(
                f"the sdist's llama.cpp is at commit {commit or '?'}, "
                f"the pin says {pin.llama_cpp_commit}",
                "vendor/llama.cpp.json and the sdist disagree; restore the pin from git",
            )
        # The submodule's ".git" link would point outside the tree; leave it out.
        members = [
            m for m in tar.getmembers() if m.name.startswith(prefix) and m.name != prefix + ".git"
        ]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".vendor-") as tmp:
            with ui.progress_bar(f"extracting {pin.subdir}", len(members)) as bar:
                for m in members:
                    tar.extract(m, tmp, filter="data")
                    bar.advance(bar.task_ids[0])
            tree = Path(tmp) / top / pin.subdir
            stamp = {**pin.__dict__, "sdist": str(sdist)}
            atomic_write_json(tree / STAMP, stamp)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tree, dest)


def fetch(dest: Path | None = None, sdist: Path | None = None, force: bool = False) -> dict:
    """Make ``dest`` (default: :func:`vendored_tree_dir`) hold the pinned llama.cpp tree.

    A tree there is replaced only when deploykit extracted it (its stamp says so): a folder
    someone put there themselves (a git submodule, a checkout) is refused, not deleted."""
    pin = Pin.load()
    dest = Path(dest) if dest is not None else vendored_tree_dir(pin)
    stamp = vendored_stamp(dest)
    if dest.exists() and stamp is None and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(
            f"{dest} exists and was not extracted by deploykit",
            "move it away, or point LLAMA_CPP_DIR at it to use it as your llama.cpp",
        )
    if not force and stamp and stamp.get("sha256") == pin.sha256:
        return {"path": str(dest), "action": "up-to-date", **pin.__dict__}
    _extract(pin, _sdist(pin, sdist), dest)
    return {"path": str(dest), "action": "extracted", **pin.__dict__}
