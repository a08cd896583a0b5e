"""The release bundle ``ship`` writes, and its deployment to Ollama.

A bundle is a folder: the GGUFs (each with a ``.sha256``), a ``Modelfile`` per quant (FROM is
the bundle's own GGUF), ``manifest.json`` (what produced it: versions, inputs with sha256,
options, outputs, verification and health reports) and a ``README.md`` model card.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from deploykit.pipeline.options import ShipOptions

MANIFEST = "manifest.json"


def check_destination(out: Path) -> None:
    """``out`` may be new, empty, or a bundle deploykit wrote before."""
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a deploykit bundle", "choose another --out")


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

    with atomic_dir(out, replace=True) as tmp:
        outputs = []
        for i, (qtype, gguf) in enumerate(quant_files.items()):
            dest = tmp / gguf.name
            try:
                os.link(gguf, dest)
            except OSError:
                shutil.copy2(gguf, dest)
            sha = digest(gguf)
            atomic_write_text(tmp / f"{gguf.name}.sha256", f"{sha}  {gguf.name}\n")
            rendered = render(
                dest,
                model_dir=model_dir,
                family=opts.family,
                system=opts.system,
                params=params,
                out=tmp / "Modelfile",
            )
            for warning in rendered.warnings:
                ui.warn(warning)
            mf_name = "Modelfile" if i == 0 else f"Modelfile.{qtype.lower()}"
            modelfile.write(tmp / mf_name, rendered.text, force=True)
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
            "steps": steps,
        }
        atomic_write_text(tmp / "README.md", model_card(manifest))
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def _options(opts: ShipOptions, params: list[tuple[str, Any]]) -> dict[str, Any]:
    """The options as the manifest records them: the quant list and the typed parameters."""
    options = dataclasses.asdict(opts)
    options["quants"] = opts.quants()
    options["params"] = [list(p) for p in params]
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
        ollama_deploy.create(tag, Path(o["modelfile"]), host, lambda s: None)
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
    return f"""# {m["name"]}

Built by deploykit {m["deploykit"]} with llama.cpp {m["llama_cpp"]["commit"]}.

| quant | file | bytes | sha256 |
|---|---|---|---|
{rows}

Deploy on any machine with Ollama >= 0.5.5:

    deploykit create {m["name"]} -f Modelfile

`manifest.json` records the inputs (with sha256), every option, the outputs, and the
verification reports.
"""
