"""Prove a GGUF is right: metadata, it runs, tokenizer and logits parity, probes, quant quality.

Every check returns a :class:`~deploykit.core.report.Check`; :func:`verify` collects them
into a :class:`~deploykit.core.report.Report` (a failure is a VerificationError, exit 7) that
the ship pipeline stores in its manifest. A llama.cpp tool that crashes is a ToolchainError
(exit 6), not a failed check.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import InputError, VerificationError
from deploykit.core.fsutil import atomic_file, atomic_write_json, sha256_file
from deploykit.core.report import FAIL, INFO, PASS, SKIP, WARN, Check, Report
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tools
from deploykit.llamacpp.server import Server, serve
from deploykit.llamacpp.tree import Tree, locate_tree
from deploykit.llamacpp.vocab import suite_texts
from deploykit.model.chat_template import ChatSpec, render_spec
from deploykit.model.hf_dir import ModelDir
from deploykit.model.probes import AnswerProbe, ProbeFile, load_probe_file

#: Minimum top-1 agreement with the reference model, by GGUF file type (others: reported).
TOP1_THRESHOLDS = {"F32": 1.0, "F16": 1.0, "BF16": 1.0, "Q8_0": 0.98}
#: Per quant type, the most mean KL divergence vs the f16 before the quant fails (data, with
#: the source of each number). A type not listed is reported, not gated.
KLD_LIMITS_FILE = Path(__file__).with_name("kld_limits.toml")


def kld_limit(file_type: str | None) -> float | None:
    """The KL-divergence limit for a GGUF file type (``Q4_K_M``), or None: report only."""
    return kld_limits().get(str(file_type).upper())


@functools.cache
def kld_limits() -> dict[str, float]:
    import tomllib

    data = tomllib.loads(KLD_LIMITS_FILE.read_text(encoding="utf-8"))
    return {name.upper(): float(row["limit"]) for name, row in data.items()}


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


def reference_spec(ref: ModelDir | None, info: gguf_meta.GGUFInfo) -> ChatSpec:
    """How the fine-tuned model renders a chat: the reference's template and special tokens,
    else the GGUF's own."""
    if ref is not None and ref.chat_template:
        return ref.chat_spec()
    return info.chat_spec()


def _tokenize(gguf: Path, text: str, special: bool, tree: Tree) -> list[int]:
    return tools.tokenize(gguf, text, special, tree, error=VerificationError)


# --- checks ------------------------------------------------------------------------------


def _token_ids(info: gguf_meta.GGUFInfo, text: str) -> set[int]:
    tokens = info.get(gguf_meta.TOKENS)
    return {i for i, t in enumerate(tokens) if t == text} if isinstance(tokens, list) else set()


