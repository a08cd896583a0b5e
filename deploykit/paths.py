"""Where deploykit keeps things: the project tree, the vendored llama.cpp pin, the cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = PROJECT_ROOT / "vendor"
LLAMA_CPP_PIN = VENDOR_DIR / "llama.cpp.json"
VENDORED_LLAMA_CPP = VENDOR_DIR / "llama.cpp"


def cache_dir() -> Path:
    """``$DEPLOYKIT_CACHE``, else ``$XDG_CACHE_HOME/deploykit``, else ``~/.cache/deploykit``."""
    if env := os.environ.get("DEPLOYKIT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deploykit"
