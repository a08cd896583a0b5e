"""The one base-model resolver: a local model directory, or a hub id pulled into the hub cache.

``merge``, ``ship`` and ``train`` all call :func:`resolve`, so a base named by a hub id goes
through the same hub selection (``DEPLOYKIT_HUB``, ModelScope), pickle exclusion and integrity
checks everywhere. An adapter often names its base by a path on the machine it was trained on:
a missing Hugging Face or ModelScope cache path is resolved to that hub id (and commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploykit.core.errors import InputError

HINT = "pass --base with the base model directory or its hub id (OWNER/NAME)"


@dataclass(frozen=True)
class Base:
    """A resolved base: where it is, and the hub id and commit when it came from a hub."""

    path: Path
    hub_id: str | None = None
    revision: str | None = None
    source: str | None = None

    @property
    def name_or_path(self) -> str:
        """What an adapter should record as ``base_model_name_or_path``."""
        return self.hub_id or str(self.path)


def resolve(
    ref: str | Path | None,
    *,
    relative_to: Path | None = None,
    revision: str | None = None,
    source: str = "auto",
    why: str = "",
) -> Base:
    """``ref`` as a local model directory.

    ``ref`` is a directory (relative paths are also tried against ``relative_to``, the adapter
    that names its base), or a hub id / stale hub-cache path, pulled through ``hub.pull``
    (the cache first, then the hub). ``why`` says where ``ref`` came from, for messages.
    """
    if not ref:
        raise InputError(f"no base model given{why}", HINT)
    text = str(ref)
    path = Path(text).expanduser()
    beside = Path(relative_to) / text if relative_to is not None else None
    if beside is not None and not path.is_absolute() and not path.exists() and beside.exists():
        path = beside
    if (path / "config.json").is_file():
        return Base(path.resolve())
    if path.exists():
        raise InputError(f"base model {text}{why} is not a model directory (no config.json)", HINT)
    from deploykit.hub import pull as hub

    found = hub.hub_ref(text)
    if found is None:
        raise InputError(f"base model {text}{why} does not exist here and is not a hub id", HINT)
    if found.source and source == "auto" and hub.configured_source() is None:
        source = found.source
    record = hub.pull(found.id, source=source, revision=revision or found.revision)
    local = Path(record["path"])
    if not (local / "config.json").is_file():
        raise InputError(f"{found.id} has no config.json", HINT)
    return Base(local, found.id, record.get("commit") or record.get("revision"), record["source"])
