"""Adapters to GGUF in one pass: the merge fused into the conversion, or, where that is not
proven, merged to a temporary folder and converted (the same GGUF either way, said which)."""

from __future__ import annotations

import contextlib
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
    if why is None:
        src = fused.source(adapter_dirs, the_plan.base_dir, dtype, Path(out).parent, the_plan)
        try:
            result = convert.convert(overlay, out, tensors=src, **common)
            return {**result, "merge": "fused"}
        except FusedUnsupported as exc:
            why = exc.message
        finally:
            with contextlib.suppress(FileNotFoundError):
                src.plan.unlink()
    ui.warn(f"merging to a temporary folder before converting: {why}")
    with tempfile.TemporaryDirectory(
        prefix=".deploykit-merge-", suffix=".partial", dir=Path(out).parent
    ) as tmp:
        merge.merge(adapter_dirs, Path(tmp) / "merged", base=the_plan.base_dir, dtype=dtype)
        result = convert.convert(Path(tmp) / "merged", out, **common)
    return {**result, "merge": f"two-step ({why})"}


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
    (removed after), then ``convert_adapters``. ``general.name`` defaults to the last
    adapter folder's name (the base's would name the wrong model)."""
    from deploykit.core.fsutil import check_not_input, check_output_file

    out = Path(out)
    dtype = merge_dtype(outtype)
    the_plan = merge.plan(adapter_dirs, base, dtype)
    inputs = [the_plan.base_dir, *(a.path for a in the_plan.adapters)]
    check_not_input(out, inputs)  # before any work: the temporary folders go beside it
    check_output_file(out, force=force)
    with tempfile.TemporaryDirectory(
        prefix=".deploykit-overlay-", suffix=".partial", dir=out.parent
    ) as tmp:
        overlay = Path(tmp) / "merged"
        merge.write_overlay(the_plan, overlay)
        return convert_adapters(
            adapter_dirs,
            the_plan.base_dir,
            overlay,
            out,
            outtype=outtype,
            dtype=dtype,
            name=name or Path(adapter_dirs[-1]).resolve().name,
            metadata=metadata,
            force=force,
            the_plan=the_plan,
        )
