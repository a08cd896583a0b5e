"""Adapters to GGUF in one pass: the merge fused into the conversion, or, where that is not
proven, merged to a temporary folder and converted (the same GGUF either way, said which)."""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.gguf import convert
from deploykit.llamacpp.hooked import FusedUnsupported
from deploykit.merge import fused, merge

#: The merge dtype whose conversion to each outtype is the two-step chain's (what ``ship``
#: and ``convert --adapter`` merge to): float16 for f16, bfloat16 for bf16, float32 for f32,
#: the base's own dtype for the rest.
MERGE_DTYPE = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}


def merge_dtype(outtype: str) -> str:
    return MERGE_DTYPE.get(outtype, "auto")


def convert_adapters(
    adapter_dirs: list[Path],
    base: Path | str | None,
    overlay: Path,
    out: Path,
    *,
    outtype: str,
    dtype: str | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    tree: Any = None,
    force: bool = False,
    the_plan: merge.MergePlan | None = None,
) -> dict[str, Any]:
    """``adapter_dirs`` merged into ``base`` and converted to ``out``; ``overlay`` is the merged
    model's folder without weights (``merge.write_overlay``), which the converter reads for
    everything but the tensors. Returns convert's summary with how the merge was done."""
    dtype = dtype or merge_dtype(outtype)
    the_plan = the_plan or merge.plan(adapter_dirs, base, dtype)
    why = fused.refusal(the_plan)
    common = {"outtype": outtype, "name": name, "metadata": metadata, "tree": tree, "force": force}
    out = Path(out)
    if why is None:
        # the plan, the converter's report and its cast buffers: removed whatever happens
        with _scratch(out, "fused") as scratch:
            src = fused.source(the_plan, scratch)
            try:
                return {**convert.convert(overlay, out, tensors=src, **common), "merge": "fused"}
            except FusedUnsupported as exc:
                why = exc.message
    ui.warn(f"merging to a temporary folder before converting: {why}")
    with _scratch(out, "merge") as tmp:
        merge.merge(adapter_dirs, tmp / overlay.name, base=the_plan.base_dir, dtype=dtype)
        result = convert.convert(tmp / overlay.name, out, **common)
    return {**result, "merge": f"two-step ({why})"}


@contextlib.contextmanager
def _scratch(out: Path, what: str):
    """A temporary folder of deploykit's beside ``out`` (named like a leftover, so that
    ``cache prune`` removes it after a kill)."""
    with tempfile.TemporaryDirectory(
        prefix=f".deploykit-{what}-", suffix=".partial", dir=out.parent
    ) as tmp:
        yield Path(tmp)


def convert_with_adapters(
    base: Path,
    adapter_dirs: list[Path],
    out: Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """``convert BASE --adapter DIR``: the overlay in a temporary folder beside ``out``
    (removed after), then ``convert_adapters``. ``general.name`` defaults to the last adapter
    folder's name (the base's would name the wrong model); the overlay folder has the same
    name, which the converter reads other metadata from (basename, size label), as it reads
    a merged folder's."""
    from deploykit.core.fsutil import check_not_input, check_output_file

    out = Path(out)
    dtype = merge_dtype(outtype)
    the_plan = merge.plan(adapter_dirs, base, dtype)
    check_not_input(out, the_plan.inputs)  # before any work: the temporary folders go beside it
    check_output_file(out, force=force)
    name = name or Path(adapter_dirs[-1]).resolve().name
    with _scratch(out, "overlay") as tmp:
        overlay = tmp / (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "merged")
        merge.write_overlay(the_plan, overlay)
        return convert_adapters(
            adapter_dirs,
            the_plan.base_dir,
            overlay,
            out,
            outtype=outtype,
            dtype=dtype,
            name=name,
            metadata=metadata,
            force=force,
            the_plan=the_plan,
        )
