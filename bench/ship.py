"""Benchmark: `deploykit ship` end to end vs the manual chain users follow today (issue 16).

A random-weight model of ``--shape`` (bench/benchmodel.py) with a rank-16 LoRA on all linear
projections, Q4_K_M on every core, ``--target none``, ``--allow-failed q4_k_m`` (the KL
divergence of random weights says nothing). Contenders:

  manual      peft merge_and_unload + save_pretrained -> convert_hf_to_gguf.py -> llama-quantize
  ship none   deploykit ship --verify none
  ship light  deploykit ship --verify light
  raw convert convert_hf_to_gguf.py on the unmerged base, f16 (7B shape only)

Method: a warm page cache (one warm-up round, not counted; ``--no-warmup`` skips it), then
``--runs`` rounds (default 2) alternating the contenders, each ship from an empty step cache.
Wall and steps (manual: each tool; ship: the manifest's ``steps``, whatever they are) are the
best of the rounds; memory and disk the highest. Memory: peak RSS (VmHWM) and peak anonymous
memory (RssAnon) of every process of the tree, by kind (its command line; a process shorter
than the 50 ms poll can be missed). Disk: what the run's folders hold (ship: work dir, bundle
and its TMPDIR), allocated blocks, each inode once, hard links to the inputs not at all;
"extra" is the peak less the bundle.

Targets, 1.5B shape: ship --verify none wall <= 0.70 of the manual chain, --verify light
<= 1.0 of it and <= 1.5 of --verify none; ship's heaviest process (--verify none) no heavier
(peak RSS, 2% slack) than the manual chain's heaviest llama.cpp step.
7B shape (peft merging to float16): ship's convert step <= 1.2x the raw converter on the
base; deploykit's own processes (deploykit, convert_hf_to_gguf.py) peak anon <= 1.2 GB and
below the heaviest llama.cpp tool's in the same run; ship's peak extra disk <= the f16 GGUF +
the quant; the peak RSS one as for 1.5B.
Prints the targets, met or MISSED, then the ratios last; exits 1 on a miss. Writes
BENCHMARKS.md's section "ship" (1.5B shape) or "ship-7b".

Needs about 5x the model's size of free disk, checked first (1.5B: ~16 GB; 7B widths at 8
layers: ~30 GB). Everything it writes is removed at the end, also on a failure or Ctrl-C
(--keep: the base model and the adapter are kept for the next run).

    .venv/bin/python -m bench.ship                                # 28 layers
    .venv/bin/python -m bench.ship --shape qwen2.5-7b --layers 8  # 7B widths
    .venv/bin/python -m bench.ship --layers 2 --runs 1 --no-warmup  # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.benchmodel import make_base, make_lora, model_bytes
from bench.merge import PEFT_MERGE, PEFT_MERGE_FP16, _gb, _warm
from bench.report import (
    Proc,
    Run,
    check_free,
    disk_usage,
    inodes,
    machine,
    measure,
    write_section,
)
from deploykit.llamacpp import tools
from deploykit.llamacpp import tree as llamacpp
from deploykit.pipeline.steps import MEMO, STEP_DIR

#: deploykit's own processes in a ship's tree (the others are llama.cpp's tools): ship itself,
#: the converter with the merge fused in, and the plain converter (a --model ship)
OWN = ("deploykit", "deploykit.llamacpp.hooked", "convert_hf_to_gguf.py")
MANUAL, RAW = "manual chain", "raw convert"
NONE, LIGHT = "ship --verify none", "ship --verify light"


@dataclass
class Result:
    """One run of a contender (or the summary of several): wall, seconds per step, peaks per
    kind of process, the heaviest process's peak RSS, the summed tree's peak anon, disk."""

    wall: float
    steps: dict[str, float]
    procs: dict[str, Proc]
    max_rss: int
    tree_anon: int
    disk_peak: int
    disk_final: int
    kept: int = 0  # ship: the bundle at the end; manual: its GGUFs (f16 + quant)
    records: int = 0  # ship: what its work dir and TMPDIR hold at the end besides GGUFs
    notes: tuple[str, ...] = ()  # what looked wrong (leftovers)


def _ok(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed:\n{run.output[-3000:]}")
    return run


def _merged(many: list[dict[str, Proc]], count=sum) -> dict[str, Proc]:
    """The peaks of each kind of process over ``many``; ``count`` combines their counts."""
    kinds = dict.fromkeys(k for procs in many for k in procs)
    return {
        k: Proc(
            max(p[k].max_rss for p in many if k in p),
            max(p[k].max_anon for p in many if k in p),
            count(p[k].count for p in many if k in p),
        )
        for k in kinds
    }


def _result(runs: dict[str, Run], **kw) -> Result:
    """Runs one after the other (the manual chain's tools) as one result."""
    rs = list(runs.values())
    return Result(
        wall=sum(r.seconds for r in rs),
        steps={k: r.seconds for k, r in runs.items()},
        procs=_merged([r.procs for r in rs]),
        max_rss=max(r.max_rss for r in rs),
        tree_anon=max(r.tree_anon for r in rs),
        disk_peak=max(r.disk_peak for r in rs),
        disk_final=rs[-1].disk_final,
        **kw,
    )


def _rm(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


class Contenders:
    """The runs, each in its own folders under ``work``, removed after it is measured."""

    def __init__(self, work: Path, base: Path, lora: Path, fp16: bool) -> None:
        self.work, self.base, self.lora, self.fp16 = work, base, lora, fp16
        self.tree = llamacpp.locate_tree()
        self.inputs = [base, lora]  # a run's hard links to them take no disk

    def folders(self) -> list[Path]:
        names = ["manual", "raw-convert"]
        names += [f"ship-{v}-{d}" for v in ("none", "light") for d in ("work", "out", "tmp")]
        return [self.work / n for n in names]

    def _convert(self, model: Path, outfile: Path, disk: list[Path]) -> Run:
        cmd = llamacpp.converter_cmd(
            self.tree, str(model), "--outtype", "f16", "--outfile", str(outfile)
        )
        return measure(cmd, env=llamacpp.converter_env(self.tree), disk=disk, inputs=self.inputs)

    def manual(self) -> Result:
        d = self.work / "manual"
        _rm(d)
        d.mkdir()
        merged, f16, q4 = d / "merged", d / "f16.gguf", d / "q4_k_m.gguf"
        script = PEFT_MERGE_FP16 if self.fp16 else PEFT_MERGE
        _warm(self.base)
        runs = {}
        cmd = [sys.executable, "-c", script, str(self.base), str(self.lora), str(merged)]
        runs["merge (peft)"] = _ok(measure(cmd, disk=[d], inputs=self.inputs), "peft merge")
        for name in ("tokenizer.json", "tokenizer_config.json"):  # LlamaFactory's export has them
            shutil.copyfile(self.base / name, merged / name)
        runs["convert_hf_to_gguf.py"] = _ok(self._convert(merged, f16, [d]), "convert")
        quantize = tools.tool("llama-quantize", self.tree)
        cmd = [str(quantize), str(f16), str(q4), "Q4_K_M", str(os.cpu_count() or 1)]
        runs["llama-quantize"] = _ok(measure(cmd, disk=[d], inputs=self.inputs), "quantize")
        result = _result(runs, kept=disk_usage([f16, q4]))
        if "python -c" in result.procs:
            result.procs["peft (python -c)"] = result.procs.pop("python -c")
        _rm(d)
        return result

    def raw_convert(self) -> Result:
        d = self.work / "raw-convert"
        _rm(d)
        d.mkdir()
        _warm(self.base)
        run = _ok(self._convert(self.base, d / "base-f16.gguf", [d]), "convert (base)")
        _rm(d)
        return _result({"convert_hf_to_gguf.py": run})

    def ship(self, verify: str) -> Result:
        w, o, t = (self.work / f"ship-{verify}-{d}" for d in ("work", "out", "tmp"))
        _rm(w, o, t)
        t.mkdir()
        _warm(self.base)
        cmd = [sys.executable, "-m", "deploykit", "ship", "--adapter", str(self.lora)]
        cmd += ["--base", str(self.base), "--quant", "q4_k_m", "--name", "bench"]
        cmd += ["--target", "none", "--verify", verify, "--allow-failed", "q4_k_m"]
        cmd += ["--work-dir", str(w), "--out", str(o)]
        env = {**os.environ, "TMPDIR": str(t)}
        run = _ok(measure(cmd, env=env, disk=[w, o, t], inputs=self.inputs), "ship")
        manifest = json.loads((o / "manifest.json").read_text())
        steps: dict[str, float] = {}
        notes = []
        for s in manifest["steps"]:
            steps[s["step"]] = steps.get(s["step"], 0.0) + float(s.get("seconds") or 0.0)
            if s.get("reused"):
                notes.append(f"step {s['step']} reused from an empty work dir")
        steps["(rest: start, hashing, ...)"] = run.seconds - sum(steps.values())
        odd = [p.name for p in w.iterdir() if p.name != MEMO and not STEP_DIR.fullmatch(p.name)]
        odd += [f"$TMPDIR/{p.name}" for p in t.iterdir()]
        if odd:
            notes.append(f"left in the work dir after the run: {', '.join(sorted(odd))}")
        skip = inodes(self.inputs)
        ggufs = disk_usage(sorted(w.rglob("*.gguf")), skip)
        records = disk_usage([w, t], skip) - ggufs  # step records, the overlay, the memo
        r = _result({"ship": run}, kept=disk_usage([o]), records=records, notes=tuple(notes))
        r.steps = steps
        _rm(w, o, t)
        return r


def summarize(results: list[Result]) -> Result:
    """The best wall and each step's best over the runs; the highest memory and disk."""
    return Result(
        wall=min(r.wall for r in results),
        steps={k: min(r.steps.get(k, 0.0) for r in results) for k in results[0].steps},
        procs=_merged([r.procs for r in results], count=max),
        max_rss=max(r.max_rss for r in results),
        tree_anon=max(r.tree_anon for r in results),
        disk_peak=max(r.disk_peak for r in results),
        disk_final=max(r.disk_final for r in results),
        records=max(r.records for r in results),
        kept=max(r.kept for r in results),
        notes=tuple(dict.fromkeys(n for r in results for n in r.notes)),
    )


def _anon(r: Result, kinds: Callable[[str], bool]) -> int:
    return max((p.max_anon for k, p in r.procs.items() if kinds(k)), default=0)


def _own(k: str) -> bool:
    return k in OWN


def _llama(k: str) -> bool:
    return k.startswith("llama-")


@dataclass
class Target:
    text: str
    short: str  # for the ratios line
    value: float
    limit: float
    ok: bool


def targets(s: dict[str, Result], wide: bool) -> list[Target]:
    man, none, light = s[MANUAL], s[NONE], s[LIGHT]
    llama_step = max(
        man.procs.get(k, Proc()).max_rss for k in ("convert_hf_to_gguf.py", "llama-quantize")
    )
    # the same tool on the same input is the same size, give or take the sampling: 2% slack
    rss = Target(
        "ship --verify none's heaviest process / the manual chain's heaviest llama.cpp step "
        "(peak RSS; 2% slack)",
        "heaviest ship process",
        none.max_rss / max(llama_step, 1),
        1.02,
        none.max_rss <= 1.02 * llama_step,
    )
    if not wide:
        r1, r2, r3 = none.wall / man.wall, light.wall / man.wall, light.wall / none.wall
        return [
            Target("ship --verify none / manual chain (wall)", "none/manual", r1, 0.70, r1 <= 0.7),
            Target("ship --verify light / manual chain (wall)", "light/manual", r2, 1.0, r2 <= 1),
            Target("ship --verify light / --verify none (wall)", "light/none", r3, 1.5, r3 <= 1.5),
            rss,
        ]
    conv = [r.steps["convert"] for r in (none, light) if "convert" in r.steps]
    ratio = min(conv) / s[RAW].wall if conv else float("inf")
    own = max(_anon(r, _own) for r in (none, light))
    below = [(_anon(r, _own), _anon(r, _llama)) for r in (none, light)]
    worst = max(a / max(b, 1) for a, b in below)
    extra = max(r.disk_peak - r.kept for r in (none, light))
    return [
        Target(
            "ship's convert step / the raw converter on the base (wall"
            + ("" if conv else "; the manifest lists no convert step")
            + ")",
            "convert/raw",
            ratio,
            1.2,
            ratio <= 1.2,
        ),
        Target("deploykit's own processes, peak anon (GB)", "own GB", own / 1e9, 1.2, own <= 1.2e9),
        Target(
            "deploykit's own peak anon / the heaviest llama.cpp tool's in the same ship",
            "own/llama anon",
            worst,
            1.0,
            all(a < b for a, b in below),
        ),
        Target(
            "ship's peak extra disk / (the f16 GGUF + the quant)",
            "extra disk/GGUFs",
            extra / man.kept,
            1.0,
            extra <= man.kept,
        ),
        rss,
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _secs(steps: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.1f} s" for k, v in steps.items())


def tables(s: dict[str, Result], walls: dict[str, list[float]], n: int) -> list[str]:
    rows = [f"| run | wall, best of {n} | every run | steps, each the best of {n} |"]
    rows.append("|---|---|---|---|")
    for name, r in s.items():
        each = ", ".join(f"{w:.1f}" for w in walls[name])
        rows.append(f"| {name} | {r.wall:.1f} s | {each} | {_secs(r.steps)} |")
    rows += ["", "| run | process | count | peak RSS | peak anon |", "|---|---|---|---|---|"]
    for name, r in s.items():
        order = sorted(r.procs.items(), key=lambda kp: (not _own(kp[0]), -kp[1].max_anon))
        for k, p in order:
            rows.append(f"| {name} | {k} | {p.count} | {_gb(p.max_rss)} | {_gb(p.max_anon)} |")
        rows.append(f"| {name} | whole tree, summed | | | {_gb(r.tree_anon)} |")
    rows += ["", "| run | disk peak | at the end | bundle | peak extra | of it, no GGUF |"]
    rows.append("|---|---|---|---|---|---|")
    for name, r in s.items():
        ship = name.startswith("ship")
        bundle, records = (_gb(r.kept), f"{r.records / 1e3:.0f} kB") if ship else ("", "")
        extra = r.disk_peak - (r.kept if ship else 0)
        rows.append(
            f"| {name} | {_gb(r.disk_peak)} | {_gb(r.disk_final)} | {bundle} | {_gb(extra)} "
            f"| {records} |"
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deploykit-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the base and adapter for next time")
    ap.add_argument("--shape", choices=["qwen2.5-1.5b", "qwen2.5-7b"], default="qwen2.5-1.5b")
    ap.add_argument("--layers", type=int, help="default: 28 (1.5B shape), 8 (7B widths)")
    ap.add_argument("--runs", type=int, default=2, help="counted rounds (default 2)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    wide = args.shape == "qwen2.5-7b"
    layers = args.layers or (8 if wide else 28)
    work = args.workdir
    base_p = work / (f"base7b-{layers}" if wide else f"base-{layers}")
    lora_p = work / (f"lora7b-{layers}" if wide else f"lora-{layers}")
    made = [p for p in (work, base_p, lora_p) if not p.exists()]
    work.mkdir(parents=True, exist_ok=True)
    size = model_bytes(layers, args.shape)
    check_free(work, (5 if base_p in made else 4) * size, " (about 5x the model's size)")
    c = None
    try:
        base = make_base(base_p, layers=layers, shape=args.shape)
        lora = make_lora(base, lora_p, rank=16)
        c = Contenders(work, base, lora, fp16=wide)
        runs = {MANUAL: c.manual, NONE: lambda: c.ship("none"), LIGHT: lambda: c.ship("light")}
        if wide:
            runs[RAW] = c.raw_convert
        rounds = ([] if args.no_warmup else ["warm-up"]) + [
            f"run {i}/{args.runs}" for i in range(1, args.runs + 1)
        ]
        results: dict[str, list[Result]] = {k: [] for k in runs}
        for label in rounds:
            for name, fn in runs.items():
                print(f"[{args.shape}, {layers} layers, {label}] {name} ...", file=sys.stderr)
                r = fn()
                print(f"    {r.wall:.1f} s", file=sys.stderr)
                if label != "warm-up":
                    results[name].append(r)
    finally:
        if c is not None:
            _rm(*c.folders())
        if not args.keep:
            _rm(*made[::-1])

    s = {k: summarize(v) for k, v in results.items()}
    walls = {k: [r.wall for r in v] for k, v in results.items()}
    checks = targets(s, wide)
    notes = [f"{name}: {n}" for name, r in s.items() for n in r.notes]
    title = "Ship at 7B widths" if wide else "Ship"
    shape = "Qwen2.5-7B widths (untied lm_head)" if wide else "Qwen2.5-1.5B-shaped"
    body = "\n".join(
        [
            f"## {title}: deploykit vs the manual chain (issue 16)",
            "",
            f"{shape} random bf16 model, {layers} layers ({_gb(size)}), rank-16 LoRA on all "
            f"linear projections, f16 GGUF, Q4_K_M with {os.cpu_count()} threads"
            + (", peft merging to float16" if wide else "")
            + ". Warm page cache"
            + ("" if args.no_warmup else " (one warm-up round)")
            + f", best of {args.runs} alternating runs for wall and steps, the highest of them "
            f"for memory and disk; each ship from an empty step cache. Machine: {machine()}.",
            "",
            "    .venv/bin/python -m bench.ship " + shlex.join(sys.argv[1:]),
            "",
            *tables(s, walls, args.runs),
            "",
            *(["What looked wrong: " + "; ".join(notes) + ".", ""] if notes else []),
            "Targets:",
            "",
            *(f"- {t.text}: {t.value:.2f} (target {t.limit:.3g}): {_met(t.ok)}" for t in checks),
        ]
    )
    write_section("ship-7b" if wide else "ship", body)
    print(body)
    ratios = [f"{t.short} {t.value:.2f} ({t.limit:.3g}: {_met(t.ok)})" for t in checks]
    if wide:  # the wall ratios, for information
        ratios += [
            f"none/manual {s[NONE].wall / s[MANUAL].wall:.2f}",
            f"light/manual {s[LIGHT].wall / s[MANUAL].wall:.2f}",
        ]
    print("\nratios: " + ", ".join(ratios))
    return 0 if all(t.ok for t in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
