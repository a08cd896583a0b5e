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
import glob
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


def owned_files(out: Path) -> set[str]:
    """The files (relative paths) of ``out`` that deploykit's own manifest there lists."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return set()
    foreign = InputError(
        f"{path} was not written by deploykit (or lists files outside {out})",
        "choose another --out, or move that folder's files away",
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise foreign from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("deploykit"), str):
        raise foreign
    if "files" in manifest:
        names = [f.get("path") if isinstance(f, dict) else None for f in manifest["files"]]
    else:  # a bundle from before manifests listed their files
        names = []
        for o in manifest.get("outputs") or []:
            if isinstance(o, dict) and o.get("path") and o.get("modelfile"):
                gguf = Path(o["path"]).name
                names += [gguf, f"{gguf}.sha256", Path(o["modelfile"]).name]
        names.append("README.md")
    if not all(isinstance(n, str) and _inside(n) for n in names):
        raise foreign
    return set(names)


def expected_digests(folder: Path) -> dict[Path, str]:
    """The sha256 deploykit's manifest in ``folder`` records for each bundle file ({} when the
    folder is not a deploykit bundle): what ``create`` re-checks before it uploads."""
    try:
        owned_files(folder)
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (InputError, OSError, ValueError):
        return {}
    rows = manifest.get("files")
    if rows is None:  # an older bundle: its outputs have their sha256
        rows = [
            {"path": Path(o["path"]).name, "sha256": o.get("sha256")} for o in manifest["outputs"]
        ]
    return {Path(folder) / r["path"]: r["sha256"] for r in rows if isinstance(r.get("sha256"), str)}


def _inside(name: str) -> bool:
    """A plain relative file name with no way out of its folder."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\\" not in name


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
) -> dict[str, Any]:
    """Write the bundle into ``out`` (atomically: all or nothing); returns the manifest."""
    from deploykit.ollama import modelfile
    from deploykit.ollama.render import render

    previous = owned_files(out)
    _remove_stale_staging(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        outputs = []
        for i, (qtype, gguf) in enumerate(quant_files.items()):
            dest = staging / gguf.name
            try:
                os.link(gguf, dest)  # the cache never rewrites a file in place
            except OSError:
                shutil.copy2(gguf, dest)
            sha = digest(gguf)
            atomic_write_text(staging / f"{gguf.name}.sha256", f"{sha}  {gguf.name}\n")
            rendered = render(
                dest,
                model_dir=model_dir,
                family=opts.family,
                system=opts.system,
                params=params,
                out=staging / "Modelfile",
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
        _publish(staging, out, names, previous, force=opts.force)
        atomic_write_json(out / MANIFEST, manifest)  # last: the bundle is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _remove_stale_staging(out: Path) -> None:
    """Staging folders an earlier, killed run of this bundle left (by their names, ours)."""
    for p in Path(out).parent.glob(f".{glob.escape(Path(out).name)}.*.partial"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _publish(staging: Path, out: Path, names: list[str], previous: set[str], force: bool) -> None:
    """Move the new files into ``out`` (each rename atomic) and delete the files of the previous
    bundle that this one no longer has. A file deploykit did not write is replaced only with
    ``force``; everything else in ``out`` is left alone."""
    clash = [n for n in names if (out / n).exists() and n not in previous]
    if clash and not force:
        raise InputError(
            f"{out / clash[0]} exists and was not written by deploykit",
            "move it away, choose another --out, or pass --force to replace it",
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the bundle is incomplete until it is rewritten
    for n in names:
        os.replace(staging / n, out / n)
    for n in sorted(previous - set(names)):
        old = out / n
        if old.is_file() or old.is_symlink():
            old.unlink()


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
            tag, Path(o["modelfile"]), host, lambda s: None, expected=expected_digests(out)
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
    failed = m.get("shipped_despite_failures") or {}
    warning = "".join(
        f"\n**{t} was shipped although it failed verification** ({', '.join(checks)};"
        " `--allow-failed`).\n"
        for t, checks in failed.items()
    )
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
