"""The release bundle ``ship`` writes, and its deployment to Ollama.

A bundle is a folder: the GGUFs (each with a ``.sha256``), a ``Modelfile`` per quant (FROM is
the bundle's own GGUF), ``manifest.json`` (what produced it: versions, inputs with sha256,
options, outputs, verification and health reports, and ``files``: every file of the bundle with
its path relative to the bundle, size and sha256) and a ``README.md`` model card.

deploykit replaces or deletes only the files a previous manifest of its own lists: a user's
other files in the folder stay, a folder with a manifest deploykit did not write is refused,
and an input (or a folder above one) is never a bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_write_json, atomic_write_text
from deploykit.pipeline.options import ShipOptions

MANIFEST = "manifest.json"
#: What a bundle's staging folders are called (inside the bundle): ``<prefix><pid>-<random>``.
STAGING = ".deploykit-staging-"


def check_destination(out: Path, inputs: list[Path]) -> None:
    """``out`` may be new, a folder, or a bundle deploykit wrote before; never an input, a
    folder inside one or a folder above one. Raises InputError before any work starts."""
    out = Path(out).resolve()
    for path in inputs:
        path = Path(path).resolve()
        if out == path or out in path.parents or path in out.parents:
            raise InputError(
                f"--out {out} is an input or holds one ({path})",
                "write the bundle to a folder of its own, e.g. dist/NAME",
            )
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", "give --out a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the bundle to {out} (permission denied)", "pass --out elsewhere"
        )
    owned_files(out)  # refuses a manifest that is not deploykit's


def owned_files(out: Path) -> dict[str, dict[str, Any] | None]:
    """The files of ``out`` that deploykit's own manifest there lists: name -> its row (size
    and sha256), or None when the manifest does not record its content (an older bundle, or
    one whose publishing was interrupted). InputError when the manifest is not deploykit's."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {}
    foreign = InputError(
        f"{path} was not written by deploykit (or lists files outside {out})",
        "choose another --out, or move that folder's files away",
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise foreign from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("deploykit"), str):
        raise foreign
    rows: dict[str, dict[str, Any] | None] = {}
    if "files" in manifest:
        files = manifest["files"]
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise foreign
        for f in files:
            name, size, sha = f.get("path"), f.get("size"), f.get("sha256")
            if not _plain_name(name):
                raise foreign
            known = isinstance(size, int) and isinstance(sha, str)
            rows[name] = {"size": size, "sha256": sha} if known else None
    else:  # a bundle from before manifests listed their files
        outputs = manifest.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise foreign
        for o in outputs:
            gguf, mf = Path(str(o.get("path", ""))).name, Path(str(o.get("modelfile", ""))).name
            if not (_plain_name(gguf) and _plain_name(mf)):
                raise foreign
            sha = o.get("sha256")
            rows[gguf] = {"size": o.get("size"), "sha256": sha} if isinstance(sha, str) else None
            rows[f"{gguf}.sha256"] = rows[mf] = None
        rows["README.md"] = None
    return rows


def expected_digests(folder: Path) -> dict[Path, str | None]:
    """The sha256 deploykit's manifest in ``folder`` records for each bundle file ({} when the
    folder is not a deploykit bundle; None for a file whose content it does not record): what
    ``create`` re-checks before it uploads."""
    try:
        rows = owned_files(folder)
        incomplete = bool(json.loads((Path(folder) / MANIFEST).read_text()).get("incomplete"))
    except (InputError, OSError, ValueError):
        return {}
    if incomplete:  # publishing was interrupted: no file's content is on record
        return dict.fromkeys((Path(folder) / n for n in rows), None)
    return {Path(folder) / n: r["sha256"] for n, r in rows.items() if r is not None}