def check_metadata(
    info: gguf_meta.GGUFInfo, ref: ModelDir | None, end_of_turn: str | None
) -> Check:
    """Architecture, pre-tokenizer, bos/eos, chat template, tensor count and types."""
    bos_id = info.get("tokenizer.ggml.bos_token_id")
    eos_id = info.get("tokenizer.ggml.eos_token_id")
    eot_id = info.get("tokenizer.ggml.eot_token_id")
    tokens = info.get(gguf_meta.TOKENS)
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
        "vocab_size": getattr(tokens, "length", None) or len(tokens or []),
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
        # Gemma 4 keeps <eos> as eos and ends its turns with <turn|>, which its
        # generation_config lists as an eos id (and llama.cpp stops on by its text)
        listed = ref.eos_token_ids if ref is not None else set()
        if end_of_turn not in ends and not _token_ids(info, end_of_turn) & set(listed):
            problems.append(
                f"the chat's end-of-turn token {end_of_turn} is neither eos "
                f"({data['eos_token']}) nor eot, nor an eos id of the model's generation_config"
            )
    if ref is not None and eos_id is not None:
        ref_eos = ref.eos_token_ids
        if ref_eos and eos_id not in ref_eos:
            problems.append(f"eos id {eos_id} is not one of the reference's {sorted(ref_eos)}")
    if not data["chat_template"]:
        warnings.append("no chat template (tokenizer.chat_template): give Ollama a TEMPLATE")
    if ref is not None:
        want = ref.chat_template
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
    spec: ChatSpec,
    conversation: list[dict],
    tree: Tree,
) -> Check:
    """llama.cpp's tokenization equals the ``tokenizers`` library's on the suite and a chat."""
    texts = suite_texts(tree, info.get("tokenizer.ggml.pre"))
    eos_id = info.get("tokenizer.ggml.eos_token_id")
    sep = gguf_meta.token_text(info, eos_id)
    expected = [ref_tok.encode(t, add_special_tokens=False).ids for t in texts]
    mismatches = []
    if sep is not None and not any(sep in t for t in texts):
        # one llama-tokenize run: texts joined by a special token, which both tokenizers
        # treat as a hard boundary; split the ids back on it
        got = _split(_tokenize(gguf, sep.join(texts), True, tree), eos_id)
        if len(got) != len(texts):
            got = [_tokenize(gguf, t, False, tree) for t in texts]
    else:
        got = [_tokenize(gguf, t, False, tree) for t in texts]
    for text, want, have in zip(texts, expected, got, strict=True):
        if want != have:
            mismatches.append({"text": text[:80], "reference": want[:24], "gguf": have[:24]})
    ok = len(texts) - len(mismatches)
    data: dict[str, Any] = {"suite_total": len(texts), "suite_equal": ok}
    chat_ok = True
    if spec.template:
        rendered = render_spec(spec, conversation)
        want = ref_tok.encode(rendered, add_special_tokens=False).ids
        have = _tokenize(gguf, rendered, True, tree)
        chat_ok = want == have
        data["chat_tokens"] = len(want)
        data["chat_equal"] = chat_ok
        if not chat_ok:
            mismatches.append({"text": rendered[:80], "reference": want[:24], "gguf": have[:24]})
    data["mismatches"] = mismatches[:5]
    detail = f"{ok}/{len(texts)} suite texts equal" + (
        f", chat rendering {'equal' if chat_ok else 'DIFFERENT'}" if spec.template else ""
    )
    if mismatches:
        first = mismatches[0]
        detail += (
            f"; first difference on {first['text']!r}: reference {first['reference'][:8]} "
            f"vs gguf {first['gguf'][:8]}"
        )
    return Check.of("tokenizer_parity", not mismatches, detail, **data)


def _prompts(ref_tok: Any, spec: ChatSpec, conversations: list[list[dict]]) -> list[list[int]]:
    prompts = []
    if spec.template:
        for conv in conversations:
            prompts.append(ref_tok.encode(render_spec(spec, conv), add_special_tokens=False).ids)
    for text in PLAIN_PROMPTS:
        prompts.append(ref_tok.encode(text, add_special_tokens=True).ids)
    return prompts


def check_logits(
    server: Server,
    info: gguf_meta.GGUFInfo,
    ref: ModelDir,
    ref_tok: Any,
    conversations: list[list[dict]],
    n_predict: int = 8,
    top_k: int = 3,
    weights_from: tuple[Path, list[Path]] | None = None,
) -> Check:
    """Top-1 agreement and max |log-prob difference| between the HF model and the GGUF (for a
    merged model's folder without weights, the base with the adapters unmerged in peft)."""
    import torch

    with ui.quiet_libraries():
        model = ref.load_causal_lm(torch.float32, weights_from)
    model.eval()
    agree = total = decisive = decisive_agree = 0
    max_diff = 0.0
    for ids in _prompts(ref_tok, reference_spec(ref, info), conversations):
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
    if need is None:
        return Check("logits_parity", INFO, detail, data)
    return Check.of("logits_parity", gated >= need, detail, **data)


def gguf_prompt(
    server: Server, info: gguf_meta.GGUFInfo, messages: list[dict], think: bool | None = None
) -> list[int]:
    """``messages`` through the GGUF's embedded template (rendered as transformers does, with
    ``enable_thinking`` when ``think`` is set), tokenized by llama.cpp: the prompt the
    fine-tune was trained on, as the GGUF sees it."""
    spec = info.chat_spec()
    if not spec.template:
        raise VerificationError(f"{info.path.name} has no chat template to render probes with")
    extra = {} if think is None else {"enable_thinking": think}
    ids = server.tokenize(render_spec(spec, messages, **extra), special=True)
    bos_id = info.get("tokenizer.ggml.bos_token_id")
    if spec.add_bos and bos_id is not None and ids[:1] != [bos_id]:
        ids = [bos_id, *ids]  # the template did not write BOS; llama.cpp would add it
    return ids


