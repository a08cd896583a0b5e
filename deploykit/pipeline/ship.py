"""``ship``: adapter → merged → GGUF → quants → Modelfile → bundle → Ollama, resumable.

Orchestration only: every step calls into its own module. The steps are frozen dataclasses
(``deploykit.pipeline.steps``) whose fields are their cache key: input files by sha256, earlier
steps by their keys, and the tools that shape the output by their versions (deploykit's
version and the llama.cpp commit for every step that runs llama.cpp, the tools' build key for
those that run a built tool). The plan is built first; then each step runs or is reused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.core import ui
from deploykit.core.errors import HealthCheckError, InputError, VerificationError
from deploykit.pipeline.options import OUTTYPES, TARGETS, VERIFY_MODES, ShipOptions
from deploykit.pipeline.steps import (
    FileRef,
    Runner,
    Step,
    context,
    default_work_dir,
    file_ref,
    file_refs,
)

#: Bump when the merged model deploykit writes changes for the same inputs.
MERGE_FORMAT = 2  # 2: float32 merges in float32; tied heads in peft's order


# --- the steps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay(Step):
    """The merged model's folder without its weights (``merged/`` in the step directory):
    config.json, tokenizer, generation config, what verify, the Modelfile and health read. The
    weights are merged as the convert step writes the GGUF (``deploykit.pipeline.fused``).

    Keyed on the files' contents (not where they are) and on the merge's output format: the
    merge is bit-exact with peft, so a new deploykit does not redo it unless that changes."""

    name = "overlay"
    adapters: tuple[tuple[FileRef, ...], ...]
    base: tuple[FileRef, ...]
    dtype: str
    format: int = MERGE_FORMAT
    adapter_dirs: tuple[str, ...] = context(())
    base_dir: str = context("")

    def run(self, tmp: Path) -> dict[str, Any]:
        from deploykit.merge import merge

        the_plan = merge.plan([Path(a) for a in self.adapter_dirs], Path(self.base_dir), self.dtype)
        return {"overlay": merge.write_overlay(the_plan, tmp / "merged")}


@dataclass(frozen=True, kw_only=True)
class LlamaCppStep(Step):
    """A step that runs the pinned llama.cpp: its commit (and deploykit's version) are part of
    its identity; ``build`` is the tools' build key, for steps that run a built tool."""

    llama_cpp: str
    build: str | None = None
    deploykit: str = __version__
    tree: Any = context()


@dataclass(frozen=True, kw_only=True)
class Convert(LlamaCppStep):
    """The model converted to ``<name>-<OUTTYPE>.gguf`` (``general.name`` is ``name``)."""

    name = "convert"
    model_dir: str
    model: str  # the overlay step's key, or the files of a --model directory
    outtype: str
    gguf_name: str
    allow_pickle: bool = False
    #: with adapters: the merge (fused into the conversion, which reads ``model_dir``, the
    #: overlay, for everything but the weights); its identity is the overlay's key
    adapter_dirs: tuple[str, ...] = context(())
    base_dir: str = context("")
    dtype: str = context("")

    @property
    def filename(self) -> str:
        return f"{self.gguf_name}-{self.outtype.upper()}.gguf"

    def run(self, tmp: Path) -> dict[str, Any]:
        from deploykit.gguf import convert
        from deploykit.pipeline import fused

        if self.adapter_dirs:
            return fused.convert_adapters(
                [Path(a) for a in self.adapter_dirs],
                Path(self.base_dir),
                Path(self.model_dir),
                tmp / self.filename,
                outtype=self.outtype,
                dtype=self.dtype,
                name=self.gguf_name,
                tree=self.tree,
            )
        return convert.convert(
            Path(self.model_dir),
            tmp / self.filename,
            outtype=self.outtype,
            name=self.gguf_name,
            tree=self.tree,
            allow_pickle=self.allow_pickle,
        )


@dataclass(frozen=True, kw_only=True)
class Quantize(LlamaCppStep):
    """One quant type of the converted GGUF."""

    name = "quantize"
    source: str  # the convert step's GGUF
    source_key: str
    type: str
    calibration: FileRef | None
    calibration_path: str | None = context()

    @property
    def label(self) -> str:
        return f"quantize-{self.type.lower()}"

    def run(self, tmp: Path) -> dict[str, Any]:
        from deploykit.gguf import quantize

        cal = Path(self.calibration_path) if self.calibration_path else None
        return quantize.quantize(
            Path(self.source), [self.type], out_dir=tmp, calibration=cal, tree=self.tree
        )


@dataclass(frozen=True, kw_only=True)
class Verify(LlamaCppStep):
    """The verification report of one GGUF (against the merged model and the f16)."""

    name = "verify"
    gguf: str
    gguf_key: str
    type: str | None  # None for the unquantized GGUF
    reference: str
    reference_key: str
    mode: str
    probes: FileRef | None
    baseline: str | None
    max_kld: float | None
    probes_path: str | None = context()
    #: the baseline's identity (the f16's step key) and where its KL base file is kept during
    #: the run (set by ``ship``), so the f16's logits are computed once for every quant
    baseline_key: str | None = context()
    kl_cache: str | None = context()
    #: with adapters, where the overlay's (``reference``) fine-tune is: base and adapters
    weights_from: tuple[str, tuple[str, ...]] | None = context()
    #: the checked file's sha256, set once it exists: a report is for these bytes only
    gguf_sha256: str = ""

    @property
    def label(self) -> str:
        return "verify" if self.type is None else f"verify-{self.type.lower()}"

    def run(self, tmp: Path) -> dict[str, Any]:
        from deploykit.gguf import verify

        if self.mode == "none":
            return {"ok": None, "verified": False, "skipped": "--verify none"}
        report = verify.verify(
            Path(self.gguf),
            reference=Path(self.reference),
            probes=Path(self.probes_path) if self.probes_path else None,
            baseline=Path(self.baseline) if self.baseline else None,
            max_kld=self.max_kld,
            logits=self.mode == "full",
            tree=self.tree,
            kl_cache=Path(self.kl_cache) if self.kl_cache else None,
            baseline_key=self.baseline_key,
            weights_from=(
                (Path(self.weights_from[0]), [Path(a) for a in self.weights_from[1]])
                if self.weights_from
                else None
            ),
        )
        return report.to_dict()


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """Every step of one ship, built before any of them runs."""

    merge: Overlay | None
    model_dir: Path  # the merged model's overlay (or --model), as the later steps read it
    convert: Convert
    verify: Verify
    quants: list[tuple[Quantize, Verify]]

    @property
    def steps(self) -> list[Step]:
        out: list[Step] = [s for s in (self.merge, self.convert, self.verify) if s is not None]
        for q, v in self.quants:
            out += [q, v]
        return out


def plan(
    opts: ShipOptions,
    *,
    work: Path,
    memo,
    tree,
    build_key: str,
    adapters: list[Path],
    base_dir: Path,
    quants: list[str],
    gguf_name: str,
) -> Plan:
    """The steps for ``opts`` (paths and keys only: nothing runs here)."""
    from deploykit.gguf import quantize
    from deploykit.gguf.verify import kld_limit
    from deploykit.pipeline import fused

    commit = tree.commit or "unknown"
    dtype = fused.merge_dtype(opts.outtype)
    merge = None
    if adapters:
        merge = Overlay(
            adapter_dirs=tuple(str(a.resolve()) for a in adapters),
            adapters=tuple(file_refs(a, memo) for a in adapters),
            base_dir=str(base_dir),
            base=file_refs(base_dir, memo),
            dtype=dtype,
        )
        model_dir = merge.dir(work) / "merged"
        model_key = merge.key
    else:
        model_dir = base_dir
        model_key = "files:" + ",".join(f.sha256 for f in file_refs(base_dir, memo))
    convert = Convert(
        model_dir=str(model_dir),
        model=model_key,
        outtype=opts.outtype,
        gguf_name=gguf_name,
        allow_pickle=opts.allow_pickle,
        llama_cpp=commit,
        tree=tree,
        adapter_dirs=merge.adapter_dirs if merge else (),
        base_dir=str(base_dir) if merge else "",
        dtype=dtype if merge else "",
    )
    f16 = convert.dir(work) / convert.filename
    probes = _ref(opts.probes, memo)

    def verify(gguf: Path, key: str, qtype: str | None) -> Verify:
        return Verify(
            gguf=str(gguf),
            gguf_key=key,
            type=qtype,
            reference=str(model_dir),
            reference_key=model_key,
            mode=opts.verify,
            probes=probes,
            probes_path=str(opts.probes) if opts.probes else None,
            baseline=str(f16) if qtype else None,
            baseline_key=convert.key if qtype else None,
            max_kld=opts.quality_gate if opts.quality_gate is not None else kld_limit(qtype),
            weights_from=(str(base_dir), merge.adapter_dirs) if merge else None,
            llama_cpp=commit,
            build=build_key,
            tree=tree,
        )

    calibration = _ref(opts.calibration, memo)
    steps = []
    for qtype in quants:
        q = Quantize(
            source=str(f16),
            source_key=convert.key,
            type=qtype,
            calibration=calibration,
            calibration_path=str(opts.calibration) if opts.calibration else None,
            llama_cpp=commit,
            build=build_key,
            tree=tree,
        )
        gguf = q.dir(work) / quantize.output_name(f16, qtype)
        steps.append((q, verify(gguf, q.key, qtype)))
    return Plan(merge, model_dir, convert, verify(f16, convert.key, None), steps)


def _for_bytes(v: Verify, runner: Runner) -> Verify:
    """``v`` keyed on the sha256 of the file it checks (known once the file is written; the
    memo has it from the step that wrote it)."""
    return dataclasses.replace(v, gguf_sha256=runner.memo(Path(v.gguf)))


def _gate(what: str, report: dict[str, Any], allowed: set[str]) -> None:
    """Stop ship when a GGUF failed a check (before anything is bundled or created), unless
    ``--allow-failed`` names its type; the failing checks go to stderr."""
    if report.get("ok", False) or report.get("verified") is False:  # passed, or not checked
        return
    failed = [c for c in report.get("checks", []) if not c.get("ok", True)]
    for c in failed:
        ui.info(f"FAIL  {what} {c['name']}: {c['detail']}")
    names = ", ".join(report.get("failed") or [c["name"] for c in failed])
    if what in allowed:
        ui.warn(f"{what} failed {names}; shipping it anyway (--allow-failed)")
        return
    kld = "quant_quality" in (report.get("failed") or [])
    raise VerificationError(
        f"the {what} GGUF failed verification: {names}",
        "use a larger quant type or --calibration data for an importance matrix"
        if kld
        else "see the report above (deploykit verify --json for all of it)",
    )


def _inputs(the_plan: Plan, base_dir: Path, memo) -> dict[str, Any]:
    """What the manifest records as the inputs: every file with its size and sha256."""

    def files(folder: str, refs) -> dict[str, Any]:
        rows = [
            {"path": str(Path(folder) / f.name), "size": f.size, "sha256": f.sha256} for f in refs
        ]
        return {"path": folder, "files": rows}

    merge = the_plan.merge
    pairs = zip(merge.adapter_dirs, merge.adapters, strict=True) if merge else []
    return {
        "adapters": [files(d, refs) for d, refs in pairs],
        "base": files(str(base_dir), merge.base if merge else file_refs(base_dir, memo)),
    }


def _ref(path: Path | None, memo) -> FileRef | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}", "check the path")
    return file_ref(path, memo)


