"""`deploykit verify`: the demo GGUFs load, generate, match their reference tokenizer and
logits and answer the probes; broken tokenizers and bad quantizations are caught (exit 7); a
llama-server that crashes is a toolchain error (exit 6), not a failed check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.core.errors import ToolchainError
from deploykit.core.report import Report
from deploykit.demo.tokenizer import QWEN2_REGEX
from deploykit.gguf import verify
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp.server import serve
from tests.support.cli import invoke, one_error_line, run_cli
from tests.support.models import gguf, variant

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def break_qwen2_regex(folder: Path) -> None:
    text = (folder / "tokenizer.json").read_text()
    old = json.dumps(QWEN2_REGEX)[1:-1]
    assert old in text
    (folder / "tokenizer.json").write_text(text.replace(old, json.dumps(GPT2_REGEX)[1:-1]))


def _checks(report: Report | dict) -> dict[str, dict]:
    checks = report.to_dict()["checks"] if isinstance(report, Report) else report["checks"]
    return {c["name"]: c for c in checks}


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K_M"])
def test_demo_ggufs_pass_every_check(arch, qtype, f16, quants, merged, demo_dirs):  # noqa: F811
    path = f16[arch] if qtype == "F16" else quants[arch][qtype]
    report = verify.verify(path, reference=merged[arch], probes=demo_dirs[arch] / "probes.json")
    checks = _checks(report)
    assert report.ok, [c.detail for c in report.checks if c.status != "pass"]
    assert checks["metadata"]["data"]["file_type"] == qtype
    assert checks["generates"]["data"]["tokens"] >= 1  # llama.cpp loads it and generates
    tok = checks["tokenizer_parity"]["data"]
    assert tok["suite_equal"] == tok["suite_total"] == 46 and tok["chat_equal"]
    # every probe answered exactly, Q4_K_M included (measured 4/4 on both demo families)
    assert checks["probes"]["data"]["exact"] == 4
    logits = checks["logits_parity"]["data"]
    assert logits["positions"] >= 30
    if qtype == "F16":
        assert logits["top1_agreement"] == 1.0 and logits["max_logprob_diff"] < 0.1
    elif qtype == "Q8_0":
        assert logits["top1_agreement_decisive"] >= 0.98


def test_wrong_pre_tokenizer_regex_is_caught(f16, merged, work):  # noqa: F811
    """A tokenizer.json whose pre-tokenizer regex is wrong (GPT-2's instead of Qwen2's) does
    not tokenize like the GGUF: verify compares with the tokenizers library loading the file
    as is (AutoTokenizer in transformers 5 would rebuild Qwen2's regex and hide it)."""
    model = variant(merged["qwen2"], work / "qwen2-badpre", break_qwen2_regex)
    proc = invoke("verify", str(f16["qwen2"]), "--reference", str(model), "--json")
    line = one_error_line(proc, 7)
    assert "failed 1 check(s): tokenizer_parity" in line
    tok = _checks(json.loads(proc.stdout))["tokenizer_parity"]
    assert tok["status"] == "fail" and 0 < tok["data"]["suite_equal"] < 46
    assert tok["data"]["mismatches"]


def test_convert_refuses_the_broken_tokenizer_too(merged, work, tmp_path):  # noqa: F811
    model = variant(merged["qwen2"], work / "qwen2-badpre", break_qwen2_regex)
    out = tmp_path / "bad.gguf"
    line = one_error_line(run_cli("convert", str(model), "--out", str(out)), 6)
    assert "tokenizer.json's own pre-tokenizer (chkhsh 1a9667f5" in line
    assert "detected `qwen2`" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_eos_is_caught(merged, work, demo_dirs):  # noqa: F811
    def drop_eos(folder: Path) -> None:
        for name, key in (
            ("tokenizer_config.json", "eos_token"),
            ("config.json", "eos_token_id"),
            ("generation_config.json", "eos_token_id"),
        ):
            cfg = json.loads((folder / name).read_text())
            cfg.pop(key, None)
            (folder / name).write_text(json.dumps(cfg))

    model = variant(merged["qwen2"], work / "qwen2-noeos", drop_eos)
    path = gguf(work, model, "qwen2-noeos-F16.gguf")
    assert gguf_meta.read(path).get("tokenizer.ggml.eos_token_id") is None
    report = verify.verify(path, probes=demo_dirs["qwen2"] / "probes.json")
    meta = _checks(report)["metadata"]
    assert not report.ok and meta["status"] == "fail"
    assert "no eos token" in meta["detail"]


def test_quantization_quality_gate(f16, quants, tree, tmp_path):  # noqa: F811
    q4, base = quants["qwen2"]["Q4_K_M"], f16["qwen2"]
    calib = tmp_path / "calib.txt"  # about 400 tokens: three 128-token chunks
    calib.write_text(verify.default_calibration(tree).read_text()[:1600])
    # a strict gate fails the command (exit 7) and the report carries the measurement
    proc = invoke(
        "verify",
        str(q4),
        "--baseline",
        str(base),
        "--calibration",
        str(calib),
        "--max-kld",
        "0.0001",
        "--json",
    )
    assert "failed 1 check(s): quant_quality" in one_error_line(proc, 7)
    report = json.loads(proc.stdout)
    assert report["failed"] == ["quant_quality"]
    quality = _checks(report)["quant_quality"]["data"]
    assert 0.0001 < quality["kld_mean"] < 5.0 and quality["ppl"] > 0 and quality["ppl_base"] > 0
    assert quality["same_top_p"] > 0
    # the gate passes under a threshold above the measured divergence
    assert verify.verify(q4, baseline=base, calibration=calib, max_kld=5.0).ok


def test_non_gguf_input(tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_text("hello")
    assert "is not a GGUF file" in one_error_line(invoke("verify", str(fake)), 3)


def test_a_crashing_llama_server_is_a_toolchain_error(f16, tree, tmp_path):
    """A llama-server that dies of a signal while starting is exit 6, not a failed check."""
    fake = tmp_path / "llama.cpp"
    (fake / "build" / "bin").mkdir(parents=True)
    (fake / "convert_hf_to_gguf.py").symlink_to(tree.converter)
    server = fake / "build" / "bin" / "llama-server"
    server.write_text("#!/bin/sh\necho 'llama-server starting'\nkill -SEGV $$\n")
    server.chmod(0o755)
    proc = invoke("verify", str(f16["qwen2"]), env={"LLAMA_CPP_DIR": str(fake)})
    line = one_error_line(proc, 6)
    assert "llama-server crashed (killed by SIGSEGV)" in line
    log = Path(line.split("its full output is in ", 1)[1].split(";", 1)[0])
    assert "llama-server starting" in log.read_text()


def test_a_llama_server_killed_while_serving_is_a_toolchain_error(f16):
    with serve(f16["qwen2"], ctx_size=512) as server:
        assert server.tokenize("Hello", special=False)
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(ToolchainError, match=r"llama-server crashed \(killed by SIGKILL\)"):
            server.post("/completion", {"prompt": "Hello", "n_predict": 4})


def test_the_calibration_budget_grows_only_when_the_standard_error_needs_it(
    f16, quants, tree, monkeypatch
):
    """FIRST_CHUNKS when the KLD's standard error is within SE_SHARE of the limit or the
    verdict is clear; more (here: the whole text) when the error is too large for a KLD this
    close to the limit; the report says which."""
    q4, base = quants["qwen2"]["Q4_K_M"], f16["qwen2"]
    cal = verify.default_calibration(tree)
    loose = verify.check_quality(q4, base, cal, 1.0, tree).data
    assert loose["chunks"] == verify.FIRST_CHUNKS and loose["kld_se_ok"]
    assert loose["calibration_budget"]["grown"] is False
    monkeypatch.setattr(verify, "SE_SHARE", 1e-4)  # no error is small enough
    clear = verify.check_quality(q4, base, cal, loose["kld_mean"] / 100, tree).data
    assert clear["chunks"] == 1 and clear["calibration_budget"]["grown"] is False
    monkeypatch.setattr(verify, "_DECISIVE", 1e9)  # every KLD is close to the limit
    close = verify.check_quality(q4, base, cal, loose["kld_mean"], tree).data
    assert close["calibration_budget"] == {"first_chunks": 1, "grown": True, "whole_text": True}
    assert close["chunks"] > 1 and close["kld_se_ok"] is False
