"""Convert a Hugging Face model directory to GGUF with the vendored ``convert_hf_to_gguf.py``.

The converter runs in a subprocess with the project's interpreter and the tree's bundled
gguf-py; its progress feeds one progress bar, its failures become one clear error, and the
output appears at its final path only when complete (temp name in the same folder, rename).
The model's own chat template is guaranteed to be in the GGUF.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import ConversionError, InputError
from deploykit.core.fsutil import atomic_file, check_free_space, check_not_input, check_output_file
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import hooked, tools
from deploykit.llamacpp.tree import (
    Tree,
    chkhsh_table,
    converter_cmd,
    converter_env,
    locate_tree,
    supported_architectures,
)
from deploykit.model.hf_dir import VOCABULARY_FILES, ModelDir, default_template

OUTTYPES = ("f16", "bf16", "f32", "q8_0", "auto")

#: Bytes per element of a >=2-D weight for each outtype (1-D tensors are always f32).
_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "auto": 2.0}


def check_architecture(arch: str, tree: Tree) -> None:
    """Raise a ConversionError listing the close matches when the converter lacks ``arch``."""
    supported = supported_architectures(tree)
    if arch in supported:
        return
    close = difflib.get_close_matches(arch, supported, n=5, cutoff=0.6)
    near = f"; close matches: {', '.join(close)}" if close else ""
    raise ConversionError(
        f"architecture {arch} is not supported by the pinned llama.cpp converter{near}",
        'check config.json\'s "architectures"; `python vendor/llama.cpp/convert_hf_to_gguf.py '
        "--print-supported-models` lists all",
    )


def estimate_bytes(
    model: ModelDir, outtype: str, shapes: dict[str, tuple[int, ...]] | None = None
) -> int:
    """About how many bytes the GGUF will take (from the safetensors headers, or ``shapes``
    when the tensors come from elsewhere)."""
    total = 0
    if shapes is None:
        total = sum(
            int(f.stat().st_size * _BYTES_PER_WEIGHT[outtype] / 2)
            for f in model.weight_files()
            if f.suffix != ".safetensors"
        )
        shapes = model.weight_shapes()
    for shape in shapes.values():
        per = 4.0 if len(shape) < 2 else _BYTES_PER_WEIGHT[outtype]
        total += int(per * math.prod(shape))
    tok = sum(f.stat().st_size for f in model.tokenizer_files())
    return total + tok + (1 << 20)


def _metadata_file(metadata: dict[str, str], folder: Path) -> Path:
    import gguf

    known = {v for k, v in vars(gguf.Keys.General).items() if not k.startswith("_")}
    override: dict[str, Any] = {}
    for key, value in metadata.items():
        full = key if key.startswith("general.") else f"general.{key}"
        if full not in known:
            raise InputError(
                f"unknown metadata key {key!r}",
                "use a general.* key, e.g. name, author, version, license, description",
            )
        try:
            override[full] = json.loads(value)
        except ValueError:
            override[full] = value
    fd, name = tempfile.mkstemp(prefix=".deploykit-meta-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(override, fh)
    return Path(name)


class _Progress:
    """Turns the converter's log lines into progress-bar updates."""

    TENSOR = re.compile(r"^INFO:hf-to-gguf:(\S+),\s+torch\.\w+ --> (\w+), shape")
    WRITING = re.compile(r"^Writing:\s+(\d+)%")

    def __init__(self) -> None:
        self.tensors = 0
        self.pct = 0

    def __call__(self, line: str) -> dict[str, Any] | None:
        if self.TENSOR.match(line):
            self.tensors += 1
            if self.tensors % 16 == 1:
                return {"description": f"converting ({self.tensors} tensors planned)"}
        elif m := self.WRITING.match(line):
            pct = int(m.group(1))
            if pct != self.pct:
                self.pct = pct
                return {"completed": pct, "total": 100, "description": "writing GGUF"}
        return None


