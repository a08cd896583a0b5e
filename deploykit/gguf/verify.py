"""Prove a GGUF is right: metadata, it runs, tokenizer and logits parity, probes, quant quality.

Every check returns a :class:`Check`; ``verify`` collects them into the JSON report the
ship pipeline stores in its manifest. A failed check makes the command exit 7.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import InputError, VerificationError
from deploykit.gguf.convert import default_template, model_chat_template
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tree as llamacpp
from deploykit.llamacpp.server import Server, default_threads, serve

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"

#: Minimum top-1 agreement with the reference model, by GGUF file type (others: reported).
TOP1_THRESHOLDS = {"F32": 1.0, "F16": 1.0, "BF16": 1.0, "Q8_0": 0.98}
DEFAULT_MAX_KLD = 0.1
#: Positions where the reference's best two tokens are closer than this (nats) are near-ties:
#: agreement there is reported but not gated (any rounding may flip them).
TIE_MARGIN = 0.1

#: Conversations used when no probes are given (multilingual, like the tokenizer suite).
DEFAULT_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Écris un haïku sur la mer 🌊, s'il te plaît."},
    ],
    [{"role": "user", "content": "你好，请用一句话介绍你自己。"}],
]
PLAIN_PROMPTS = ["The quick brown fox jumps over the lazy dog. 3.14159 is", "def fib(n):\n    "]


@dataclass
class Check:
    """One check's outcome: ``pass``, ``fail``, ``warn`` or ``skip``, a line, and data."""

    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


# --- references --------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def reference_eos_ids(ref: Path, tokenizer: Any | None) -> set[int]:
    """Every id the reference model treats as end of sequence."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        eos = _json(ref / name).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
    eos_tok = _json(ref / "tokenizer_config.json").get("eos_token")
    if isinstance(eos_tok, dict):
        eos_tok = eos_tok.get("content")
    if eos_tok and tokenizer is not None and (tid := tokenizer.token_to_id(eos_tok)) is not None:
        ids.add(tid)
    return ids


def load_reference_tokenizer(ref: Path):
    """The reference's tokenizer.json loaded by the ``tokenizers`` library itself.

    Not ``AutoTokenizer``: transformers 5 rebuilds some tokenizers (Qwen2) from code and would
    hide a broken tokenizer.json.
    """
    from tokenizers import Tokenizer

    path = ref / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def render_chat(template: str, messages: list[dict], bos: str, eos: str, gen: bool = True) -> str:
    """``messages`` rendered through a Hugging Face chat template (jinja2, as transformers)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(
        x, ensure_ascii=False, indent=indent
    )
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=gen, bos_token=bos, eos_token=eos
    )


def test_texts(tree: llamacpp.Tree, pre: str | None) -> list[str]:
    """The fixed multilingual suite: llama.cpp's tokenizer test texts (``models/*.inp``)."""
    from deploykit.demo.tokenizer import read_vectors

    models = tree.path / "models"
    for name in (pre, "llama-bpe", "qwen2"):
        if name and (models / f"ggml-vocab-{name}.gguf.inp").is_file():
            return [t for t, _ in read_vectors(models / f"ggml-vocab-{name}.gguf")]
    raise InputError(f"no tokenizer test texts in {models}", "run `make vendor`")


