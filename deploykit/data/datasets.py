"""Where LlamaFactory data comes from: ``--data`` files and folders (JSON or JSONL), and
dataset names resolved through ``dataset_info.json``; read into conversations.

Training and evaluation both call :func:`select` and :func:`conversations`; an unusable file
or record is an InputError naming the file, the record's index (and line) and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.data.formats import (
    FORMATS,
    SFT_ONLY,
    Conversation,
    RecordError,
    conversation,
    detect_format,
)

SUFFIXES = (".json", ".jsonl")


@dataclass
class DatasetAttr:
    """One dataset: where it is and how its records are laid out (dataset_info.json entry)."""

    name: str
    paths: list[Path]
    formatting: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None


def files(path: Path) -> list[Path]:
    """The data files of ``path``: the file itself, or a folder's .json/.jsonl files, sorted."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not found:
            raise InputError(f"{path} has no .json or .jsonl files", "point at a data file")
        return found
    if not path.is_file():
        raise InputError(f"data file not found: {path}", "check the path given to --data")
    return [path]


def dataset_attrs(names: str, dataset_dir: Path) -> list[DatasetAttr]:
    """Resolve comma-separated dataset names through ``dataset_dir/dataset_info.json``."""
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{info_path} not found", "pass --dataset-dir DIR holding dataset_info.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {info_path}: {exc}", "fix the JSON") from None
    if not isinstance(info, dict):
        raise InputError(f"{info_path} is not a JSON object", "map dataset names to entries")
    attrs = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        entry = info.get(name)
        if not isinstance(entry, dict):
            raise InputError(
                f"dataset {name!r} is not in {info_path}",
                f"known: {', '.join(sorted(info)) or '(none)'}",
            )
        if "file_name" not in entry:
            keys = [k for k in entry if k.endswith("_url") or k == "cloud_file_name"]
            raise InputError(
                f"dataset {name!r}: only local `file_name` entries are supported (has {keys})",
                "download the data and point file_name at it",
            )
        if entry.get("ranking"):
            raise InputError(f"dataset {name!r} is a ranking (preference) dataset", SFT_ONLY)
        formatting = entry.get("formatting", "alpaca")
        if formatting not in FORMATS[1:]:
            raise InputError(
                f"dataset {name!r}: unknown formatting {formatting!r}",
                "use alpaca, sharegpt or openai",
            )
        attrs.append(
            DatasetAttr(
                name=name,
                paths=files(Path(dataset_dir) / entry["file_name"]),
                formatting=formatting,
                columns=dict(entry.get("columns") or {}),
                tags=dict(entry.get("tags") or {}),
                num_samples=entry.get("num_samples"),
            )
        )
    return attrs


def select(
    data: list[str] | list[Path],
    dataset: str | None = None,
    dataset_dir: Path | str = "data",
    formatting: str = "auto",
    max_samples: int | None = None,
) -> list[DatasetAttr]:
    """The datasets of ``--data`` paths (in ``formatting``) and ``--dataset`` names.

    ``max_samples`` caps each dataset, as LlamaFactory's option does. Empty when neither
    is given (the caller says what it needed the data for).
    """
    if formatting not in FORMATS:
        raise InputError(f"unknown data format {formatting!r}", f"use one of {', '.join(FORMATS)}")
    attrs = [DatasetAttr(name=str(p), paths=files(Path(p)), formatting=formatting) for p in data]
    if dataset:
        attrs += dataset_attrs(dataset, Path(dataset_dir))
    if max_samples:
        for attr in attrs:
            attr.num_samples = min(attr.num_samples or max_samples, max_samples)
    return attrs


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``[(where, record)]`` from a JSON array or a JSONL file (``where`` names the record)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "pass a UTF-8 JSON or JSONL file") from None
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON: {exc}", "fix the file") from None
        return [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}: record {len(out)} (line {n})", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}: record {len(out)} (line {n}) is not valid JSON: {exc.msg}",
                "a JSON array, or one JSON object per line (JSONL)",
            ) from None
    return out


def conversations(attr: DatasetAttr) -> list[Conversation]:
    """All records of one dataset as conversations (an InputError names a bad record)."""
    out: list[Conversation] = []
    for path in attr.paths:
        records = read_records(path)
        if not records:
            raise InputError(f"{path} has no records", "add at least one example")
        formatting = attr.formatting
        for where, record in records:
            try:
                if formatting == "auto":
                    formatting = detect_format(record)
                out.append(conversation(record, formatting, attr.columns, attr.tags))
            except RecordError as exc:
                raise InputError(
                    f"{where}: {exc}", f"fix the record, or check the {formatting} columns/tags"
                ) from None
            if attr.num_samples and len(out) >= attr.num_samples:
                return out
    return out
