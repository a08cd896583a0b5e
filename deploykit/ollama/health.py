"""Post-deploy health check: is the model in Ollama really the fine-tune, answering as it should?"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploykit.core.errors import InputError, OllamaError
from deploykit.model.probes import render_probe
from deploykit.ollama import modelfile
from deploykit.ollama.client import MIN_VERSION, Client, parse_version

#: Template control tokens that must never reach a user.
CONTROL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "[INST]",
    "[/INST]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
)
RENDER_PROBE = [{"role": "user", "content": "What is deploykit?"}]
GREEDY = {"temperature": 0, "top_k": 1, "seed": 0, "num_predict": 64}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _full(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _reference(path: Path) -> modelfile.ModelInfo:
    if path.is_dir():
        return modelfile.model_info_from_dir(path)
    if path.is_file():
        return modelfile.model_info_from_gguf(path)
    raise InputError(f"reference not found: {path}", "pass --reference MODEL_DIR or FILE.gguf")


def check(
    name: str,
    host: str | None = None,
    probes: Path | None = None,
    reference: Path | None = None,
    timeout: float = 120.0,
) -> dict:
    """Run every check against ``name``; ``ok`` is false when any fails."""
    checks: list[Check] = []
    report: dict = {"model": name}
    with Client(host, timeout=timeout) as client:
        report["host"] = client.host
        version = client.version()
        report["version"] = version
        checks.append(
            Check(
                "server version",
                parse_version(version) >= MIN_VERSION,
                f"{version} (need >= {'.'.join(map(str, MIN_VERSION))})",
            )
        )
        listed = {m.get("name", "").lower() for m in client.tags()}
        checks.append(
            Check("listed", _full(name).lower() in listed, f"in /api/tags: {sorted(listed)}")
        )
        try:
            show = client.show(name)
        except OllamaError as exc:
            checks.append(Check("show", False, exc.message))
            return _finish(report, checks)
        template = show.get("template") or ""
        checks.append(
            Check(
                "template",
                template.strip() not in ("", "{{ .Prompt }}"),
                "a real chat template"
                if template.strip() != "{{ .Prompt }}"
                else "template is {{ .Prompt }}: the model will ramble",
            )
        )
        stops = [ln for ln in (show.get("parameters") or "").splitlines() if ln.startswith("stop")]
        checks.append(
            Check(
                "stop parameters",
                bool(stops),
                "; ".join(s.split(None, 1)[1] for s in stops)
                or "no stop parameter: generation may run past the end of turn",
            )
        )
        if ".Tools" in template:
            caps = show.get("capabilities") or []
            checks.append(Check("tools capability", "tools" in caps, f"capabilities: {caps}"))

        started = time.monotonic()
        smoke = client.chat(
            {
                "model": name,
                "messages": [{"role": "user", "content": "Hello!"}],
                "options": {"num_predict": 32, "temperature": 0},
            }
        )
        text = smoke["message"]["content"]
        leaked = [t for t in CONTROL_TOKENS if t in text]
        checks.append(
            Check(
                "smoke chat",
                bool(text.strip()) and not leaked,
                f"{len(text)} chars in {time.monotonic() - started:.1f}s"
                + (f"; leaked control tokens {leaked}" if leaked else ""),
            )
        )
        if smoke.get("eval_count") and smoke.get("eval_duration"):
            report["tokens_per_second"] = round(
                smoke["eval_count"] / smoke["eval_duration"] * 1e9, 1
            )

        if reference is not None:
            checks.append(_render_check(client, name, _reference(Path(reference)), version))
        if probes is not None:
            checks += _probe_checks(client, name, Path(probes))
    return _finish(report, checks)


def _render_check(client: Client, name: str, info: modelfile.ModelInfo, version: str) -> Check:
    if parse_version(version) < (0, 11, 5):
        return Check("render parity", True, f"skipped: Ollama {version} cannot render on request")
    if not info.chat_template:
        return Check("render parity", False, f"{info.source} has no chat template to compare with")
    got = client.render({"model": name, "messages": RENDER_PROBE})
    want = render_probe(
        info.chat_template,
        {"messages": RENDER_PROBE},
        bos_token=info.bos_token,
        eos_token=info.eos_token,
    )
    bos = info.bos_token
    if bos and info.add_bos is not False and want.startswith(bos) and not got.startswith(bos):
        want = want[len(bos) :]  # the runner adds BOS when tokenizing; Ollama templates omit it
    if got == want:
        return Check("render parity", True, "the server renders the model's own chat template")
    at = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    return Check(
        "render parity",
        False,
        f"prompt differs from the chat template at char {at}: server {got[at : at + 40]!r}"
        f" vs template {want[at : at + 40]!r}",
    )


def _probe_checks(client: Client, name: str, path: Path) -> list[Check]:
    try:
        probes = json.loads(path.read_text())["probes"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read probes from {path}: {exc}", "pass a probes.json") from None
    out = []
    for p in probes:
        got = client.chat({"model": name, "messages": p["messages"], "options": GREEDY})
        answer = got["message"]["content"]
        out.append(
            Check(
                f"probe {p['prompt'][:30]!r}",
                answer == p["answer"],
                f"expected {p['answer']!r}, got {answer!r}",
            )
        )
    return out


def _finish(report: dict, checks: list[Check]) -> dict:
    report["checks"] = [asdict(c) for c in checks]
    report["ok"] = all(c.ok for c in checks)
    return report