def _failure(run: tools.ToolRun, arch: str, tree: Tree) -> ConversionError:
    text = run.output
    if "BPE pre-tokenizer was not recognized" in text:
        m = re.search(r"chkhsh:\s*([0-9a-f]{64})", text)
        chk = m.group(1) if m else "unknown"
        return ConversionError(
            "the model's BPE pre-tokenizer is not recognised by the pinned llama.cpp: its "
            f"tokenizer splits text differently from every known tokenizer (chkhsh {chk})",
            "if this is a fine-tune of a known base, copy the base's tokenizer.json and "
            "tokenizer_config.json into the model folder; a new tokenizer needs a newer llama.cpp",
        )
    if re.search(r"Model \S+ is not supported|Architecture .* not supported", text):
        try:
            check_architecture(arch, tree)
        except ConversionError as exc:
            return exc
    if "No space left on device" in text:
        return ConversionError(
            "the disk filled up while writing the GGUF", "free some space and run it again"
        )
    if re.search(r"cannot find tokenizer merges|FileNotFoundError: .*tokenizer", text):
        return ConversionError(
            "the converter could not read the model's tokenizer files (tokenizer merges missing)",
            "copy tokenizer.json and tokenizer_config.json from the base model into the folder",
        )
    lines = run.lines()
    errs = [ln for ln in lines if re.match(r"^(\w+Error|\w+Exception|ERROR|error)\b", ln)]
    last = (errs or [ln for ln in lines if ln.strip()] or ["no output"])[-1]
    return ConversionError(f"the llama.cpp converter failed: {last.strip()[:300]}", run.log_hint())


def check_pre_tokenizer(model: ModelDir, pre: str, tree: Tree) -> str | None:
    """Fail when tokenizer.json itself is not the pre-tokenizer the converter wrote.

    The converter hashes the tokenization of a fixed text through ``AutoTokenizer``; with
    transformers 5 some tokenizers (Qwen2) are rebuilt from code, so a broken tokenizer.json
    still gets e.g. ``qwen2``. Here the same text goes through the ``tokenizers`` library
    loading tokenizer.json as is. Returns the matching hash (None when not applicable).
    """
    from hashlib import sha256

    chktxt, table = chkhsh_table(tree)
    if pre not in table.values() or (tok := model.tokenizer()) is None:
        return None  # the pre-tokenizer did not come from the hash table
    plain = tok.encode(chktxt, add_special_tokens=False).ids
    candidates = [tok.encode(chktxt).ids, plain]
    if model.bos_token and (bos_id := tok.token_to_id(model.bos_token)) is not None:
        candidates.append([bos_id, *plain])
    hashes = [sha256(str(ids).encode()).hexdigest() for ids in candidates]
    for h in hashes:
        if table.get(h) == pre:
            return h
    known = next((table[h] for h in hashes if h in table), None)
    raise ConversionError(
        f"tokenizer.json's own pre-tokenizer (chkhsh {hashes[0]}) is "
        + (f"llama.cpp's `{known}`" if known else "not one llama.cpp knows")
        + f", but the converter (through transformers) detected `{pre}`: the GGUF would "
        "tokenize differently from the fine-tuned model",
        "restore tokenizer.json from the base model (its pre_tokenizer section is wrong)",
    )


