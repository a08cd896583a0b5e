"""`deploykit ship`: adapter to a verified Ollama model, resumable, with a release bundle."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.demo import models
from deploykit.demo import tokenizer as tok
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tools
from deploykit.llamacpp.vocab import read_vectors
from tests.support.cli import run_cli
from tests.support.models import DEMO_GGUF

ROOT = Path(__file__).resolve().parents[2]


#: The demo model is random and tiny: its Q4_K_M's mean KL divergence vs the f16 is about 0.21,
#: beyond the 0.1 a real model's Q4_K_M must meet (deploykit/gguf/kld_limits.toml).
DEMO_KLD = "0.3"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3.5", "gemma4"])
def test_ship_end_to_end_against_the_test_server(arch, demo_dirs, ollama_server, tmp_path):
    """Each demo ships: create, then health renders the whole probe set through the server and
    compares it with the model's own Jinja (for Gemma 4: the test server's port of Ollama's
    gemma4 renderer, tests/support/ollama_renderers.py), and the quants answer every probe."""
    d = demo_dirs[arch]
    name = f"demo-{arch}"
    proc = run_cli(
        "ship",
        "--adapter",
        str(d / "adapter"),
        "--quant",
        "q4_k_m,q8_0",
        "--quality-gate",
        DEMO_KLD,
        "--name",
        name,
        "--target",
        "ollama",
        "--probes",
        str(d / "probes.json"),
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "dist"),
        "--json",
        env={"OLLAMA_HOST": ollama_server},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert manifest["ollama"]["created"] == [f"{name}:q4_k_m", f"{name}:q8_0", f"{name}:latest"]
    for tag, report in manifest["ollama"]["health"].items():
        failed = [c for c in report["checks"] if not c["ok"]]
        assert not failed, (tag, failed)
        [parity] = [c for c in report["checks"] if c["name"] == "render parity"]
        assert parity["ok"] and parity["data"]["family"], (tag, parity)
        compared = [p for p in parity["data"]["probes"] if p["result"] == "ok"]
        assert len(compared) >= 15, (tag, parity["detail"])
    modelfile = (tmp_path / "dist" / "Modelfile").read_text()
    if arch == "gemma4":  # Ollama's built-in renderer and parser, no TEMPLATE
        assert "RENDERER gemma4-large\n" in modelfile and "PARSER gemma4\n" in modelfile
        assert "TEMPLATE" not in modelfile and "REQUIRES 0.21.0" in modelfile
    for out in manifest["outputs"]:
        assert _sha(Path(out["path"])) == out["sha256"]
        assert Path(out["modelfile"]).read_text().count(f"FROM ./{Path(out['path']).name}") == 1
    on_disk = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert on_disk["outputs"] == manifest["outputs"]
    for a in on_disk["inputs"]["adapters"][0]["files"]:
        assert _sha(Path(a["path"])) == a["sha256"]
    assert on_disk["llama_cpp"]["commit"] and on_disk["versions"]["torch"]
    assert (tmp_path / "dist" / "README.md").is_file()
    # the q8_0 quant answers exactly like the fine-tune (checked by verify and by health)
    assert manifest["verification"]["Q8_0"]["ok"] is True
    for qtype in ("f16", "Q8_0"):  # every probe answered exactly, tokenization identical
        checks = {c["name"]: c for c in manifest["verification"][qtype]["checks"]}
        assert checks["probes"]["data"]["exact"] == 4, (qtype, checks["probes"]["detail"])
        assert checks["tokenizer_parity"]["status"] == "pass", checks["tokenizer_parity"]
    # the f16's KL base is computed for the first quant and reused by the second, then removed
    for qtype, reused in (("Q4_K_M", False), ("Q8_0", True)):
        checks = {c["name"]: c for c in manifest["verification"][qtype]["checks"]}
        quality = checks["quant_quality"]["data"]
        assert quality["kl_base_reused"] is reused, (qtype, quality)
        assert (quality["seconds"]["kl_base"] == 0) is reused
        assert quality["kld_se"] is not None
        seconds = manifest["verification"][qtype]["seconds_per_check"]
        assert set(seconds) == set(checks)
    assert not list((tmp_path / "work").glob(".kl-base-*"))
    [q8] = [o for o in manifest["outputs"] if o["type"] == "Q8_0"]
    info = gguf_meta.read(Path(q8["path"]))
    tokenizer = (info.get("tokenizer.ggml.model"), info.get("tokenizer.ggml.pre"))
    assert (info.arch, *tokenizer) == DEMO_GGUF[arch]


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3.5", "gemma4"])
def test_demo_merge_is_bit_exact_with_peft(arch, demo_dirs, tmp_path):
    """`deploykit merge` of each demo equals peft's merge_and_unload() on the base in its own
    dtype, bit for bit (Qwen3.5's mtp.* block, which transformers does not load, is carried
    over unchanged)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d = demo_dirs[arch]
    out = tmp_path / "merged"
    proc = run_cli("merge", "--adapter", str(d / "adapter"), "--out", str(out), "--dtype", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {}
    for f in sorted(out.glob("*.safetensors")):
        ours.update(load_file(f))
    base = load_file(d / "base" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(d / "base", dtype=torch.bfloat16)
    ref = PeftModel.from_pretrained(model, d / "adapter").merge_and_unload().state_dict()
    assert ref.pop("lm_head.weight").equal(ref["model.embed_tokens.weight"])  # tied: stored once
    ref.update({k: v for k, v in base.items() if k not in ref})  # what transformers skips
    assert sorted(ours) == sorted(ref)
    different = [k for k in ref if ours[k].dtype != ref[k].dtype or not ours[k].equal(ref[k])]
    assert not different, different
    changed = [k for k in base if not base[k].equal(ours[k])]
    adapted = [k for k in load_file(d / "adapter" / "adapter_model.safetensors") if "lora_A" in k]
    assert len(changed) == len(adapted) >= 13  # every adapted projection, nothing else


@pytest.mark.parametrize("arch", ["qwen3.5", "gemma4"])
def test_demo_gguf_tokenizes_its_vocabularys_own_test_vectors(arch, f16, tree):
    """llama.cpp's test vectors for the vocabulary the demo tokenizer was rebuilt from
    (``models/ggml-vocab-*.gguf.inp/.out``), through the converted GGUF: all exact."""
    spec = tok.SPECS[models.ARCHS[arch].tokenizer]
    vectors = read_vectors(tree.path / "models" / f"ggml-vocab-{spec.vocab or spec.name}.gguf")
    texts = [t for t, _ in vectors]
    [sep] = tools.tokenize(f16[arch], spec.eos, True, tree)  # a hard boundary for both
    ids = tools.tokenize(f16[arch], spec.eos.join(texts), True, tree)
    got: list[list[int]] = [[]]
    for i in ids:
        got.append([]) if i == sep else got[-1].append(i)
    assert len(got) == len(vectors) >= 46
    wrong = [(t, want, have) for (t, want), have in zip(vectors, got, strict=True) if want != have]
    assert not wrong, wrong[:3]


def _ship(d: Path, tmp: Path, quant: str, **kw):
    return [
        sys.executable,
        "-m",
        "deploykit",
        "ship",
        "--adapter",
        str(d / "adapter"),
        "--quant",
        quant,
        "--name",
        "resume",
        "--target",
        "none",
        "--verify",
        "none",
        "--work-dir",
        str(tmp / "work"),
        "--out",
        str(tmp / "dist"),
    ]


def test_killed_during_conversion_resumes_from_the_merge(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    proc = subprocess.Popen(
        _ship(d, tmp_path, "q8_0"),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = tmp_path / "work"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if any(p.name.startswith(".convert-") for p in work.glob(".*")):
            break
        assert proc.poll() is None, "ship ended before conversion started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any(p.name.startswith("convert-") for p in work.iterdir())  # nothing looks done
    again = subprocess.run(_ship(d, tmp_path, "q8_0"), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "overlay: reusing the finished step" in again.stderr
    assert "convert ..." in again.stderr


def test_adding_a_quant_reruns_only_its_steps(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    first = subprocess.run(_ship(d, tmp_path, "q8_0"), cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(
        _ship(d, tmp_path, "q8_0,q4_k_m"), cwd=ROOT, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stderr
    for step in ("overlay", "convert", "verify", "quantize-q8_0", "verify-q8_0"):
        assert f"{step}: reusing the finished step" in log, step
    assert "quantize-q4_k_m ..." in log and "verify-q4_k_m ..." in log
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert [o["type"] for o in manifest["outputs"]] == ["Q8_0", "Q4_K_M"]


def test_without_ollama_it_stops_at_the_bundle_and_says_how_to_finish(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    cmd = _ship(d, tmp_path, "q8_0")
    cmd[cmd.index("--target") + 1] = "auto"
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OLLAMA_HOST": "127.0.0.1:9"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no Ollama server answers at http://127.0.0.1:9" in proc.stderr
    assert f"deploykit create resume -f {tmp_path / 'dist' / 'Modelfile'}" in proc.stderr


def test_config_file_supplies_options_and_the_command_line_wins(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    (tmp_path / "deploykit.toml").write_text(
        f'[ship]\nadapter = ["{d / "adapter"}"]\nquant = "q8_0"\nname = "fromconfig"\n'
        f'target = "none"\nverify = "none"\nwork-dir = "{tmp_path / "work"}"\n'
    )
    proc = run_cli(
        "ship", "--name", "fromcli", "--out", str(tmp_path / "dist"), "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads(proc.stdout)
    assert manifest["name"] == "fromcli" and [o["type"] for o in manifest["outputs"]] == ["Q8_0"]


def test_bad_input_is_one_error(tmp_path):
    proc = run_cli("ship", "--quant", "q4_k_m")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "error: give --adapter (one or more) or --model, not both or neither "
        "(hint: --adapter DIR for a PEFT adapter, --model DIR for a merged model)"
    ]


def test_one_adapter_under_two_names_in_one_work_dir(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    for name in ("first", "second"):
        cmd = _ship(d, tmp_path, "q8_0")
        cmd[cmd.index("--name") + 1] = name
        cmd[cmd.index("--out") + 1] = str(tmp_path / "dist" / name)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        manifest = json.loads((tmp_path / "dist" / name / "manifest.json").read_text())
        assert [Path(o["path"]).name for o in manifest["outputs"]] == [f"{name}-Q8_0.gguf"]
    assert "overlay: reusing the finished step" in proc.stderr  # the overlay is shared
    assert "convert ..." in proc.stderr  # the GGUF is named after the model: its own step


def test_a_namespaced_name_names_the_files_after_the_model(demo_dirs, tmp_path):
    cmd = _ship(demo_dirs["qwen2"], tmp_path, "q8_0")
    cmd[cmd.index("--name") + 1] = "acme/assistant"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert manifest["name"] == "acme/assistant"
    assert [Path(o["path"]).name for o in manifest["outputs"]] == ["assistant-Q8_0.gguf"]
    assert manifest["options"]["quants"] == ["q8_0"]


def test_a_quant_that_fails_its_checks_stops_ship_before_the_bundle(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    cmd = _ship(d, tmp_path, "q8_0,q4_k_m")
    cmd[cmd.index("--verify") + 1] = "light"  # the table's limit: Q4_K_M of the demo fails it
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 7, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: the Q4_K_M GGUF failed verification: quant_quality (hint: use a larger quant "
        "type or --calibration data for an importance matrix)"
    ]
    assert "FAIL  Q4_K_M quant_quality: mean KLD" in proc.stderr
    assert not (tmp_path / "dist").exists()  # nothing bundled, nothing created

    proc = subprocess.run(
        [*cmd, "--allow-failed", "q4_k_m"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing the finished step" in proc.stderr  # the checks are not run again
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert manifest["shipped_despite_failures"] == {"Q4_K_M": ["quant_quality"]}
    assert manifest["verification"]["Q8_0"]["ok"] is True
    card = (tmp_path / "dist" / "README.md").read_text()
    assert "Q4_K_M was shipped although it failed verification" in card


def test_a_corrupted_cache_entry_is_redone_and_the_users_files_stay(demo_dirs, tmp_path):
    cmd = _ship(demo_dirs["qwen2"], tmp_path, "q8_0")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    dist = tmp_path / "dist"
    (dist / "notes.txt").write_text("the release engineer's notes")
    [cached] = (tmp_path / "work").glob("quantize-q8_0-*/resume-Q8_0.gguf")
    with open(cached, "r+b") as fh:  # truncated behind deploykit's back
        fh.truncate(cached.stat().st_size // 2)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resume-Q8_0.gguf changed since the step wrote it: doing it again" in again.stderr
    manifest = json.loads((dist / "manifest.json").read_text())
    [out] = manifest["outputs"]
    assert _sha(Path(out["path"])) == out["sha256"]
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"resume-Q8_0.gguf", "resume-Q8_0.gguf.sha256", "Modelfile", "README.md"}
    assert all(_sha(dist / n) == f["sha256"] for n, f in listed.items())
    assert (dist / "notes.txt").read_text() == "the release engineer's notes"


def test_out_above_the_inputs_is_refused_and_nothing_is_touched(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    cmd = _ship(d, tmp_path, "q8_0")
    cmd[cmd.index("--out") + 1] = str(d)
    proc = subprocess.run([*cmd, "--force"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "is an input or holds one" in proc.stderr
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before


def test_create_refuses_a_bundle_file_that_changed(demo_dirs, ollama_server, tmp_path):
    from deploykit.ollama.client import Client
    from tests.support.cli import invoke

    proc = subprocess.run(
        _ship(demo_dirs["qwen2"], tmp_path, "q8_0"), cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    gguf = tmp_path / "dist" / "resume-Q8_0.gguf"
    with open(gguf, "r+b") as fh:  # one byte flipped behind deploykit's back
        fh.seek(gguf.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    r = invoke("create", "changed", "-f", str(tmp_path / "dist" / "Modelfile"),
               env={"OLLAMA_HOST": ollama_server})  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "changed since deploykit wrote its bundle" in r.stderr
    with Client(ollama_server) as c:
        assert "changed:latest" not in {m["name"] for m in c.tags()}

    with open(gguf, "r+b") as fh:  # the GGUF restored; now the Modelfile is edited
        fh.seek(gguf.stat().st_size // 2)
        fh.write(byte)
    modelfile = tmp_path / "dist" / "Modelfile"
    modelfile.write_text(
        modelfile.read_text().replace("PARAMETER", "PARAMETER temperature 2\nPARAMETER", 1)
    )
    r = invoke("create", "changed", "-f", str(modelfile), env={"OLLAMA_HOST": ollama_server})
    assert r.returncode == 3 and "Modelfile changed since deploykit wrote its bundle" in r.stderr


def test_a_wrong_answer_stops_ship_and_verify_none_is_recorded_as_unverified(demo_dirs, tmp_path):
    d = demo_dirs["qwen2"]
    probes = json.loads((d / "probes.json").read_text())
    probes["probes"][0]["answer"] = "Something the fine-tune never says."
    wrong = tmp_path / "probes.json"
    wrong.write_text(json.dumps(probes))
    cmd = _ship(d, tmp_path, "q8_0")
    cmd[cmd.index("--verify") + 1] = "light"
    proc = subprocess.run([*cmd, "--probes", str(wrong)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "failed verification: probes" in proc.stderr  # the f16 already fails it
    assert not (tmp_path / "dist").exists()

    proc = subprocess.run(_ship(d, tmp_path, "q8_0"), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
    assert manifest["verification"]["Q8_0"]["verified"] is False
    assert (
        "**Not verified** (`--verify none`): F16, Q8_0."
        in (tmp_path / "dist" / "README.md").read_text()
    )
