"""Training-run folders that are not adapters: an ms-swift run (``output/vN-DATE-TIME/``) or
any folder of ``checkpoint-N`` sub-folders, given where an adapter is expected.

:func:`refuse_run_folder` turns such a folder into one line that lists its checkpoints and
names the last; a folder holding the final adapter itself (LlamaFactory's output_dir) passes.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploykit.core.errors import InputError

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
SWIFT_RUN = re.compile(r"v\d+-\d{8}-\d{6}")


def checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` sub-folders holding an adapter, by step."""
    found = [
        p
        for p in Path(folder).iterdir()
        if p.is_dir() and CHECKPOINT.fullmatch(p.name) and (p / "adapter_config.json").is_file()
    ]
    return sorted(found, key=lambda p: int(CHECKPOINT.fullmatch(p.name).group(1)))


def refuse_run_folder(path: Path, flag: str = "--adapter") -> None:
    """InputError when ``path`` is a run folder of checkpoints rather than an adapter."""
    path = Path(path)
    if not path.is_dir() or (path / "adapter_config.json").is_file():
        return
    found = checkpoints(path)
    if not found:
        return
    swift = SWIFT_RUN.fullmatch(path.name) or (path / "args.json").is_file()
    what = "an ms-swift run folder" if swift else "a training run folder"
    names = [p.name for p in found]
    shown = ", ".join(names if len(names) <= 6 else names[:2] + ["..."] + names[-3:])
    raise InputError(
        f"{path} is {what}, not an adapter: {len(names)} checkpoint(s) {shown}; "
        f"the last is {names[-1]}",
        f"pass {flag} {found[-1]}",
    )