def _set_chat_template(tmp: Path, want: str | list[dict[str, str]], tree: Tree) -> None:
    """Rewrite ``tmp`` with ``want`` as its chat template (gguf-py's gguf_new_metadata.py)."""
    script = tree.gguf_py / "gguf" / "scripts" / "gguf_new_metadata.py"
    fixed = tmp.with_name(tmp.name + ".tmpl")
    value = want if isinstance(want, str) else json.dumps(want)
    fd, tfile = tempfile.mkstemp(prefix=".deploykit-tmpl-", dir=tmp.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
    try:
        flag = "--chat-template-file" if isinstance(want, str) else "--chat-template"
        arg = tfile if isinstance(want, str) else value
        cmd = [converter_cmd(tree)[0], script, tmp, fixed, flag, arg, "--force"]
        run = tools.run(cmd, name="gguf_new_metadata.py", env=converter_env(tree))
        run.check("could not add the chat template to the GGUF", ConversionError)
        os.replace(fixed, tmp)
    finally:
        for p in (Path(tfile), fixed):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def convert(
    model_dir: Path,
    out: Path,
    outtype: str = "f16",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    tree: Tree | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    tensors: hooked.TensorSource | None = None,
) -> dict[str, Any]:
    """Convert ``model_dir`` to the GGUF ``out``; returns a summary for ``--json``.

    An existing ``out`` is replaced only with ``force``; pickled weights (``*.bin``: loading
    them runs code) are converted only with ``allow_pickle``. With ``tensors`` the weights
    come from that source (a merge fused into the conversion), the rest from ``model_dir``."""
    started = time.monotonic()
    model_dir, out = Path(model_dir), Path(out)
    if outtype not in OUTTYPES:
        raise InputError(f"unknown --outtype {outtype!r}", f"use one of {', '.join(OUTTYPES)}")
    if not model_dir.is_dir():
        raise InputError(f"model folder not found: {model_dir}", "check the MODEL_DIR argument")
    model = ModelDir(model_dir)
    tree = tree or locate_tree()
    arch = model.architecture
    check_architecture(arch, tree)
    weights = model.weight_files()
    if tensors is None and not weights:
        raise InputError(
            f"{model_dir} has no weights (*.safetensors or pytorch_model*.bin)",
            "pass a merged model folder (`deploykit merge`), not an adapter",
        )
    if tensors is None and weights[0].suffix != ".safetensors" and not allow_pickle:
        raise InputError(
            f"{model_dir} has only pickled weights ({weights[0].name}): loading them runs code",
            "save the model as safetensors (save_pretrained(safe_serialization=True)), or pass "
            "--allow-pickle if you trust its source",
        )
    if tensors is None:
        model.check_weights()  # before the converter: a config that lies about them hangs it
    if not model.has_tokenizer:
        raise InputError(
            f"{model_dir} has no tokenizer files (none of {', '.join(VOCABULARY_FILES)})",
            "copy tokenizer.json and tokenizer_config.json from the base model into the folder",
        )
    check_not_input(out, [model_dir, *(tensors.inputs if tensors else ())])
    check_output_file(out, force=force)
    shapes = {n: shape for n, (_, shape) in tensors.shapes.items()} if tensors else None
    check_free_space(
        out.parent,
        estimate_bytes(model, outtype, shapes) + (tensors.scratch_bytes if tensors else 0),
        ConversionError,
        "the output",
        "free some space or write the output to another disk",
    )

    want_template = model.chat_templates
    meta_file = _metadata_file(metadata, out.parent) if metadata else None
    template_action = "embedded"
    try:
        with atomic_file(out) as tmp:
            args = [str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
            if name:
                args += ["--model-name", name]
            if meta_file:
                args += ["--metadata", str(meta_file)]
            cmd, env = converter_cmd(tree, *args), converter_env(tree)
            if tensors is not None:
                cmd, env = (
                    hooked.command(cmd[0], tree.path, tensors, *args),
                    hooked.environment(env),
                )
            run = tools.run(
                cmd,
                name="the llama.cpp converter",
                env=env,
                bar=f"converting {model_dir.name}",
                progress=_Progress(),
            )
            if run.crashed:
                run.check()
            if tensors is not None and (err := hooked.reported(tensors, run.returncode)):
                raise err  # the merge fused into the conversion failed, as itself
            if not run.ok:
                raise _failure(run, arch, tree)
            info = gguf_meta.read(tmp)
            if info.get("tokenizer.ggml.model") == "gpt2" and info.get("tokenizer.ggml.pre"):
                check_pre_tokenizer(model, info.get("tokenizer.ggml.pre"), tree)
            want = default_template(want_template)
            have = info.get("tokenizer.chat_template")
            if want is None:
                template_action = "missing" if not have else "embedded"
                if not have:
                    ui.warn(
                        "the model has no chat template (tokenizer_config.json, "
                        "chat_template.jinja); the GGUF has none either"
                    )
            elif have != want:
                _set_chat_template(tmp, want_template, tree)  # type: ignore[arg-type]
                info = gguf_meta.read(tmp)
                template_action = "added" if not have else "replaced"
    finally:
        if meta_file:
            with contextlib.suppress(FileNotFoundError):
                meta_file.unlink()
    return {
        "output": str(out),
        "bytes": out.stat().st_size,
        "model_dir": str(model_dir),
        "outtype": outtype,
        "file_type": info.file_type,
        "architecture": info.arch,
        "hf_architecture": arch,
        "pre_tokenizer": info.get("tokenizer.ggml.pre"),
        "chat_template": template_action,
        "tensors": len(info.tensors),
        "fused_merge": tensors is not None,
        "llama_cpp_commit": tree.commit,
        "seconds": round(time.monotonic() - started, 2),
    }