def _plain_name(name: Any) -> bool:
    """A file name of the bundle folder itself: no folders, no way out of it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def versions() -> dict[str, str]:
    """The installed versions of the packages deploykit and the converter run on."""
    from deploykit.pipeline.doctor import packages

    out = {}
    for dist in packages():
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def write(
    out: Path,
    *,
    name: str,
    params: list[tuple[str, Any]],
    failed_allowed: dict[str, list[str]],
    quant_files: dict[str, Path],
    model_dir: Path,
    opts: ShipOptions,
    tree,
    inputs: dict[str, Any],
    reports: dict[str, dict],
    steps: list[dict],
    digest,
    context: int | None = None,
) -> dict[str, Any]:
    """Write the bundle into ``out`` (atomically: all or nothing); returns the manifest.
    ``context``: the training context, num_ctx of the Modelfiles."""
    from deploykit.ollama import modelfile
    from deploykit.ollama.render import render

    previous = owned_files(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    # staged inside the bundle folder: the same file system, so every rename is atomic
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=out))
    try:
        outputs = []
        for i, (qtype, gguf) in enumerate(quant_files.items()):
            dest = staging / gguf.name
            # a copy, not a hard link: damage to a cache entry must not reach a shipped bundle
            sha = digest.copy(gguf, dest)
            atomic_write_text(staging / f"{gguf.name}.sha256", f"{sha}  {gguf.name}\n")
            rendered = render(
                dest,
                model_dir=model_dir,
                family=opts.family,
                system=opts.system,
                params=params,
                out=staging / "Modelfile",
                context=context,
            )
            for warning in rendered.warnings:
                ui.warn(warning)
            mf_name = "Modelfile" if i == 0 else f"Modelfile.{qtype.lower()}"
            modelfile.write(staging / mf_name, rendered.text, force=True)
            outputs.append(
                {
                    "type": qtype,
                    "path": str(out / gguf.name),
                    "size": dest.stat().st_size,
                    "sha256": sha,
                    "modelfile": str(out / mf_name),
                    "family": rendered.family,
                }
            )
        manifest = {
            "deploykit": __version__,
            "name": name,
            "llama_cpp": {"release": tree.release, "commit": tree.commit, "origin": tree.origin},
            "versions": versions(),
            "inputs": inputs,
            "options": _options(opts, params),
            "outputs": outputs,
            "verification": reports,
            "shipped_despite_failures": failed_allowed,
            "steps": steps,
        }
        atomic_write_text(staging / "README.md", model_card(manifest))
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest["files"] = [
            {"path": n, "size": (staging / n).stat().st_size, "sha256": digest(staging / n)}
            for n in names
        ]
        _publish(staging, out, manifest, previous, digest)
        atomic_write_json(out / MANIFEST, manifest)  # last: the bundle is complete
        for name in names:  # renamed into place: remember what we know of them
            digest.remember(out / name, rows_by_name(manifest)[name]["sha256"], out / name)
        for gguf in quant_files.values():
            digest.remember(gguf, digest_of(manifest, gguf.name), gguf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()  # nothing was published: leave no empty folder behind
    return manifest


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of this bundle that a killed run left: ours by name, and only those
    whose process is gone (a ship running beside this one keeps its own)."""
    for p in Path(out).glob(f"{STAGING}*"):
        pid = p.name[len(STAGING) :].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != 0


def rows_by_name(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in manifest["files"]}


def digest_of(manifest: dict[str, Any], name: str) -> str:
    return rows_by_name(manifest)[name]["sha256"]


def _still_ours(path: Path, row: dict[str, Any] | None, digest) -> bool:
    """Whether ``path`` still holds what deploykit wrote there (or, for a file whose content
    the manifest does not record, only that the manifest lists it)."""
    if not (path.is_file() and not path.is_symlink()):
        return False
    if row is None:
        return True
    return path.stat().st_size == row["size"] and digest(path) == row["sha256"]