def check_probes(
    server: Server, info: gguf_meta.GGUFInfo, probes: list[AnswerProbe], max_tokens: int = 64
) -> Check:
    """Greedy answers from the GGUF equal the expected answers exactly."""
    rows = []
    for probe in probes:
        ids = gguf_prompt(server, info, probe.messages, probe.think)
        out = server.post(
            "/completion",
            {"prompt": ids, "n_predict": max_tokens, "temperature": 0, "cache_prompt": False},
        )
        got = out.get("content", "")
        ok = got == probe.answer and out.get("stop_type") == "eos"
        rows.append(
            {
                "prompt": probe.prompt,
                "expected": probe.answer,
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
    return Check.of("probes", not bad, detail, **data)


def _perplexity(cmd: list[str | Path]) -> str:
    run = tools.run(cmd)
    run.check(
        "llama-perplexity failed",
        VerificationError,
        f"check --calibration (it needs at least {tools.MIN_CALIBRATION_TOKENS} tokens of text)",
    )
    return run.output


#: The KLD's standard error should be at most this share of the gate's limit.
SE_SHARE = 0.10
#: The calibration budget: the KL base file is first made over this many chunks of the text
#: (512 tokens each, the last 256 scored; the default text has about five). When a quant's KLD
#: then has a standard error above ``SE_SHARE`` of its limit and is within ``_DECISIVE`` errors
#: of the limit (the verdict could change), the base grows once, to the chunks that error says
#: are needed (SE ~ 1/sqrt(n), with a margin), at most ``MAX_CHUNKS``. One chunk is enough for
#: the model llama.cpp measured: LLaMA 3 8B's per-token KLD spread (tools/perplexity/README's
#: ± times the square root of its ~150k scored tokens, a 37 GiB logit file) gives an error of
#: 3 to 6% of the limit at 256 tokens for Q8_0, Q6_K and Q4_K_M.
FIRST_CHUNKS = 1
MAX_CHUNKS = 64
_GROWTH_MARGIN = 1.25
_DECISIVE = 3.0
_TOO_SHORT = re.compile(r"tokenizes to only (\d+) tokens")
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")


def _kl_base(
    baseline: Path,
    calibration: Path,
    tree: Tree,
    common: list[str],
    cache: Path,
    key: str,
    chunks: int,
) -> tuple[Path, dict[str, Any]]:
    """The f16's logits on the first ``chunks`` chunks of ``calibration`` (llama-perplexity's
    KL base file) and how it was made (``chunks``, ``ctx``, ``tokens``; ``all``: the text has
    no more), computed once per baseline and calibration and reused for every quant that needs
    no more chunks: ``cache/<key>.kld`` with its record ``<key>.json`` (written last: a base
    without a record is not used). No token-counting run: the context is 512 unless
    llama-perplexity says the text is too short for it."""
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(
        json.dumps([key, sha256_file(calibration), tree.commit or "", common]).encode()
    ).hexdigest()[:16]
    base_file, record = cache / f"{digest}.kld", cache / f"{digest}.json"
    if base_file.is_file() and record.is_file():
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            made = json.loads(record.read_text(encoding="utf-8"))
            enough = made["all"] or made["chunks"] >= chunks
            if made.get("bytes") == base_file.stat().st_size and enough:
                return base_file, {**made, "reused": True}
    exe = tools.tool("llama-perplexity", tree)
    ctx = tools.chunk_ctx(1 << 20)  # the largest chunk
    with atomic_file(base_file) as tmp:
        for _ in range(2):
            run = tools.run(
                [exe, "-m", baseline, "-f", calibration, "--kl-divergence-base", tmp,
                 "-c", str(ctx), "--chunks", str(chunks), *common]
            )  # fmt: skip
            short = _TOO_SHORT.search(run.output)  # (it exits 0 then)
            if short is None:
                break
            n = int(short.group(1))
            if n < tools.MIN_CALIBRATION_TOKENS:
                raise InputError(
                    f"calibration text {calibration} is too short ({n} tokens)", "pass more"
                )
            ctx = tools.chunk_ctx(n)
        run.check(
            "llama-perplexity failed",
            VerificationError,
            f"check --calibration (it needs at least {tools.MIN_CALIBRATION_TOKENS} tokens)",
        )
        got = _CHUNKS.search(run.output)
        if got is None or "Final estimate: PPL" not in run.output:  # it exits 0 on a failed decode
            raise VerificationError(
                "llama-perplexity did not finish the f16's logits: " + run.last_error()[:200],
                run.log_hint(),
            )
    n_chunks, ctx = int(got.group(1)), int(got.group(2))
    made = {
        "chunks": n_chunks,
        "ctx": ctx,
        "tokens": n_chunks * ctx,
        "all": n_chunks < chunks,
        "bytes": base_file.stat().st_size,
    }
    atomic_write_json(record, made)
    return base_file, {**made, "reused": False}


def _se(text: str) -> float | None:
    m = re.search(r"Mean\s+KLD:\s*[\d.]+\s*±\s*([\d.]+)", text)
    return float(m.group(1)) if m else None


def _mean(text: str) -> float | None:
    m = re.search(r"Mean\s+KLD:\s*([\d.]+)", text)
    return float(m.group(1)) if m else None


def check_quality(
    gguf: Path,
    baseline: Path,
    calibration: Path,
    max_kld: float | None,
    tree: Tree,
    threads: int | None = None,
    cache: Path | None = None,
    baseline_key: str | None = None,
) -> Check:
    """Perplexity and KL divergence of ``gguf`` against ``baseline`` (llama-perplexity).

    ``max_kld`` None: the limit for the quant's type (``kld_limits.toml``); a type without one
    is reported (``info``), not gated. ``cache``: a folder where the baseline's KL base file is
    kept for the next quant, under ``baseline_key`` (what identifies the baseline's bytes; its
    sha256 when not given); without it the base file is made in a temporary folder. The
    calibration budget is ``FIRST_CHUNKS``, grown once when the KLD's standard error needs it.
    """
    base_info = gguf_meta.read(baseline)
    info = gguf_meta.read(gguf)
    if max_kld is None:
        max_kld = kld_limit(info.file_type)
    if (base_info.arch, len(base_info.tensors)) != (info.arch, len(info.tensors)):
        raise InputError(
            f"--baseline {baseline.name} is not the same model as {gguf.name}",
            "pass the f16 GGUF this file was quantized from",
        )
    exe = tools.tool("llama-perplexity", tree)
    common = ["-t", str(threads or tools.batch_threads())]
    timing = {"kl_base": 0.0, "kl_divergence": 0.0}
    grown = False
    with tempfile.TemporaryDirectory(prefix="deploykit-kld-") as tmp:
        where = Path(cache) if cache is not None else Path(tmp)
        key = baseline_key or sha256_file(baseline)
        chunks = FIRST_CHUNKS
        while True:
            mark = time.monotonic()
            base_file, made = _kl_base(baseline, calibration, tree, common, where, key, chunks)
            based = time.monotonic()
            if not made["reused"]:
                timing["kl_base"] = round(timing["kl_base"] + based - mark, 2)
            text = _perplexity(
                [exe, "-m", gguf, "--kl-divergence-base", base_file, "--kl-divergence",
                 "-c", str(made["ctx"]), *common]
            )  # fmt: skip
            timing["kl_divergence"] = round(timing["kl_divergence"] + time.monotonic() - based, 2)
            se, target, mean = _se(text), SE_SHARE * max_kld if max_kld else None, _mean(text)
            if grown or made["all"] or se is None or target is None or se <= target:
                break
            if mean is None or abs(mean - max_kld) > _DECISIVE * se:
                break  # clearly above or below the limit: more text would not change that
            # SE ~ 1/sqrt(chunks): the chunks that bring it under the target, with a margin
            need = math.ceil(made["chunks"] * (se / target) ** 2 * _GROWTH_MARGIN)
            chunks = min(MAX_CHUNKS, max(need, made["chunks"] + 1))
            grown = True

    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    data = {
        "calibration": str(calibration),
        "tokens": made["tokens"],
        "ctx": made["ctx"],
        "chunks": made["chunks"],
        "calibration_budget": {
            "first_chunks": FIRST_CHUNKS,
            "grown": grown,
            "whole_text": made["all"],
        },
        "kl_base_reused": made["reused"] and timing["kl_base"] == 0,
        "seconds": timing,
        "kld_se": se,
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
    allowed = f"max allowed {max_kld}" if max_kld is not None else f"no limit for {info.file_type}"
    if max_kld and data["kld_se"] is not None:
        data["kld_se_ok"] = data["kld_se"] <= SE_SHARE * max_kld
        allowed += f"; ± {data['kld_se']:.4f}, {data['kld_se'] / max_kld:.0%} of the limit"
    detail = (
        f"mean KLD {data['kld_mean']:.4f} ({allowed}), "
        f"PPL {data['ppl']} vs {data['ppl_base']} (f16), same top token {data['same_top_p']}%"
    )
    if max_kld is None:
        return Check("quant_quality", INFO, detail, data)
    return Check.of("quant_quality", data["kld_mean"] <= max_kld, detail, **data)


# --- the command ---------------------------------------------------------------------------


def default_calibration(tree: Tree) -> Path:
    """A calibration text that is always there: the pinned llama.cpp's README."""
    return tree.path / "README.md"


def _reference(path: Path | None) -> ModelDir | None:
    if path is None:
        return None
    ref = ModelDir(Path(path))
    if not ref.has_config:
        raise InputError(f"{path} is not a model folder (no config.json)", "check --reference")
    return ref


def verify(
    gguf: Path,
    reference: Path | None = None,
    probes: Path | None = None,
    baseline: Path | None = None,
    calibration: Path | None = None,
    max_kld: float | None = None,
    threads: int | None = None,
    tree: Tree | None = None,
    logits: bool = True,
    kl_cache: Path | None = None,
    baseline_key: str | None = None,
    weights_from: tuple[Path, list[Path]] | None = None,
) -> Report:
    """Run every applicable check on ``gguf``; returns the report (failed when a check fails).

    ``logits=False`` skips logits parity, the one check that loads ``reference`` into memory.
    ``kl_cache``/``baseline_key``: where the baseline's KL base file is kept between quants
    (``check_quality``). ``weights_from``: ``(base, adapters)`` of a weight-less ``reference``.
    The report's ``seconds_per_check`` says where the time went.
    """
    started = time.monotonic()
    gguf = Path(gguf)
    if not gguf.is_file():
        raise InputError(f"GGUF not found: {gguf}", "check the FILE argument")
    info = gguf_meta.read(gguf, {gguf_meta.TOKENS})
    tree = tree or locate_tree()
    probe_file: ProbeFile | None = load_probe_file(Path(probes)) if probes is not None else None
    ref = _reference(reference)
    ref_tok = ref.tokenizer() if ref is not None else None
    conversations = [p.messages for p in probe_file.probes] if probe_file else DEFAULT_CONVERSATIONS
    report = Report(
        "verify",
        str(gguf),
        error=VerificationError,
        hint="see the checks above; --json prints each check's data",
    )
    seconds: dict[str, float] = {}
    mark = time.monotonic()

    def add(check: Check) -> None:  # the time since the last check is this one's
        nonlocal mark
        report.add(check)
        now = time.monotonic()
        seconds[check.name] = round(now - mark, 2)
        mark = now

    add(check_metadata(info, ref, probe_file.end_of_turn if probe_file else None))
    with serve(gguf, tree, threads=threads) as server:
        add(check_generates(server))
        if ref_tok is not None:
            spec = reference_spec(ref, info)
            add(check_tokenizer(gguf, info, ref_tok, spec, conversations[0], tree))
        elif reference is not None:
            add(Check("tokenizer_parity", SKIP, "the reference has no tokenizer.json"))
        else:
            add(Check("tokenizer_parity", SKIP, "needs --reference MODEL_DIR"))
        if probe_file is not None:
            add(check_probes(server, info, probe_file.probes))
        if logits and ref is not None and ref_tok is not None:
            ui.info("loading the reference model for logits parity ...")
            add(check_logits(server, info, ref, ref_tok, conversations, weights_from=weights_from))
    if baseline is not None:
        cal = Path(calibration) if calibration else default_calibration(tree)
        add(
            check_quality(gguf, Path(baseline), cal, max_kld, tree, threads, kl_cache, baseline_key)
        )
    report.extra = {
        "file": str(gguf),
        "bytes": gguf.stat().st_size,
        "file_type": info.file_type,
        "architecture": info.arch,
        "reference": str(reference) if reference else None,
        "llama_cpp_commit": tree.commit,
        "seconds": round(time.monotonic() - started, 2),
        "seconds_per_check": seconds,
    }
    return report
