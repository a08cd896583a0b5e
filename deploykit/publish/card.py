"""What a published repo holds besides the bundle's files: the model card (``README.md``, YAML
metadata the Hub reads + a body), the files the Hub's Ollama integration reads (``template``,
``system``, ``params``: https://huggingface.co/docs/hub/ollama) and the public manifest."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from deploykit.core.errors import InputError
from deploykit.ollama import modelfile

#: A remote model card bigger than this is not read.
MAX_CARD_BYTES = 1 << 20
#: The Hub files ``ollama run hf.co/OWNER/NAME`` reads instead of guessing from the GGUF.
OLLAMA_FILES = ("template", "system", "params")
#: Keys of the manifest that name a machine, a server or a secret: never published.
_PRIVATE_KEYS = {"host", "url", "endpoint", "token", "work_dir", "out"}
#: An absolute path inside a string (POSIX, ``~/`` or a Windows drive): only its last part stays.
_ABSOLUTE = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:[\\/]|~[\\/]|/)(?:[^\s\\/'\"()]+[\\/])+")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def public(value: Any) -> Any:
    """``value`` (the manifest) as it may be published: no absolute local paths (a path keeps
    its file name), no URLs, and no host, token, output or work-folder settings."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if k not in _PRIVATE_KEYS}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str):
        return _ABSOLUTE.sub("", _URL.sub("<url>", value))
    return value


def ollama_files(text: str, source: str) -> dict[str, str]:
    """The Hub's ``template``, ``system`` and ``params`` files for a Modelfile's text (those it
    sets): the TEMPLATE and SYSTEM as they are, the PARAMETERs as JSON (stop strings a list),
    all from deploykit's Modelfile parser."""
    try:
        request = modelfile.create_request(modelfile.parse(text))
    except InputError as exc:
        raise InputError(f"{source}: {exc.message}", exc.hint) from None
    out = {}
    if request.get("template") is not None:
        out["template"] = request["template"]
    if request.get("system"):
        out["system"] = request["system"]
    if request.get("parameters"):
        out["params"] = json.dumps(request["parameters"], indent=2, ensure_ascii=False) + "\n"
    return out


def front_matter(card: str) -> dict[str, Any]:
    """The YAML metadata of a model card (``---`` block at the top); {} when it has none or it
    is not a mapping."""
    m = re.match(r"\A---\r?\n(.*?)\r?\n---\r?\n", card, re.DOTALL)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_model_text(base: Any) -> str | None:
    """A card's ``base_model`` as text: a string or a list of at most 8 strings, each cut to
    200 characters (anything else is named as such, never expanded)."""
    if base is None:
        return None
    if isinstance(base, str):
        return base[:200]
    if isinstance(base, list) and len(base) <= 8 and all(isinstance(b, str) for b in base):
        return ", ".join(b[:200] for b in base)
    return "(a base_model that is not a repo id)"


def remote_base_model(remote: dict, download: Callable[[Path], Path]) -> str | None:
    """The ``base_model`` a repo's card names (None when it has no card or names none):
    ``remote`` is its file listing, ``download(folder)`` fetches its README.md into a
    temporary folder (removed afterwards) and returns the path."""
    entry = remote.get("README.md")
    if entry is None:
        return None
    if entry["size"] > MAX_CARD_BYTES:
        return "(a model card too big to read)"
    with tempfile.TemporaryDirectory(prefix="dk-card-") as tmp:
        text = Path(download(Path(tmp))).read_text(encoding="utf-8", errors="replace")
    return base_model_text(front_matter(text).get("base_model"))