def _publish(staging: Path, out: Path, manifest: dict, previous: dict, digest) -> None:
    """Move the new files into ``out`` and delete the previous bundle's files this one no
    longer has. A file is replaced or deleted only when deploykit wrote it and it is unchanged
    since (or it already holds exactly the new content); anything else in ``out`` stays. An
    interim manifest lists old and new names first, so an interrupted publish leaves a bundle
    the next run still owns (and ``create`` refuses: its contents are not recorded)."""
    new = rows_by_name(manifest)
    for n, row in new.items():
        path = out / n
        if not (path.exists() or path.is_symlink()):
            continue
        ours = n in previous and _still_ours(path, previous[n], digest)
        if not (ours or _still_ours(path, row, digest)):  # ours, or already the new bytes
            raise InputError(
                f"{path} exists and is not what deploykit wrote there",
                "move it away, or choose another --out",
            )
    gone = [n for n in previous if n not in new and _still_ours(out / n, previous[n], digest)]
    interim = {"deploykit": manifest["deploykit"], "incomplete": True}
    interim["files"] = [{"path": n} for n in sorted({*previous, *new})]
    atomic_write_json(out / MANIFEST, interim)
    for n in sorted(new):
        os.replace(staging / n, out / n)
    for n in gone:
        (out / n).unlink()


def _options(opts: ShipOptions, params: list[tuple[str, Any]]) -> dict[str, Any]:
    """The options as the manifest records them: the quant list and the typed parameters."""
    from deploykit.ollama.names import resolve_host

    options = dataclasses.asdict(opts)
    options["quants"] = opts.quants()
    options["params"] = [list(p) for p in params]
    options["host"] = str(resolve_host(opts.host)) if opts.host else None  # password redacted
    del options["quant"]
    return json.loads(json.dumps(options, default=str))


def save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(out / MANIFEST, manifest)


def deploy(opts: ShipOptions, name: str, out: Path, outputs: list[dict], model_dir: Path) -> dict:
    """Create ``NAME:<type>`` for each quant and ``NAME`` (the first), health-check each."""
    from deploykit.ollama import deploy as ollama_deploy
    from deploykit.ollama import health
    from deploykit.ollama.client import Client
    from deploykit.ollama.names import resolve_host

    host = resolve_host(opts.host)
    finish = f"deploykit create {name} -f {out / 'Modelfile'}"
    if opts.target == "none":
        ui.info(f"the bundle is ready in {out}; deploy it with: {finish}")
        return {"target": "none"}
    if opts.target == "auto":
        try:
            with Client(host, timeout=5) as c:
                c.version()
        except Exception:  # noqa: BLE001 - any failure means "no server here"
            ui.info(
                f"no Ollama server answers at {host}: the bundle is ready in {out}; "
                f"finish with: {finish}"
            )
            return {"target": "none", "reason": f"no server at {host}"}
    created, reports = [], {}
    for o in outputs:
        tag = f"{name}:{o['type'].lower()}"
        ollama_deploy.create(
            tag,
            Path(o["modelfile"]),
            host,
            lambda s: None,
            expected=expected_digests(out),
            allow_gguf_template=opts.allow_gguf_template,
        )
        created.append(tag)
        reports[tag] = health.check(tag, host, probes=opts.probes, reference=model_dir).to_dict()
    with Client(host) as c:
        c.copy(created[0], name)
    created.append(f"{name}:latest")
    return {"target": "ollama", "host": host, "created": created, "health": reports}


def model_card(m: dict) -> str:
    rows = "\n".join(
        f"| {o['type']} | `{Path(o['path']).name}` | {o['size']:,} | `{o['sha256'][:16]}…` |"
        for o in m["outputs"]
    )
    verification = (m.get("verification") or {}).items()  # in ship order: f16 first
    unverified = [t.upper() for t, r in verification if r.get("verified") is False]
    failed = m.get("shipped_despite_failures") or {}
    warning = "".join(
        f"\n**{t} was shipped although it failed verification** ({', '.join(checks)};"
        " `--allow-failed`).\n"
        for t, checks in failed.items()
    )
    if unverified:
        warning += f"\n**Not verified** (`--verify none`): {', '.join(unverified)}.\n"
    return f"""# {m["name"]}

Built by deploykit {m["deploykit"]} with llama.cpp {m["llama_cpp"]["commit"]}.
{warning}
| quant | file | bytes | sha256 |
|---|---|---|---|
{rows}

Deploy on any machine with Ollama >= 0.5.5:

    deploykit create {m["name"]} -f Modelfile

`manifest.json` records the inputs (with sha256), every option, the outputs, and the
verification reports.
"""