def llama_tokenize(gguf: Path, text: str, special: bool, tree: llamacpp.Tree) -> list[int]:
    """``llama-tokenize`` on ``text`` (vocabulary only, no BOS)."""
    fd, name = tempfile.mkstemp(prefix="deploykit-tok-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    cmd = [
        str(llamacpp.tool("llama-tokenize", tree)),
        "-m",
        str(gguf),
        "-f",
        name,
        "--ids",
        "--no-bos",
        "--no-escape",
        "--log-disable",
    ]
    if not special:
        cmd.append("--no-parse-special")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(name)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise VerificationError(
            f"llama-tokenize failed on {gguf.name}: {proc.stderr.strip()[-300:]}",
            "the GGUF's vocabulary is unusable; reconvert it",
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- checks ------------------------------------------------------------------------------


def check_metadata(
    info: gguf_meta.GGUFInfo, ref: Path | None, end_of_turn: str | None, ref_tok: Any | None
) -> Check:
    """Architecture, pre-tokenizer, bos/eos, chat template, tensor count and types."""
    bos_id = info.get("tokenizer.ggml.bos_token_id")
    eos_id = info.get("tokenizer.ggml.eos_token_id")
    eot_id = info.get("tokenizer.ggml.eot_token_id")
    data = {
        "architecture": info.arch,
        "name": info.get("general.name"),
        "file_type": info.file_type,
        "tokenizer_model": info.get("tokenizer.ggml.model"),
        "pre_tokenizer": info.get("tokenizer.ggml.pre"),
        "bos_token_id": bos_id,
        "bos_token": gguf_meta.token_text(info, bos_id),
        "eos_token_id": eos_id,
        "eos_token": gguf_meta.token_text(info, eos_id),
        "eot_token_id": eot_id,
        "add_bos_token": info.get("tokenizer.ggml.add_bos_token"),
        "vocab_size": getattr(info.get("tokenizer.ggml.tokens"), "length", None)
        or len(info.get("tokenizer.ggml.tokens") or []),
        "chat_template": bool(info.get("tokenizer.chat_template")),
        "context_length": info.get(f"{info.arch}.context_length"),
        "tensor_count": len(info.tensors),
        "tensor_types": info.tensor_types(),
    }
    problems, warnings = [], []
    if not info.arch:
        problems.append("no general.architecture")
    if info.get("tokenizer.ggml.model") == "gpt2" and info.get("tokenizer.ggml.pre") in (
        None,
        "default",
    ):
        problems.append("BPE vocabulary without a known pre-tokenizer (tokenizer.ggml.pre)")
    if eos_id is None:
        problems.append("no eos token (tokenizer.ggml.eos_token_id): generation never stops")
    if end_of_turn:
        ends = {gguf_meta.token_text(info, eos_id), gguf_meta.token_text(info, eot_id)}
        if end_of_turn not in ends:
            problems.append(
                f"the chat's end-of-turn token {end_of_turn} is neither eos "
                f"({data['eos_token']}) nor eot"
            )
    if ref is not None and eos_id is not None:
        ref_eos = reference_eos_ids(ref, ref_tok)
        if ref_eos and eos_id not in ref_eos:
            problems.append(f"eos id {eos_id} is not one of the reference's {sorted(ref_eos)}")
    if not data["chat_template"]:
        warnings.append("no chat template (tokenizer.chat_template): give Ollama a TEMPLATE")
    if ref is not None:
        want = default_template(model_chat_template(ref))
        if want and info.get("tokenizer.chat_template") != want:
            problems.append("the chat template differs from the reference model's")
    summary = (
        f"{info.arch}, {data['file_type']}, pre={data['pre_tokenizer']}, "
        f"eos={data['eos_token']}, {len(info.tensors)} tensors"
    )
    if problems:
        return Check("metadata", FAIL, "; ".join(problems), data)
    if warnings:
        return Check("metadata", WARN, f"{summary}; " + "; ".join(warnings), data)
    return Check("metadata", PASS, summary, data)


def check_generates(server: Server) -> Check:
    """llama.cpp loads the file and generates a few tokens."""
    started = time.monotonic()
    out = server.post(
        "/completion",
        {"prompt": "Hello", "n_predict": 8, "temperature": 0, "return_tokens": True},
    )
    n = out.get("tokens_predicted", 0)
    data = {"tokens": n, "text": out.get("content", ""), "seconds": time.monotonic() - started}
    if n < 1:
        return Check("generates", FAIL, "llama.cpp generated nothing", data)
    return Check("generates", PASS, f"llama.cpp loaded it and generated {n} tokens", data)


def _split(ids: list[int], sep: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for t in ids:
        if t == sep:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def check_tokenizer(
    gguf: Path,
    info: gguf_meta.GGUFInfo,
    ref_tok: Any,
    ref_template: str | None,
    conversation: list[dict],
    tree: llamacpp.Tree,
) -> Check:
    """llama.cpp's tokenization equals the ``tokenizers`` library's on the suite and a chat."""
    texts = test_texts(tree, info.get("tokenizer.ggml.pre"))
    eos_id = info.get("tokenizer.ggml.eos_token_id")
    sep = gguf_meta.token_text(info, eos_id)
    expected = [ref_tok.encode(t, add_special_tokens=False).ids for t in texts]
    mismatches = []
    if sep is not None and not any(sep in t for t in texts):
        # one llama-tokenize run: texts joined by a special token, which both tokenizers
        # treat as a hard boundary; split the ids back on it
        got = _split(llama_tokenize(gguf, sep.join(texts), True, tree), eos_id)
        if len(got) != len(texts):
            got = [llama_tokenize(gguf, t, False, tree) for t in texts]
    else:
        got = [llama_tokenize(gguf, t, False, tree) for t in texts]
    for text, want, have in zip(texts, expected, got, strict=True):
        if want != have:
            mismatches.append({"text": text[:80], "reference": want[:24], "gguf": have[:24]})
    ok = len(texts) - len(mismatches)
    data: dict[str, Any] = {"suite_total": len(texts), "suite_equal": ok}
    chat_ok = True
    tmpl = ref_template or info.get("tokenizer.chat_template")
    if tmpl:
        bos = gguf_meta.token_text(info, info.get("tokenizer.ggml.bos_token_id")) or ""
        rendered = render_chat(tmpl, conversation, bos, sep or "")
        want = ref_tok.encode(rendered, add_special_tokens=False).ids
        have = llama_tokenize(gguf, rendered, True, tree)
        chat_ok = want == have
        data["chat_tokens"] = len(want)
        data["chat_equal"] = chat_ok
        if not chat_ok:
            mismatches.append({"text": rendered[:80], "reference": want[:24], "gguf": have[:24]})
    data["mismatches"] = mismatches[:5]
    detail = f"{ok}/{len(texts)} suite texts equal" + (
        f", chat rendering {'equal' if chat_ok else 'DIFFERENT'}" if tmpl else ""
    )
    if mismatches:
        first = mismatches[0]
        detail += (
            f"; first difference on {first['text']!r}: reference {first['reference'][:8]} "
            f"vs gguf {first['gguf'][:8]}"
        )
        return Check("tokenizer_parity", FAIL, detail, data)
    return Check("tokenizer_parity", PASS, detail, data)


def _prompts(ref_tok: Any, ref: Path, info, conversations: list[list[dict]]) -> list[list[int]]:
    tmpl = default_template(model_chat_template(ref)) or info.get("tokenizer.chat_template")
    bos = gguf_meta.token_text(info, info.get("tokenizer.ggml.bos_token_id")) or ""
    eos = gguf_meta.token_text(info, info.get("tokenizer.ggml.eos_token_id")) or ""
    prompts = []
    if tmpl:
        for conv in conversations:
            prompts.append(
                ref_tok.encode(render_chat(tmpl, conv, bos, eos), add_special_tokens=False).ids
            )
    for text in PLAIN_PROMPTS:
        prompts.append(ref_tok.encode(text, add_special_tokens=True).ids)
    return prompts


def check_logits(
    server: Server,
    info: gguf_meta.GGUFInfo,
    ref: Path,
    ref_tok: Any,
    conversations: list[list[dict]],
    n_predict: int = 8,
    top_k: int = 3,
) -> Check:
    """Top-1 agreement and max |log-prob difference| between the HF model and the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32)
    model.eval()
    agree = total = decisive = decisive_agree = 0
    max_diff = 0.0
    for ids in _prompts(ref_tok, ref, info, conversations):
        out = server.post(
            "/completion",
            {
                "prompt": ids,
                "n_predict": n_predict,
                "temperature": 0,
                "n_probs": top_k,
                "return_tokens": True,
                "cache_prompt": False,
            },
        )
        steps = out.get("completion_probabilities") or []
        gen = [s["id"] for s in steps]
        if not gen:
            continue
        with torch.no_grad():  # logits only where llama.cpp predicted: the last len(gen)+1
            logits = model(torch.tensor([ids + gen]), logits_to_keep=len(gen) + 1).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        for i, step in enumerate(steps):
            row = logp[i]
            same = int(int(row.argmax()) == step["top_logprobs"][0]["id"])
            best = row.topk(2).values
            total += 1
            agree += same
            if float(best[0] - best[1]) >= TIE_MARGIN:
                decisive += 1
                decisive_agree += same
            for cand in step["top_logprobs"]:
                if math.isfinite(cand["logprob"]):
                    max_diff = max(max_diff, abs(float(row[cand["id"]]) - cand["logprob"]))
    del model
    rate = agree / total if total else 0.0
    gated = decisive_agree / decisive if decisive else 1.0
    ftype = info.file_type or "?"
    need = TOP1_THRESHOLDS.get(ftype)
    data = {
        "positions": total,
        "top1_agreement": rate,
        "decisive_positions": decisive,
        "top1_agreement_decisive": gated,
        "tie_margin": TIE_MARGIN,
        "max_logprob_diff": max_diff,
        "threshold": need,
        "file_type": ftype,
    }
    detail = (
        f"top-1 agreement {agree}/{total} ({rate:.1%}); where the reference is decisive "
        f"(margin >= {TIE_MARGIN}) {decisive_agree}/{decisive} ({gated:.1%}); "
        f"max |log-prob diff| {max_diff:.4f}"
        + (f" (needs {need:.0%} for {ftype})" if need is not None else f" ({ftype}: reported)")
    )
    if total == 0:
        return Check("logits_parity", FAIL, "llama.cpp returned no log-probs", data)
    if need is not None and gated < need:
        return Check("logits_parity", FAIL, detail, data)
    return Check("logits_parity", PASS, detail, data)


def gguf_prompt(server: Server, info: gguf_meta.GGUFInfo, messages: list[dict]) -> list[int]:
    """``messages`` through the GGUF's embedded template (rendered as transformers does),
    tokenized by llama.cpp: the prompt the fine-tune was trained on, as the GGUF sees it."""
    tmpl = info.get("tokenizer.chat_template")
    if not tmpl:
        raise VerificationError(f"{info.path.name} has no chat template to render probes with")
    bos = gguf_meta.token_text(info, info.get("tokenizer.ggml.bos_token_id")) or ""
    eos = gguf_meta.token_text(info, info.get("tokenizer.ggml.eos_token_id")) or ""
    text = render_chat(tmpl, messages, bos, eos)
    ids = server.tokenize(text, special=True)
    bos_id = info.get("tokenizer.ggml.bos_token_id")
    if info.get("tokenizer.ggml.add_bos_token") and bos_id is not None and ids[:1] != [bos_id]:
        ids = [bos_id, *ids]  # the template did not write BOS; llama.cpp would add it
    return ids


def check_probes(
    server: Server, info: gguf_meta.GGUFInfo, probes: dict, max_tokens: int = 64
) -> Check:
    """Greedy answers from the GGUF equal the expected answers exactly."""
    rows = []
    for probe in probes["probes"]:
        messages = probe.get("messages") or [{"role": "user", "content": probe["prompt"]}]
        ids = gguf_prompt(server, info, messages)
        out = server.post(
            "/completion",
            {"prompt": ids, "n_predict": max_tokens, "temperature": 0, "cache_prompt": False},
        )
        got = out.get("content", "")
        ok = got == probe["answer"] and out.get("stop_type") == "eos"
        rows.append(
            {
                "prompt": probe.get("prompt", messages[-1]["content"]),
                "expected": probe["answer"],
                "got": got,
                "stop": out.get("stop_type"),
                "ok": ok,
            }
        )
    n_ok = sum(r["ok"] for r in rows)
    data = {
        "total": len(rows),
        "exact": n_ok,
        "agreement": n_ok / len(rows) if rows else 0.0,
        "answers": rows,
    }
    detail = f"{n_ok}/{len(rows)} probes answered exactly"
    bad = [r for r in rows if not r["ok"]]
    if bad:
        detail += (
            f"; e.g. {bad[0]['prompt']!r}: expected {bad[0]['expected']!r}, got {bad[0]['got']!r}"
        )
        return Check("probes", FAIL, detail, data)
    return Check("probes", PASS, detail, data)


def _perplexity(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        raise VerificationError(
            f"llama-perplexity failed: {(lines or ['?'])[-1][:300]}",
            "check --calibration (it needs at least 64 tokens of text)",
        )
    return text


def check_quality(
    gguf: Path,
    baseline: Path,
    calibration: Path,
    max_kld: float,
    tree: llamacpp.Tree,
    threads: int | None = None,
) -> Check:
    """Perplexity and KL divergence of ``gguf`` against ``baseline`` (llama-perplexity)."""
    from deploykit.gguf.quantize import count_tokens

    base_info = gguf_meta.read(baseline)
    info = gguf_meta.read(gguf)
    if (base_info.arch, len(base_info.tensors)) != (info.arch, len(info.tensors)):
        raise InputError(
            f"--baseline {baseline.name} is not the same model as {gguf.name}",
            "pass the f16 GGUF this file was quantized from",
        )
    n = count_tokens(baseline, calibration, False, tree)
    if n < 64:
        raise InputError(f"calibration text {calibration} is too short ({n} tokens)", "pass more")
    ctx = min(512, 2 ** int(math.log2(n // 2)))
    exe = str(llamacpp.tool("llama-perplexity", tree))
    common = ["-c", str(ctx), "-t", str(threads or default_threads())]
    with tempfile.TemporaryDirectory(prefix="deploykit-kld-") as tmp:
        base_file = str(Path(tmp) / "base.kld")
        _perplexity(
            [
                exe,
                "-m",
                str(baseline),
                "-f",
                str(calibration),
                "--kl-divergence-base",
                base_file,
                *common,
            ]
        )
        text = _perplexity(
            [exe, "-m", str(gguf), "--kl-divergence-base", base_file, "--kl-divergence", *common]
        )

    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    data = {
        "calibration": str(calibration),
        "tokens": n,
        "ctx": ctx,
        "ppl": num(r"Mean PPL\(Q\)\s*:\s*([\d.]+)"),
        "ppl_base": num(r"Mean PPL\(base\)\s*:\s*([\d.]+)"),
        "kld_mean": num(r"Mean\s+KLD:\s*([\d.]+)"),
        "kld_max": num(r"Maximum KLD:\s*([\d.]+)"),
        "kld_p99": num(r"99\.0%\s+KLD:\s*([\d.]+)"),
        "same_top_p": num(r"Same top p:\s*([\d.]+)"),
        "max_kld": max_kld,
    }
    if data["kld_mean"] is None:
        raise VerificationError("could not read llama-perplexity's KL divergence", None)
    detail = (
        f"mean KLD {data['kld_mean']:.4f} (max allowed {max_kld}), "
        f"PPL {data['ppl']} vs {data['ppl_base']} (f16), same top token {data['same_top_p']}%"
    )
    status = FAIL if data["kld_mean"] > max_kld else PASS
    return Check("quant_quality", status, detail, data)


# --- the command ---------------------------------------------------------------------------


def default_calibration(tree: llamacpp.Tree) -> Path:
    """A calibration text that is always there: the pinned llama.cpp's README."""
    return tree.path / "README.md"


def verify(
    gguf: Path,
    reference: Path | None = None,
    probes: Path | None = None,
    baseline: Path | None = None,
    calibration: Path | None = None,
    max_kld: float = DEFAULT_MAX_KLD,
    threads: int | None = None,
    tree: llamacpp.Tree | None = None,
    logits: bool = True,
) -> dict[str, Any]:
    """Run every applicable check on ``gguf``; returns the report (``ok`` false on a failure).

    ``logits=False`` skips logits parity, the one check that loads ``reference`` into memory.
    """
    started = time.monotonic()
    gguf = Path(gguf)
    if not gguf.is_file():
        raise InputError(f"GGUF not found: {gguf}", "check the FILE argument")
    info = gguf_meta.read(gguf, {"tokenizer.ggml.tokens"})
    tree = tree or llamacpp.locate_tree()
    probe_data = None
    if probes is not None:
        probe_data = _json(Path(probes))
        if not isinstance(probe_data.get("probes"), list):
            raise InputError(f"{probes} is not a probes file", 'expected {"probes": [...]}')
    ref_tok = None
    if reference is not None:
        if not (Path(reference) / "config.json").is_file():
            raise InputError(
                f"{reference} is not a model folder (no config.json)", "check --reference"
            )
        ref_tok = load_reference_tokenizer(Path(reference))
    conversations = (
        [
            p.get("messages") or [{"role": "user", "content": p["prompt"]}]
            for p in probe_data["probes"]
        ]
        if probe_data
        else DEFAULT_CONVERSATIONS
    )
    end_of_turn = probe_data.get("end_of_turn") if probe_data else None

    checks = [check_metadata(info, reference, end_of_turn, ref_tok)]
    with serve(gguf, tree, threads=threads) as server:
        checks.append(check_generates(server))
        if ref_tok is not None:
            ref_template = default_template(model_chat_template(Path(reference)))
            checks.append(
                check_tokenizer(gguf, info, ref_tok, ref_template, conversations[0], tree)
            )
        elif reference is not None:
            checks.append(Check("tokenizer_parity", SKIP, "the reference has no tokenizer.json"))
        else:
            checks.append(Check("tokenizer_parity", SKIP, "needs --reference MODEL_DIR"))
        if probe_data is not None:
            checks.append(check_probes(server, info, probe_data))
        if logits and reference is not None and ref_tok is not None:
            ui.info("loading the reference model for logits parity ...")
            checks.append(check_logits(server, info, Path(reference), ref_tok, conversations))
    if baseline is not None:
        cal = Path(calibration) if calibration else default_calibration(tree)
        checks.append(check_quality(gguf, Path(baseline), cal, max_kld, tree, threads))
    failed = [c.name for c in checks if c.status == FAIL]
    return {
        "file": str(gguf),
        "bytes": gguf.stat().st_size,
        "file_type": info.file_type,
        "architecture": info.arch,
        "reference": str(reference) if reference else None,
        "ok": not failed,
        "failed": failed,
        "checks": [asdict(c) for c in checks],
        "llama_cpp_commit": tree.commit,
        "seconds": round(time.monotonic() - started, 2),
    }
