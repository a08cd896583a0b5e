"""``push``: publish a verified release bundle to Hugging Face, ModelScope or an Ollama
registry.

Fail closed: the bundle is checked first (its manifest lists every file with a size and
sha256, each file is hashed again; a failed verification or health check is refused, a quant
shipped with ``--allow-failed`` needs push's own ``--allow-failed``), then every target is
checked, and only then is anything sent. ``dry_run`` stops after the checks: no token, no
network. What is published is the bundle's files, a model card (``README.md``), the Hub's
Ollama files and a copy of the manifest without local paths, server URLs or tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import (
    DeploykitError,
    HealthCheckError,
    InputError,
    PublishError,
    VerificationError,
)
from deploykit.core.fsutil import sha256_file

KINDS = ("hf", "modelscope", "ollama")
TARGET_HELP = "hf:OWNER/NAME, modelscope:OWNER/NAME or ollama:NAMESPACE/NAME[:TAG]"
_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


@dataclass(frozen=True)
class Target:
    """Where to publish: ``kind`` (hf, modelscope, ollama), ``name`` (OWNER/NAME or
    NAMESPACE/NAME) and, for Ollama, an optional ``tag``."""

    kind: str
    name: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f":{self.tag}" if self.tag else "")


def parse_target(spec: str) -> Target:
    """``--to`` checked: a known kind and a name that hub or registry would accept."""
    kind, sep, name = str(spec).partition(":")
    if not sep or kind not in KINDS:
        raise InputError(f"unknown push target {spec!r}", f"use {TARGET_HELP}")
    if kind == "ollama":
        from deploykit.ollama.names import split_tag, validate_name

        validate_name(name)
        rest, tag = split_tag(name)
        if rest.count("/") != 1:
            raise InputError(
                f"push target {spec!r} needs a namespace",
                "use ollama:NAMESPACE/NAME[:TAG] (your ollama.com user name)",
            )
        return Target(kind, rest, tag)
    parts = name.split("/")
    if len(parts) != 2 or not all(_HUB_PART.fullmatch(p) for p in parts):
        raise InputError(
            f"push target {spec!r}: {name!r} is not OWNER/NAME",
            "letters, digits, '-', '_', '.' (at most 96 each), e.g. hf:me/my-model-GGUF",
        )
    if kind == "hf":
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError as exc:
            raise InputError(
                f"push target {spec!r}: {str(exc).splitlines()[0]}", "e.g. hf:me/my-model-GGUF"
            ) from None
    return Target(kind, name)


# --- the bundle -------------------------------------------------------------------------------


@dataclass
class Release:
    """A checked bundle: its manifest, its files (name -> size and sha256, each re-hashed) and
    facts the card needs."""

    folder: Path
    manifest: dict[str, Any]
    files: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    def modelfile(self, output: dict[str, Any]) -> Path:
        return self.folder / Path(output["modelfile"]).name

    def checked_text(self, path: Path) -> str:
        """A bundle file's text, read once and checked against the manifest (what is read is
        what was checked: a file edited since is refused)."""
        data = Path(path).read_bytes()
        row = self.files.get(Path(path).name) or {}
        if hashlib.sha256(data).hexdigest() != row.get("sha256"):
            raise PublishError(
                f"{path} changed since the manifest was written",
                "ship the bundle again; nothing was uploaded",
            )
        return data.decode("utf-8")


def load(folder: Path, *, allow_failed: bool = False) -> Release:
    """The bundle in ``folder``, checked against its manifest (see the module doc)."""
    from deploykit.pipeline.bundle import MANIFEST, owned_files

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise InputError(
            f"{folder} is not a release bundle (no {MANIFEST})",
            "give the folder `deploykit ship` wrote (--out, default dist/NAME)",
        )
    rows = owned_files(folder)  # refuses a manifest that is not deploykit's
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    stale = "ship it again with this deploykit: its manifest then lists every file"
    if manifest.get("incomplete"):
        raise InputError(f"{folder}: writing the bundle was interrupted", stale)
    if "files" not in manifest or any(r is None for r in rows.values()):
        raise InputError(
            f"{folder}: the manifest does not record every file's size and sha256", stale
        )
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(manifest.get("name"), str):
        raise InputError(f"{folder}: the manifest lists no outputs", stale)
    for o in outputs:
        typed = isinstance(o, dict) and isinstance(o.get("type"), str) and len(o["type"]) <= 32
        if not typed or not isinstance(o.get("sha256"), str) or type(o.get("size")) is not int:
            raise InputError(f"{folder}: the manifest has a malformed output entry", stale)
        for key in ("path", "modelfile"):
            if Path(str(o.get(key, ""))).name not in rows:
                raise InputError(f"{folder}: output {o.get(key)!r} is not a bundle file", stale)
    release = Release(folder, manifest, rows)
    _check_reports(release, allow_failed)
    for name, row in sorted(rows.items()):  # every file, before anything is sent
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise PublishError(
                f"{path} is missing (the manifest lists it)", "ship the bundle again"
            )
        if path.stat().st_size != row["size"] or sha256_file(path) != row["sha256"]:
            raise PublishError(
                f"{path} changed since the manifest was written",
                "ship the bundle again; nothing was uploaded",
            )
    return release


def _check_reports(release: Release, allow_failed: bool) -> None:
    m = release.manifest
    shipped = m.get("shipped_despite_failures") or {}
    for qtype, report in (m.get("verification") or {}).items():
        if isinstance(report, dict) and report.get("ok") is False and qtype not in shipped:
            raise VerificationError(
                f"{release.folder}: {qtype} failed verification", "ship a bundle that passes"
            )
    if shipped and not allow_failed:
        names = ", ".join(f"{t} ({', '.join(c)})" for t, c in shipped.items())
        raise VerificationError(
            f"{release.folder} ships {names} although it failed verification",
            "pass --allow-failed to publish it anyway (the card says so)",
        )
    deployed = m.get("ollama") or {}
    failed = [t for t, h in (deployed.get("health") or {}).items() if not h.get("ok")]
    if failed:
        raise HealthCheckError(
            f"{release.folder}: the health check failed for {', '.join(failed)}",
            "fix the model and ship it again",
        )
    if deployed.get("target") != "ollama":
        release.notes.append("not health-checked on an Ollama server (the card says so)")


# --- what is published ------------------------------------------------------------------------


def ollama_files(release: Release) -> dict[str, str]:
    """The Hub's ``template``/``system``/``params`` files, from the bundle's Modelfiles (one
    set for the whole repo, so every quant's Modelfile must agree)."""
    from deploykit.publish import card

    found = None
    for o in release.outputs:
        path = release.modelfile(o)
        files = card.ollama_files(release.checked_text(path), str(path))
        if found is not None and files != found:
            raise InputError(
                f"{release.folder}: the quants' Modelfiles differ in TEMPLATE, SYSTEM or "
                "PARAMETER, but a Hub repo has one template/system/params for all of them",
                "push each quant to a repo of its own",
            )
        found = files
    return found or {}


def repo_files(
    release: Release,
    target: Target,
    *,
    base_model: str | None,
    license: str | None,
    split: bool,
    scratch: list[Path] | None = None,
) -> tuple[list, dict[str, Any]]:
    """The uploads for a hub repo (every bundle file but its README, the card, the Hub's
    Ollama files, the public manifest) and a summary; ``split``: split GGUFs over the
    per-file limit now (else only say they would be) into a temporary folder added to
    ``scratch`` (the caller removes it after the upload)."""
    from deploykit.publish import card, hf

    limit = hf.max_file_bytes()
    uploads, parts = [], {}
    work = None
    for name, row in sorted(release.files.items()):
        if name == "README.md":
            continue
        path = release.folder / name
        if row["size"] > limit and name.endswith(".gguf"):
            if not split:
                parts[name] = [f"{Path(name).stem}-0000N-of-0000M.gguf"]
                continue
            if work is None:
                work = Path(tempfile.mkdtemp(prefix="deploykit-split-"))
                if scratch is not None:
                    scratch.append(work)
            pieces = hf.split(path, limit, work)
            if sha256_file(path) != row["sha256"]:  # the parts are of the checked bytes
                raise PublishError(
                    f"{path} changed since the manifest was written",
                    "ship the bundle again; nothing was uploaded",
                )
            parts[name] = [p.name for p in pieces]
            uploads += [hf.Upload(p.name, p, p.stat().st_size, sha256_file(p)) for p in pieces]
            continue
        if row["size"] <= hf.IN_MEMORY_BYTES:  # read once, checked, and sent as these bytes
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                raise PublishError(
                    f"{path} changed since the manifest was written",
                    "ship the bundle again; nothing was uploaded",
                )
            uploads.append(hf.Upload(name, data, row["size"], row["sha256"]))
            continue
        uploads.append(hf.Upload(name, path, row["size"], row["sha256"]))
    generated = ollama_files(release)
    public = card.public(release.manifest)
    public["files"] = [{"path": u.path, "size": u.size, "sha256": u.sha256} for u in uploads]
    if parts:
        public["split"] = parts
    families = {o.get("family") for o in release.outputs if o.get("family")}
    text = card.render(
        public,
        repo=target.name,
        base_model=base_model,
        license=license,
        family=next(iter(families)) if len(families) == 1 else None,
        parts=parts,
        ollama=generated,
        hub=target.kind,
    )
    generated = {
        "README.md": text,
        "manifest.json": json.dumps(public, indent=2, ensure_ascii=False) + "\n",
        **generated,
    }
    for name, content in generated.items():
        data = content.encode("utf-8")
        uploads.append(hf.Upload(name, data, len(data), hashlib.sha256(data).hexdigest()))
    return uploads, {"card": text, "split": parts}


@dataclass
class PushOptions:
    """What ``push`` takes besides the bundle and its targets."""

    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    dry_run: bool = False
    base_model: str | None = None
    license: str | None = None
    force: bool = False
    allow_failed: bool = False
    host: str | None = None
    allow_gguf_template: bool = False


def _identity(release: Release, opts: PushOptions) -> tuple[str | None, str | None]:
    from deploykit.publish import card

    facts = card.base_facts(release.manifest)
    base = opts.base_model or facts.get("hub_id")
    if opts.base_model:
        parse_target(f"hf:{opts.base_model}")  # the same rules as a repo id
    if opts.license is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", opts.license):
        raise InputError(f"--license {opts.license!r} is not a license id", "e.g. apache-2.0")
    if base is None:
        ui.warn("the base model is not known: the card has no base_model (pass --base-model ID)")
    return base, opts.license or facts.get("license")


def push(folder: Path, targets: list[str], opts: PushOptions) -> dict[str, Any]:
    """Check the bundle and the targets, then publish to each (or, ``dry_run``, say what
    would be published); returns the result object ``--json`` prints. A file that cannot be
    read or written on this machine is one line (bad input), not an internal error."""
    scratch: list[Path] = []
    try:
        return _push(folder, targets, opts, scratch)
    except OSError as exc:
        where = exc.filename or folder
        raise InputError(
            f"cannot use {where}: {exc.strerror or exc}", "check the bundle's files and free space"
        ) from None
    finally:
        for folder_ in scratch:
            shutil.rmtree(folder_, ignore_errors=True)


def _push(
    folder: Path, targets: list[str], opts: PushOptions, scratch: list[Path]
) -> dict[str, Any]:
    if not targets:
        raise InputError("no push target", f"pass --to {TARGET_HELP}")
    parsed = [parse_target(t) for t in targets]
    if opts.revision is not None and (
        not _BRANCH.fullmatch(opts.revision) or ".." in opts.revision
    ):
        raise InputError(
            f"--revision {opts.revision!r} is not a branch name",
            "letters, digits, '-', '_', '.' (at most 96), e.g. v1",
        )
    release = load(folder, allow_failed=opts.allow_failed)
    for note in release.notes:
        ui.warn(f"{folder}: {note}")
    base, license = _identity(release, opts)
    message = opts.commit_message or (
        f"deploykit {__version__}: {release.name} ({', '.join(o['type'] for o in release.outputs)})"
    )
    if len(message) > 500 or not message.strip():
        raise InputError("--commit-message must be 1 to 500 characters", "shorten it")
    from deploykit.publish import hf, modelscope, registry

    # every target is prepared (and, unless a dry run, its token found) before any is sent to
    plans: list[tuple[Target, Any]] = []
    for t in parsed:
        if t.kind == "ollama":
            plans.append((t, registry.plan(release, t)))
            continue
        if not opts.dry_run:
            (hf if t.kind == "hf" else modelscope).token()
        plans.append(
            (
                t,
                repo_files(
                    release,
                    t,
                    base_model=base,
                    license=license,
                    split=not opts.dry_run,
                    scratch=scratch,
                ),
            )
        )
    results: list[dict[str, Any]] = []
    try:
        for t, plan in plans:
            results.append(_publish(release, t, plan, opts, base, message))
    except DeploykitError as exc:
        if not results:
            raise
        done = ", ".join(r["target"] for r in results)
        raise type(exc)(f"{exc.message} (already published: {done})", exc.hint) from None
    return {"bundle": release.name, "dry_run": opts.dry_run, "targets": results}


def _publish(release, t: Target, plan, opts: PushOptions, base, message: str) -> dict[str, Any]:
    """One target's push (or dry run); the result object for ``--json``."""
    from deploykit.publish import hf, modelscope, registry

    if t.kind == "ollama":
        if opts.dry_run:
            return {"target": str(t), "dry_run": True, "models": plan}
        return registry.push(
            release,
            t,
            host=opts.host,
            allow_gguf_template=opts.allow_gguf_template,
            force=opts.force,
        )
    uploads, summary = plan
    files = [{"path": u.path, "size": u.size, "sha256": u.sha256} for u in uploads]
    if opts.dry_run:
        return {"target": str(t), "dry_run": True, "files": files, **summary}
    result = (hf if t.kind == "hf" else modelscope).push(
        t.name,
        uploads,
        base_model=base,
        private=opts.private,
        revision=opts.revision,
        message=message,
        force=opts.force,
    )
    return {**result, "files": files}
