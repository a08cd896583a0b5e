"""``ship``: adapter → merged → GGUF → quants → Modelfile → Ollama, resumable, with a bundle.

Orchestration only: every step is a call into its own module. Each step's output lives in
``<work>/<step>-<key>/``, keyed by a hash of its inputs and options, and counts as finished
only once its marker file is written (last, after a rename), so a killed run never leaves a
result that looks finished and a re-run reuses what is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import HealthCheckError, InputError, VerificationError
from deploykit.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from deploykit.core.paths import cache_dir
from deploykit.llamacpp import tree as llamacpp
from deploykit.merge import adapters

MARKER = ".deploykit-step.json"
DTYPE_FOR_OUTTYPE = {"f16": "float16", "bf16": "bfloat16"}


@dataclass
class ShipOptions:
    """Everything ``ship`` takes; also what the manifest records as "options"."""

    adapters: list[Path] = field(default_factory=list)
    model: Path | None = None
    base: str | None = None
    quants: list[str] = field(default_factory=lambda: ["q4_k_m"])
    name: str | None = None
    out: Path | None = None
    target: str = "auto"  # ollama | none | auto
    family: str = "auto"
    system: str | None = None
    params: list[tuple[str, Any]] = field(default_factory=list)
    outtype: str = "f16"
    calibration: Path | None = None
    quality_gate: float | None = None  # max KL divergence of a quant vs the f16
    verify: str = "light"  # light | full | none
    probes: Path | None = None
    host: str | None = None
    work_dir: Path | None = None
    force: bool = False


# --- the step cache -----------------------------------------------------------------------


class Steps:
    """Runs steps in ``work``, reusing finished ones; records timings for the manifest."""

    def __init__(self, work: Path, force: bool, total: int) -> None:
        self.work = work
        self.force = force
        self.total = total
        self.n = 0
        self.log: list[dict] = []
        work.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, inputs: dict, fn: Callable[[Path], dict]) -> tuple[Path, dict]:
        """``fn(tmp_dir) -> result`` unless a finished step with the same inputs exists."""
        self.n += 1
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        final = self.work / f"{name}-{key[:16]}"
        marker = final / MARKER
        if marker.is_file() and not self.force:
            result = json.loads(marker.read_text())["result"]
            ui.info(f"[{self.n}/{self.total}] {name}: reusing the finished step ({final.name})")
            self.log.append({"step": name, "dir": str(final), "reused": True, "seconds": 0.0})
            return final, result
        ui.info(f"[{self.n}/{self.total}] {name} ...")
        started = time.monotonic()
        with atomic_dir(final, replace=True) as tmp:
            result = fn(tmp)
            atomic_write_json(tmp / MARKER, {"inputs": inputs, "result": result})
        seconds = round(time.monotonic() - started, 2)
        self.log.append({"step": name, "dir": str(final), "reused": False, "seconds": seconds})
        return final, result


def _hashes(work: Path):
    """sha256 of files, remembered by (path, size, mtime) so big bases are hashed once."""
    memo_path = work / "sha256-memo.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}

    def digest(path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(path)
            atomic_write_json(memo_path, memo)
        return memo[key]

    return digest


def _files(directory: Path, digest) -> list[dict]:
    return [
        {"path": str(p), "size": p.stat().st_size, "sha256": digest(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]


def default_name(opts: ShipOptions) -> str:
    src = opts.model or opts.adapters[0]
    src = Path(src).resolve()
    stem = src.name
    if stem.lower() in ("adapter", "lora", "output", "out", "merged", "model") or stem.startswith(
        "checkpoint"
    ):
        stem = f"{src.parent.name}-{stem}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.").lower() or "model"


def _versions() -> dict[str, str]:
    from deploykit.pipeline.doctor import PACKAGES

    out = {}
    for dist in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


# --- ship ---------------------------------------------------------------------------------


def ship(opts: ShipOptions) -> dict:
    """Run the pipeline; returns the manifest (also written to the bundle)."""
    from deploykit.gguf import convert, quantize, verify
    from deploykit.merge import merge
    from deploykit.ollama import modelfile

    if bool(opts.adapters) == bool(opts.model):
        raise InputError(
            "give --adapter (one or more) or --model, not both or neither",
            "--adapter DIR for a PEFT adapter, --model DIR for a merged model",
        )
    if opts.outtype not in DTYPE_FOR_OUTTYPE:
        raise InputError(f"unknown --outtype {opts.outtype}", "use f16 or bf16")
    if opts.verify not in ("light", "full", "none"):
        raise InputError(f"unknown --verify {opts.verify}", "use light, full or none")
    if opts.target not in ("auto", "ollama", "none"):
        raise InputError(f"unknown --target {opts.target}", "use auto, ollama or none")
    tree = llamacpp.locate_tree()
    quants = quantize.parse_types(",".join(opts.quants), tree)
    name = opts.name or default_name(opts)
    base_name, _, tag = name.partition(":")
    from deploykit.ollama.client import validate_name

    validate_name(base_name)
    out = Path(opts.out or Path("dist") / base_name).resolve()
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a deploykit bundle", "choose another --out")
    work = Path(opts.work_dir or cache_dir() / "work").resolve()
    digest = _hashes(work)
    steps = Steps(work, opts.force, 3 + 2 * len(quants) + 2)
    started = time.monotonic()

    # inputs
    ads = [adapters.load(Path(a)) for a in opts.adapters]
    inputs: dict[str, Any] = {"adapters": [], "base": None}
    for a in ads:
        inputs["adapters"].append({"path": str(a.path.resolve()), "files": _files(a.path, digest)})
    base_dir = merge.resolve_base(opts.base, ads[0]) if ads else Path(opts.model).resolve()
    inputs["base"] = {"path": str(base_dir), "files": _files(base_dir, digest)}

    # merge (or take the given model as is)
    dtype = DTYPE_FOR_OUTTYPE[opts.outtype]
    if ads:
        merged_dir, _ = steps.run(
            "merge",
            {"inputs": inputs, "dtype": dtype},
            lambda tmp: {
                "merge": merge.merge(
                    [a.path for a in ads], tmp / "merged", base=base_dir, dtype=dtype
                )
            },
        )
        merged = merged_dir / "merged"
    else:
        steps.run("merge", {"skipped": True}, lambda tmp: {"skipped": "--model given"})
        merged = base_dir

    # convert
    conv_dir, conv = steps.run(
        "convert",
        {"merged": str(merged), "inputs": inputs, "outtype": opts.outtype, "dtype": dtype},
        lambda tmp: convert.convert(
            merged,
            tmp / f"{base_name}-{opts.outtype.upper()}.gguf",
            outtype=opts.outtype,
            name=base_name,
            tree=tree,
        ),
    )
    f16 = conv_dir / f"{base_name}-{opts.outtype.upper()}.gguf"

    def verified(gguf: Path, baseline: Path | None) -> dict:
        if opts.verify == "none":
            return {"ok": True, "skipped": "--verify none"}
        return verify.verify(
            gguf,
            reference=merged,
            probes=opts.probes,
            baseline=baseline,
            max_kld=opts.quality_gate if opts.quality_gate is not None else verify.DEFAULT_MAX_KLD,
            logits=opts.verify == "full",
            tree=tree,
        )

    reports: dict[str, dict] = {}
    probes_key = digest(opts.probes) if opts.probes else None
    _, reports[opts.outtype] = steps.run(
        "verify",
        {"gguf": str(f16), "verify": opts.verify, "probes": probes_key},
        lambda tmp: verified(f16, None),
    )
    if not reports[opts.outtype].get("ok", False):
        failed = reports[opts.outtype].get("failed")
        raise VerificationError(
            f"the {opts.outtype} GGUF failed verification: {failed}",
            "see the verify report (deploykit verify --json)",
        )

    quant_files: dict[str, Path] = {}
    for qtype in quants:
        qdir, qres = steps.run(
            f"quantize-{qtype.lower()}",
            {"f16": str(f16), "type": qtype, "calibration": str(opts.calibration)},
            lambda tmp, q=qtype: quantize.quantize(
                f16, [q], out_dir=tmp, calibration=opts.calibration, tree=tree
            ),
        )
        gguf = next(qdir.glob("*.gguf"))
        quant_files[qtype] = gguf
        _, rep = steps.run(
            f"verify-{qtype.lower()}",
            {
                "gguf": str(gguf),
                "verify": opts.verify,
                "probes": probes_key,
                "gate": opts.quality_gate,
            },
            lambda tmp, g=gguf: verified(g, f16),
        )
        reports[qtype] = rep
        if opts.quality_gate is not None and "quant_quality" in (rep.get("failed") or []):
            raise VerificationError(
                f"{qtype} exceeds the quality gate (KL divergence > {opts.quality_gate})",
                "use a larger quant type, or --calibration data for an importance matrix",
            )

    # the bundle
    ui.info(f"[{steps.n + 1}/{steps.total}] bundle -> {out}")
    bundle_started = time.monotonic()
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
            rendered = modelfile.render(
                dest,
                model_dir=merged,
                family=opts.family,
                system=opts.system,
                params=opts.params,
                out=tmp / "Modelfile",
            )
            for warning in rendered.warnings:
                ui.info(f"warning: {warning}")
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
            "name": base_name,
            "llama_cpp": {"release": tree.release, "commit": tree.commit, "origin": tree.origin},
            "versions": _versions(),
            "inputs": inputs,
            "options": json.loads(json.dumps(asdict(opts), default=str)),
            "outputs": outputs,
            "verification": reports,
            "steps": steps.log,
        }
        atomic_write_text(tmp / "README.md", _model_card(manifest))
        atomic_write_json(tmp / "manifest.json", manifest)
    steps.log.append({"step": "bundle", "seconds": round(time.monotonic() - bundle_started, 2)})

    # Ollama
    manifest["ollama"] = _deploy(opts, base_name, out, outputs, merged, steps)
    manifest["seconds"] = round(time.monotonic() - started, 2)
    atomic_write_json(out / "manifest.json", manifest)
    failed = [t for t, h in (manifest["ollama"].get("health") or {}).items() if not h["ok"]]
    if failed:
        raise HealthCheckError(
            f"health check failed for {', '.join(failed)}",
            f"see {out / 'manifest.json'} (ollama.health)",
        )
    return manifest


def _deploy(
    opts: ShipOptions, name: str, out: Path, outputs: list[dict], merged: Path, steps: Steps
) -> dict:
    from deploykit.ollama import deploy, health
    from deploykit.ollama.client import Client, resolve_host

    host = resolve_host(opts.host)
    ui.info(f"[{steps.total}/{steps.total}] ollama ({opts.target})")
    if opts.target == "none":
        ui.info(
            f"the bundle is ready in {out}; deploy it with: "
            f"deploykit create {name} -f {out / 'Modelfile'}"
        )
        return {"target": "none"}
    if opts.target == "auto":
        try:
            with Client(host, timeout=5) as c:
                c.version()
        except Exception:  # noqa: BLE001 - any failure means "no server here"
            ui.info(
                f"no Ollama server answers at {host}: the bundle is ready in {out}; "
                f"finish with: deploykit create {name} -f {out / 'Modelfile'}"
            )
            return {"target": "none", "reason": f"no server at {host}"}
    created, reports = [], {}
    for o in outputs:
        tag = f"{name}:{o['type'].lower()}"
        deploy.create(tag, Path(o["modelfile"]), host, lambda s: None)
        created.append(tag)
        reports[tag] = health.check(tag, host, probes=opts.probes, reference=merged)
    with Client(host) as c:
        c.copy(created[0], name)
    created.append(f"{name}:latest")
    return {"target": "ollama", "host": host, "created": created, "health": reports}


def _model_card(m: dict) -> str:
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


# --- the work directory -------------------------------------------------------------------


def cache_list(work_dir: Path | None = None) -> list[dict]:
    work = Path(work_dir or cache_dir() / "work")
    out = []
    for d in sorted(work.glob("*-*")) if work.is_dir() else []:
        if not d.is_dir():
            continue
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        out.append(
            {
                "step": d.name,
                "bytes": size,
                "finished": (d / MARKER).is_file(),
                "modified": d.stat().st_mtime,
            }
        )
    return out


def cache_prune(work_dir: Path | None = None, older_than_days: float = 0) -> dict:
    work = Path(work_dir or cache_dir() / "work")
    cutoff = time.time() - older_than_days * 86400
    freed, removed = 0, []
    for entry in cache_list(work):
        if entry["modified"] <= cutoff or not entry["finished"]:
            shutil.rmtree(work / entry["step"], ignore_errors=True)
            freed += entry["bytes"]
            removed.append(entry["step"])
    return {"removed": removed, "bytes_freed": freed}