def base_facts(manifest: dict[str, Any]) -> dict[str, str]:
    """What the manifest's inputs say of the base where they are still on this machine: its
    hub id (the pull record, else the first adapter's ``base_model_name_or_path`` when that is
    a hub id) and its license (the base's own card). Read once by ``ship`` into the manifest
    (``inputs.base.hub_id``, ``inputs.base.license``); empty when unknown."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from deploykit.hub.pull import read_record

    inputs = manifest.get("inputs") or {}
    base = inputs.get("base") or {}
    facts = {k: base[k] for k in ("hub_id", "license") if isinstance(base.get(k), str)}
    candidates = []
    if isinstance(base.get("path"), str) and Path(base["path"]).is_dir():
        record = read_record(Path(base["path"])) or {}
        candidates.append(record.get("id"))
        readme = Path(base["path"]) / "README.md"
        if "license" not in facts and readme.is_file():
            lic = front_matter(readme.read_text(encoding="utf-8", errors="replace")).get("license")
            if isinstance(lic, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", lic):
                facts["license"] = lic
    for a in (inputs.get("adapters") or [])[:1]:
        config = Path(str(a.get("path", ""))) / "adapter_config.json"
        if config.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                candidates.append(json.loads(config.read_text()).get("base_model_name_or_path"))
    for c in candidates:
        if "hub_id" in facts:
            break
        if isinstance(c, str) and c.count("/") == 1 and not Path(c).exists():
            try:
                validate_repo_id(c)
            except HFValidationError:
                continue
            facts["hub_id"] = c
    return facts


def _kld(report: dict) -> str:
    for check in report.get("checks") or []:
        if check.get("name") == "quant_quality":
            kld = (check.get("data") or {}).get("kld_mean")
            if isinstance(kld, int | float):
                return f"{kld:.4f}"
    return "–"


def _probes(report: dict) -> str:
    for check in report.get("checks") or []:
        if check.get("name") == "probes":
            data = check.get("data") or {}
            return f"{data.get('exact', '?')}/{data.get('total', '?')}"
    return "–"


def _verdict(report: dict | None) -> str:
    if not report:
        return "not verified"
    if report.get("verified") is False:
        return "not verified (`--verify none`)"
    return "passed" if report.get("ok") else "**failed** (" + ", ".join(report["failed"]) + ")"


def render(
    m: dict[str, Any],
    *,
    repo: str,
    base_model: str | None,
    license: str | None,
    family: str | None,
    parts: dict[str, list[str]] | None = None,
    ollama: dict[str, str] | None = None,
    hub: str = "hf",
) -> str:
    """The model card for the public manifest ``m`` published as ``repo`` (OWNER/NAME).
    ``parts``: each GGUF split for the Hub's file limit -> its parts; ``ollama``: the Hub's
    Ollama files that are written; ``hub``: ``hf`` or ``modelscope`` (how to run it)."""
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
        # adapters merged: the weights are a fine-tune of base_model (then quantized), not a
        # quantization of it; without adapters the GGUFs quantize the model named
        tuned = bool((m.get("inputs") or {}).get("adapters"))
        meta["base_model_relation"] = "finetune" if tuned else "quantized"
    meta["tags"] = ["gguf", "ollama", *([family] if family else []), "deploykit"]
    if license:
        meta["license"] = license
    meta["library_name"] = "gguf"
    parts = parts or {}
    rows = []
    verification = m.get("verification") or {}
    for o in m["outputs"]:
        name = Path(o["path"]).name
        report = verification.get(o["type"]) or {}
        shown = (
            "<br>".join(f"`{p}`" for p in parts[name]) + f" (parts of `{name}`)"
            if name in parts
            else f"`{name}`"
        )
        rows.append(
            f"| {o['type']} | {shown} | {o['size']:,} | `{o['sha256']}` | {_kld(report)} "
            f"| {_probes(report)} | {_verdict(report)} |"
        )
    notes = []
    for qtype, checks in (m.get("shipped_despite_failures") or {}).items():
        notes.append(
            f"**{qtype} failed verification ({', '.join(checks)}) and was shipped anyway** "
            "(`ship --allow-failed`, `push --allow-failed`)."
        )
    deployed = m.get("ollama") or {}
    if deployed.get("target") != "ollama":
        notes.append(
            "**Not health-checked on an Ollama server**: the bundle was built without one "
            "(`--target none`, or none answered)."
        )
    else:
        notes.append(
            "Health-checked on Ollama: " + ", ".join(f"`{t}`" for t in deployed.get("health", {}))
        )
    if not base_model:
        notes.append("The base model is not known (`deploykit push --base-model ID` names it).")
    if not (ollama or {}).get("template"):
        notes.append(
            "No `template` file: this model's Modelfile has no TEMPLATE (a built-in RENDERER), "
            "so `ollama run hf.co/...` uses the Hub's guess; `deploykit create` uses the "
            "Modelfile."
        )
    if parts:
        notes.append(
            "Split for the Hub's file size limit (llama-gguf-split): llama.cpp reads the parts "
            "(`llama-server -hf`); for `deploykit create`, join them first with "
            "`llama-gguf-split --merge FIRST-PART NAME.gguf` (the Modelfile names the whole file)."
        )
    first = m["outputs"][0]["type"]
    owner_name = repo
    inputs = m.get("inputs") or {}
    provenance = [
        f"- deploykit {m.get('deploykit')}",
        f"- llama.cpp {(m.get('llama_cpp') or {}).get('release') or ''} "
        f"(commit {(m.get('llama_cpp') or {}).get('commit') or 'unknown'})".replace("  ", " "),
    ]
    for i, a in enumerate(inputs.get("adapters") or []):
        provenance.append(f"- adapter {i + 1}: {_hashes(a)}")
    if inputs.get("base"):
        provenance.append(
            f"- base{f' `{base_model}`' if base_model else ''}: {_hashes(inputs['base'])}"
        )
    ollama_line = (
        "The repo's `template`, `system` and `params` files are the bundle's verified "
        "Modelfile's, so `ollama run` uses them instead of the Hub's conversion of the "
        "GGUF's Jinja template."
        if (ollama or {}).get("template") and hub == "hf"
        else ""
    )
    origin = f" from `{base_model}`" if base_model else ""
    if hub == "modelscope":
        run = f"    ollama run modelscope.cn/{owner_name}:{first}"
    else:
        run = (
            f"    ollama run hf.co/{owner_name}:{first}\n    llama-server -hf {owner_name}:{first}"
        )
    body = f"""# {m["name"]}

GGUF quants of a fine-tune{origin}, built and verified by deploykit.

{chr(10).join(f"{n}{chr(10)}" for n in notes)}
| quant | file | bytes | sha256 | KL divergence | probes | verification |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Run it

{run}

{ollama_line}

With deploykit, from a download of this repo (the Modelfile is the verified one; each file is
checked against `manifest.json` before it is sent):

    deploykit create {m["name"]} -f Modelfile

## Provenance

{chr(10).join(provenance)}

`manifest.json` records the inputs (with sha256), the options, the outputs and the
verification reports.
"""
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{re.sub(chr(10) * 3 + '+', chr(10) * 2, body)}"


def _hashes(entry: dict) -> str:
    files = entry.get("files") or []
    if not files:
        return "no files recorded"
    shown = ", ".join(f"`{f.get('path')}` {str(f.get('sha256'))[:12]}" for f in files[:6])
    more = f" and {len(files) - 6} more" if len(files) > 6 else ""
    return f"{len(files)} file{'s' if len(files) != 1 else ''} ({shown}{more})"
