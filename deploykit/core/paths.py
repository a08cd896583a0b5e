"""Where deploykit finds things: its shipped data, a checkout (when run from one), the cache.

Data that ships with deploykit (the template families, the llama.cpp pin) is package data:
a wheel carries it under ``deploykit/_bundled/`` (``setup.py`` copies it there at build time);
run from a checkout (editable install) it is read where it is committed.
"""

from __future__ import annotations

import importlib.resources
import os
from functools import cache
from pathlib import Path

from deploykit.core.errors import InputError

#: The environment variable naming a folder of user template families (``--families-dir``).
FAMILIES_DIR_ENV = "DEPLOYKIT_FAMILIES_DIR"


@cache
def checkout_root() -> Path | None:
    """The deploykit checkout this package runs from (an editable install), else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "vendor" / "llama.cpp.json").is_file():
        return root
    return None


def package_data(name: str) -> Path:
    """A shipped data file or folder by its path in the repository, e.g. ``modelfile_templates``."""
    bundled = importlib.resources.files("deploykit") / "_bundled" / name
    if bundled.is_dir() or bundled.is_file():
        return Path(str(bundled))
    root = checkout_root()
    if root is not None and (root / name).exists():
        return root / name
    raise InputError(
        f"deploykit's data {name} is missing from this installation",
        "reinstall deploykit (a wheel carries it under deploykit/_bundled/)",
    )


def cache_dir() -> Path:
    """``$DEPLOYKIT_CACHE``, else ``$XDG_CACHE_HOME/deploykit``, else ``~/.cache/deploykit``."""
    if env := os.environ.get("DEPLOYKIT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deploykit"
