"""ship's plan and step cache: what a step's identity covers, reuse, and what prune touches."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploykit.core.fsutil import Sha256Memo, sha256_file
from deploykit.pipeline import steps
from deploykit.pipeline.options import ShipOptions
from deploykit.pipeline.ship import plan


def _inputs(tmp: Path) -> tuple[Path, Path]:
    adapter, base = tmp / "adapter", tmp / "base"
    for d, files in ((adapter, ["adapter_config.json"]), (base, ["config.json", "w.safetensors"])):
        d.mkdir()
        for f in files:
            (d / f).write_text(f"{d.name}/{f}")
    return adapter, base


def _plan(tmp: Path, *, commit="c1", build="b1", name="demo", quants=("Q8_0",), **opts):
    adapter, base = tmp / "adapter", tmp / "base"
    return plan(
        ShipOptions(adapters=[adapter], **opts),
        work=tmp / "work",
        memo=Sha256Memo(tmp / "memo.json"),
        tree=SimpleNamespace(commit=commit),
        build_key=build,
        adapters=[adapter],
        base_dir=base,
        quants=list(quants),
        gguf_name=name,
    )


def test_the_toolchain_is_part_of_convert_and_quantize(tmp_path):
    _inputs(tmp_path)
    first = _plan(tmp_path)
    new_commit = _plan(tmp_path, commit="c2")
    new_build = _plan(tmp_path, build="b2")
    assert first.merge.key == new_commit.merge.key == new_build.merge.key
    assert new_commit.convert.key != first.convert.key  # a new llama.cpp converts again
    assert new_build.convert.key == first.convert.key  # the converter is Python: not built
    for other in (new_commit, new_build):
        assert other.quants[0][0].key != first.quants[0][0].key
        assert other.verify.key != first.verify.key


def test_each_name_gets_its_own_conversion(tmp_path):
    _inputs(tmp_path)
    a, b = _plan(tmp_path, name="a"), _plan(tmp_path, name="b")
    assert a.merge.key == b.merge.key
    assert a.convert.dir(tmp_path) != b.convert.dir(tmp_path)
    assert a.convert.filename == "a-F16.gguf" and b.convert.filename == "b-F16.gguf"
    assert Path(b.quants[0][1].gguf).name == "b-Q8_0.gguf"


def test_inputs_enter_by_content_and_a_rewrite_in_place_is_noticed(tmp_path):
    _adapter, base = _inputs(tmp_path)
    first = _plan(tmp_path)
    weights = base / "w.safetensors"
    st = weights.stat()
    weights.write_text("base/w.safetensorX")  # same size ...
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime
    second = _plan(tmp_path)
    assert second.merge.key != first.merge.key  # the ctime moved: hashed again


def test_calibration_and_probes_enter_by_content(tmp_path):
    _inputs(tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text("one")
    a = _plan(tmp_path, calibration=cal, quants=("Q4_K_M",))
    cal.write_text("two")
    b = _plan(tmp_path, calibration=cal, quants=("Q4_K_M",))
    assert a.quants[0][0].key != b.quants[0][0].key
    assert a.convert.key == b.convert.key


def test_the_plan_counts_every_step(tmp_path):
    _inputs(tmp_path)
    p = _plan(tmp_path, quants=("Q8_0", "Q4_K_M"))
    assert [s.label for s in p.steps] == [
        "overlay",
        "convert",
        "verify",
        "quantize-q8_0",
        "verify-q8_0",
        "quantize-q4_k_m",
        "verify-q4_k_m",
    ]


@dataclass(frozen=True)
class Count(steps.Step):
    name = "count"
    value: int
    calls: list = steps.context()

    def run(self, tmp: Path) -> dict:
        self.calls.append(self.value)
        (tmp / "out.txt").write_text(str(self.value))
        return {"value": self.value}


def test_runner_reuses_finished_steps_and_force_redoes_them(tmp_path):
    calls: list[int] = []
    work = tmp_path / "work"
    for force, expected in ((False, [1]), (False, [1]), (True, [1, 1])):
        d, result = steps.Runner(work, force=force, total=1).run(Count(1, calls))
        assert result == {"value": 1} and (d / "out.txt").read_text() == "1"
        assert calls == expected
    assert Count(1, []).key == Count(1, calls).key != Count(2, []).key


def test_prune_touches_only_step_directories(tmp_path):
    work = tmp_path / "work"
    d, _ = steps.Runner(work, force=False, total=1).run(Count(1, []))
    unfinished = work / "merge-0123456789abcdef"
    unfinished.mkdir()
    mine = [work / "my-project", work / "photos-2024"]
    for m in mine:
        m.mkdir()
        (m / "keep.txt").write_text("mine")
    old = time.time() - 10 * 86400
    os.utime(d, (old, old))
    result = steps.cache_prune(work, older_than_days=1)
    assert result["removed"] == [d.name]  # without a marker it is not provably deploykit's
    assert unfinished.is_dir() and all((m / "keep.txt").is_file() for m in mine)


def test_prune_removes_what_killed_runs_left_behind(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    leftovers = [
        work / ".merge-0123456789abcdef.k3j2h1.partial",
        work / ".merge-0123456789abcdef.old-4242",
    ]
    kept = [work / ".cache", work / ".merge-notakey.partial"]
    for d in leftovers + kept:
        d.mkdir()
        (d / "f").write_text("x")
    entries = {e["step"]: e for e in steps.cache_list(work)}
    assert set(entries) == {d.name for d in leftovers}
    assert not any(e["finished"] for e in entries.values())
    steps.cache_prune(work, older_than_days=365)
    assert all(d.exists() for d in leftovers)  # young: a run may be writing them right now
    old = time.time() - 2 * steps.LEFTOVER_AGE
    for d in leftovers:
        os.utime(d, (old, old))
    steps.cache_prune(work, older_than_days=365)  # an hour old: gone whatever --older-than
    assert [d.exists() for d in leftovers + kept] == [False, False, True, True]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    from tests.support.cli import invoke

    work = tmp_path / "work"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for extra, message in (
        (["--param", "temprature=0.7"], "unknown PARAMETER 'temprature'"),
        (["--family", "nope"], "unknown template family 'nope'"),
    ):
        r = invoke("ship", "--adapter", str(adapter), "--work-dir", str(work), *extra)
        assert r.returncode == 3, r.stderr
        assert message in r.stderr and r.stderr.count("error:") == 1
    assert not work.exists()


def test_a_finished_step_whose_files_changed_is_done_again(tmp_path):
    calls: list[int] = []
    work = tmp_path / "work"
    d, _ = steps.Runner(work, force=False, total=1).run(Count(7, calls))
    steps.Runner(work, force=False, total=1).run(Count(7, calls))
    assert calls == [7]  # reused: its file is untouched
    out = d / "out.txt"
    st = out.stat()
    out.write_text("8")  # same size, same mtime: only the ctime (and the bytes) say so
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    d, _ = steps.Runner(work, force=False, total=1).run(Count(7, calls))
    assert calls == [7, 7] and out.read_text() == "7"
    out.write_text("")  # truncated
    steps.Runner(work, force=False, total=1).run(Count(7, calls))
    assert calls == [7, 7, 7]


def _bundle(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, text in files.items():
        (folder / name).write_text(text)
        rows.append({"path": name, "size": len(text), "sha256": sha256_file(folder / name)})
    (folder / "manifest.json").write_text(json.dumps({"deploykit": "0.1.0", "files": rows}))


def _staged(tmp_path: Path, files: dict[str, str]) -> tuple[Path, dict]:
    staging = tmp_path / "staging"
    staging.mkdir(parents=True)
    rows = []
    for name, text in files.items():
        (staging / name).write_text(text)
        rows.append({"path": name, "size": len(text), "sha256": sha256_file(staging / name)})
    return staging, {"deploykit": "0.1.0", "files": rows}


def test_a_bundle_replaces_only_its_own_unchanged_files(tmp_path):
    from deploykit.pipeline import bundle

    out = tmp_path / "dist"
    _bundle(out, {"m-Q8_0.gguf": "old", "Modelfile": "old", "Modelfile.q4_k_m": "old"})
    (out / "notes.txt").write_text("mine")
    staging, manifest = _staged(tmp_path, {"m-Q8_0.gguf": "new", "Modelfile": "new"})
    bundle._publish(staging, out, manifest, bundle.owned_files(out), sha256_file)
    assert (out / "Modelfile").read_text() == "new"
    assert not (out / "Modelfile.q4_k_m").exists()  # ours, no longer part of the bundle
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone


def test_a_file_deploykit_did_not_write_or_that_changed_is_never_replaced(tmp_path):
    from deploykit.core.errors import InputError
    from deploykit.pipeline import bundle

    out = tmp_path / "dist"
    _bundle(out, {"Modelfile": "ours"})
    (out / "Modelfile").write_text("edited by the user since")
    (out / "README.md").write_text("the user's own README")
    for name in ("Modelfile", "README.md"):
        staging, manifest = _staged(tmp_path / name, {name: "new"})
        with pytest.raises(InputError, match="is not what deploykit wrote there"):
            bundle._publish(staging, out, manifest, bundle.owned_files(out), sha256_file)
    assert (out / "Modelfile").read_text() == "edited by the user since"
    assert (out / "README.md").read_text() == "the user's own README"
    staging, manifest = _staged(tmp_path / "same", {"README.md": "the user's own README"})
    bundle._publish(staging, out, manifest, bundle.owned_files(out), sha256_file)  # same bytes


def test_an_interrupted_publish_leaves_a_bundle_the_next_run_owns(tmp_path, monkeypatch):
    from deploykit.pipeline import bundle

    out = tmp_path / "dist"
    _bundle(out, {"m-Q8_0.gguf": "old", "Modelfile": "old"})
    staging, manifest = _staged(tmp_path, {"m-Q8_0.gguf": "new", "Modelfile": "new"})
    calls = []

    def killed(src, dst):
        if calls:
            raise KeyboardInterrupt  # the second rename never happens
        calls.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(bundle.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        bundle._publish(staging, out, manifest, bundle.owned_files(out), sha256_file)
    assert set(bundle.owned_files(out)) == {"m-Q8_0.gguf", "Modelfile"}  # still ours
    assert all(d is None for d in bundle.expected_digests(out).values())  # create refuses


def test_only_the_staging_of_a_dead_run_is_removed(tmp_path):
    from deploykit.pipeline import bundle

    out = tmp_path / "dist"
    out.mkdir()
    dead = out / f"{bundle.STAGING}999999999-abc"
    live = out / f"{bundle.STAGING}{os.getpid()}-def"
    mine = out / ".deploykit-staging-notes"
    for d in (dead, live, mine):
        d.mkdir()
    bundle._remove_stale_staging(out)
    assert [d.exists() for d in (dead, live, mine)] == [False, True, True]


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        json.dumps({"name": "someone else's"}),
        json.dumps({"deploykit": "0.1.0", "files": [{"path": "../outside.txt"}]}),
        json.dumps({"deploykit": "0.1.0", "files": [{"path": "/etc/passwd"}]}),
        json.dumps({"deploykit": "0.1.0", "files": [{"path": "sub/precious.txt"}]}),
        json.dumps({"deploykit": "0.1.0", "files": None}),
        json.dumps({"deploykit": "0.1.0", "files": 5}),
        json.dumps({"deploykit": "0.1.0"}),
        json.dumps({"deploykit": "0.1.0", "outputs": 5}),
        "[" * 100000,
    ],
)
def test_a_manifest_deploykit_did_not_write_is_refused(tmp_path, manifest):
    from deploykit.core.errors import InputError
    from deploykit.pipeline import bundle

    out = tmp_path / "dist"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    with pytest.raises(InputError, match="was not written by deploykit"):
        bundle.check_destination(out, [])


def test_an_input_or_a_folder_above_one_is_never_the_bundle(tmp_path):
    from deploykit.core.errors import InputError
    from deploykit.pipeline import bundle

    adapter = tmp_path / "project" / "lora"
    adapter.mkdir(parents=True)
    for out in (adapter, tmp_path / "project", tmp_path, adapter / "dist"):
        with pytest.raises(InputError, match="is an input or holds one"):
            bundle.check_destination(out, [adapter])
    bundle.check_destination(tmp_path / "project" / "dist", [adapter])