def training_context(folders: list[Path], params: list[tuple[str, Any]]) -> int | None:
    """The context the model was trained at, written as num_ctx (None: Ollama sizes it): the
    largest cutoff length in the training records of the adapters (or of the --model folder).
    Not read when --param num_ctx is given."""
    from deploykit.model.hf_dir import ModelDir

    if any(name == "num_ctx" for name, _ in params):
        return None
    found = [c for f in folders if (c := ModelDir(f).training_context) is not None]
    return max(found) if found else None


def default_name(opts: ShipOptions) -> str:
    src = Path(opts.model or opts.adapters[0]).resolve()
    stem = src.name
    if stem.lower() in ("adapter", "lora", "output", "out", "merged", "model") or stem.startswith(
        "checkpoint"
    ):
        stem = f"{src.parent.name}-{stem}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.").lower() or "model"


# --- ship -------------------------------------------------------------------------------------


def _check(opts: ShipOptions) -> list[tuple[str, Any]]:
    """Everything that can be checked before any work starts; returns the typed --params."""
    from deploykit.ollama import families, modelfile, params

    if bool(opts.adapters) == bool(opts.model):
        raise InputError(
            "give --adapter (one or more) or --model, not both or neither",
            "--adapter DIR for a PEFT adapter, --model DIR for a merged model",
        )
    for what, value, allowed in (
        ("--outtype", opts.outtype, OUTTYPES),
        ("--verify", opts.verify, VERIFY_MODES),
        ("--target", opts.target, TARGETS),
    ):
        if value not in allowed:
            raise InputError(f"unknown {what} {value}", f"use {', '.join(allowed)}")
    if opts.model is not None and not Path(opts.model).is_dir():
        raise InputError(f"model folder not found: {opts.model}", "check --model")
    for what, value in (("--out", opts.out), ("--work-dir", opts.work_dir)):
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise InputError(f"{what} {value} is a file", f"give {what} a folder")
    work = Path(opts.work_dir or default_work_dir())
    probe = work
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the step cache {work} (permission denied)", "pass --work-dir elsewhere"
        )
    if opts.family != "auto":
        families.get(opts.family)
    if opts.system is not None:
        modelfile.check_text("SYSTEM", opts.system)
    if opts.push:
        from deploykit.pipeline.push import parse_target

        for target in opts.push:  # before any work: a typo must not cost a whole ship
            parse_target(target)
    return [params.parse_option(p) for p in opts.params]


