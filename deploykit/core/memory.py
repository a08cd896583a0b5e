"""How deploykit's processes ask for memory for tensor work (merge, conversion, training)."""

from __future__ import annotations

import os
from collections.abc import Mapping

#: PyTorch's CPU allocator backs allocations of 2 MiB and more with transparent huge pages
#: when this is set (read once, at its first allocation). A fresh tensor of hundreds of MB
#: otherwise costs a page fault and a zeroed page per 4 KiB, which measured as most of a
#: merge's time on a 2-core virtual machine (bench/merge.py). The user's own value wins.
TORCH_HUGE_PAGES = ("THP_MEM_ALLOC_ENABLE", "1")


def with_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` asking PyTorch for huge pages, unless it already says otherwise."""
    key, value = TORCH_HUGE_PAGES
    return {key: value, **env}


def use_huge_pages() -> None:
    """Ask for huge pages in this process (before torch's first allocation to take effect)."""
    os.environ.setdefault(*TORCH_HUGE_PAGES)