def ship(opts: ShipOptions) -> dict:
    """Run the pipeline; returns the manifest (also written to the bundle; with ``--push``,
    what was published is in its ``push``, which the bundle's copy does not record)."""
    from deploykit.gguf import quantize
    from deploykit.llamacpp import build
    from deploykit.llamacpp import tree as llamacpp
    from deploykit.merge import adapters as adapter_mod
    from deploykit.merge.merge import resolve_base
    from deploykit.model.hf_dir import ModelDir
    from deploykit.ollama.names import split_tag, validate_name
    from deploykit.pipeline import bundle

    typed_params = _check(opts)
    name = opts.name or default_name(opts)
    base_name, tag = split_tag(name)
    if tag is not None:
        raise InputError(
            f"--name {name} has a tag, but ship makes the tags: NAME:<quant> for each --quant "
            "and NAME (latest) for the first",
            f"pass --name {base_name}",
        )
    validate_name(base_name)
    out = Path(opts.out or Path("dist") / base_name).resolve()
    inputs_given = [
        Path(p) for p in (*opts.adapters, opts.model, opts.calibration, opts.probes) if p
    ]
    bundle.check_destination(out, inputs_given)
    tree = llamacpp.locate_tree()
    quants = quantize.parse_types(",".join(opts.quants()), tree)
    allowed = set(quantize.parse_types(opts.allow_failed, tree)) if opts.allow_failed else set()
    if allowed - set(quants):
        raise InputError(
            f"--allow-failed names {', '.join(sorted(allowed - set(quants)))}, not a --quant",
            "name types you ship with --quant",
        )
    work = Path(opts.work_dir or default_work_dir()).resolve()
    started = time.monotonic()

    ads = [adapter_mod.load(Path(a)) for a in opts.adapters]
    base_dir = resolve_base(opts.base, ads[0]) if ads else Path(opts.model).resolve()
    bundle.check_destination(out, [*inputs_given, base_dir])
    ModelDir(base_dir).check_weights()  # a config that lies about its weights: before any work
    context = training_context([a.path for a in ads] or [base_dir], typed_params)
    if opts.model is not None:  # LlamaFactory's Modelfile there: one Ollama reads, checked now
        from deploykit.ollama import llamafactory

        llamafactory.read(base_dir)
    runner = Runner(work, force=opts.force, total=0)
    the_plan = plan(
        opts,
        work=work,
        memo=runner.memo,
        tree=tree,
        build_key=build.build_key(tree),
        adapters=[a.path for a in ads],
        base_dir=base_dir,
        quants=quants,
        gguf_name=base_name.rsplit("/", 1)[-1],  # files are named after the model part
    )
    runner.total = len(the_plan.steps) + 2 + bool(opts.push)  # + bundle + ollama (+ push)

    if the_plan.merge is not None:
        runner.run(the_plan.merge)
    runner.run(the_plan.convert)
    reports: dict[str, dict] = {}
    _, reports[opts.outtype] = runner.run(_for_bytes(the_plan.verify, runner))
    _gate(opts.outtype, reports[opts.outtype], allowed=set())
    quant_files: dict[str, Path] = {}
    # the f16's KL base file, shared by the quants' checks and removed after them (a killed
    # run's is a leftover by atomic_dir's naming: `cache prune` removes it after an hour)
    kl_prefix = f".kl-base-{the_plan.convert.key}."
    with tempfile.TemporaryDirectory(prefix=kl_prefix, suffix=".partial", dir=work) as kl:
        for q, v in the_plan.quants:
            runner.run(q)
            quant_files[q.type] = Path(v.gguf)
            v = dataclasses.replace(v, kl_cache=kl)
            _, reports[q.type] = runner.run(_for_bytes(v, runner))
            _gate(q.type, reports[q.type], allowed)
    failed_allowed = {t: r["failed"] for t, r in reports.items() if r.get("ok") is False}

    inputs = _inputs(the_plan, base_dir, runner.memo)
    # the base's hub id and license, read here, where the inputs are: push uses them on any
    # machine (a bundle moved as a CI artifact no longer has the base beside it)
    from deploykit.publish.card import base_facts

    inputs["base"].update(base_facts({"inputs": inputs}))
    runner.announce(f"bundle -> {out}")
    bundle_started = time.monotonic()
    manifest = bundle.write(
        out,
        name=base_name,
        params=typed_params,
        context=context,
        failed_allowed=failed_allowed,
        quant_files=quant_files,
        model_dir=the_plan.model_dir,
        opts=opts,
        tree=tree,
        inputs=inputs,
        reports=reports,
        steps=runner.log,
        digest=runner.memo,
    )
    runner.log.append({"step": "bundle", "seconds": round(time.monotonic() - bundle_started, 2)})

    runner.announce(f"ollama ({opts.target})")
    manifest["ollama"] = bundle.deploy(
        opts, base_name, out, manifest["outputs"], the_plan.model_dir
    )
    manifest["seconds"] = round(time.monotonic() - started, 2)
    bundle.save_manifest(out, manifest)
    failed = [t for t, h in (manifest["ollama"].get("health") or {}).items() if not h["ok"]]
    if failed:
        raise HealthCheckError(
            f"health check failed for {', '.join(failed)}",
            f"see {out / 'manifest.json'} (ollama.health)",
        )
    if opts.push:  # only a bundle that passed everything; push checks it once more
        from deploykit.pipeline import push

        runner.announce(f"push -> {', '.join(opts.push)}")
        manifest["push"] = push.push(
            out,
            opts.push,
            push.PushOptions(host=opts.host, allow_gguf_template=opts.allow_gguf_template),
        )["targets"]
    return manifest
