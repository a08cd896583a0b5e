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
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import ConversionError, InputError
from deploykit.llamacpp import gguf_header as gguf_meta
from deploykit.llamacpp import tree as llamacpp

OUTTYPES = ("f16", "bf16", "f32", "q8_0", "auto")

#: Bytes per element of a >=2-D weight for each outtype (1-D tensors are always f32).
_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "auto": 2.0}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def model_chat_template(model_dir: Path) -> str | list[dict[str, str]] | None:
    """The chat template transformers would use for ``model_dir``.

    ``chat_template.jinja`` (plus ``additional_chat_templates/*.jinja``) wins over the
    ``chat_template`` in tokenizer_config.json, which wins over ``chat_template.json``.
    """
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        default = jinja.read_text(encoding="utf-8")
        extra = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
        if not extra:
            return default
        return [{"name": "default", "template": default}] + [
            {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra
        ]
    for name in ("tokenizer_config.json", "chat_template.json"):
        path = model_dir / name
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                tmpl = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
                if tmpl:
                    return tmpl
    return None


def default_template(tmpl: str | list[dict[str, str]] | None) -> str | None:
    """The default template out of a string or a list of named templates."""
    if isinstance(tmpl, list):
        for item in tmpl:
            if item.get("name") == "default":
                return item.get("template")
        return tmpl[0].get("template") if tmpl else None
    return tmpl


def _architecture(model_dir: Path) -> str:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"{model_dir} has no config.json",
            "pass a Hugging Face model directory (config.json, weights, tokenizer files)",
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{cfg_path} is not valid JSON ({exc})", "fix or re-download it") from None
    archs = cfg.get("architectures") or []
    if not archs:
        raise InputError(
            f'{cfg_path} names no architecture ("architectures" is missing)',
            'add e.g. "architectures": ["Qwen2ForCausalLM"] to config.json',
        )
    return archs[0]


def check_architecture(arch: str, tree: llamacpp.Tree) -> None:
    """Raise a ConversionError listing the close matches when the converter lacks ``arch``."""
    supported = llamacpp.supported_architectures(tree)
    if arch in supported:
        return
    close = difflib.get_close_matches(arch, supported, n=5, cutoff=0.6)
    near = f"; close matches: {', '.join(close)}" if close else ""
    raise ConversionError(
        f"architecture {arch} is not supported by the pinned llama.cpp converter{near}",
        'check config.json\'s "architectures"; `python vendor/llama.cpp/convert_hf_to_gguf.py '
        "--print-supported-models` lists all",
    )


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    return files or sorted(model_dir.glob("pytorch_model*.bin"))


def estimate_bytes(model_dir: Path, outtype: str) -> int:
    """About how many bytes the GGUF will take (from the safetensors headers)."""
    total = 0
    files = _weight_files(model_dir)
    for f in files:
        if f.suffix != ".safetensors":
            total += int(f.stat().st_size * _BYTES_PER_WEIGHT[outtype] / 2)
            continue
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= d
            per = 4.0 if len(t["shape"]) < 2 else _BYTES_PER_WEIGHT[outtype]
            total += int(per * count)
    tok = sum((model_dir / n).stat().st_size for n in TOKENIZER_FILES if (model_dir / n).is_file())
    return total + tok + (1 << 20)


def disk_free(path: Path) -> int:
    """Free bytes on the file system that holds ``path``."""
    return shutil.disk_usage(path).free


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def check_output(out: Path) -> None:
    """The output's folder must exist (or be creatable) and be writable."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output folder {parent} ({exc.strerror})",
            "pass --out in a writable folder",
        ) from None
    if out.is_dir():
        raise InputError(f"{out} is a folder", "pass a file name ending in .gguf to --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {parent} (permission denied)", "pass --out elsewhere")


def check_disk(out_dir: Path, needed: int) -> None:
    """Fail before starting when ``out_dir`` lacks ``needed`` bytes (plus a 5% margin)."""
    free = disk_free(out_dir)
    if free < needed * 1.05:
        raise ConversionError(
            f"not enough disk space in {out_dir}: the output needs about {_fmt_bytes(needed)} "
            f"({needed} bytes), {_fmt_bytes(free)} free",
            "free some space or write the output to another disk",
        )


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

    def __init__(self, bar) -> None:
        self.bar = bar
        self.tensors = 0
        self.pct = 0

    def feed(self, line: str) -> None:
        if self.TENSOR.match(line):
            self.tensors += 1
            if self.tensors % 16 == 1:
                self.bar.update(
                    self.bar.task_ids[0], description=f"converting ({self.tensors} tensors planned)"
                )
        elif m := self.WRITING.match(line):
            pct = int(m.group(1))
            if pct != self.pct:
                self.pct = pct
                self.bar.update(self.bar.task_ids[0], completed=pct, description="writing GGUF")


def _stream(cmd: list[str], env: dict[str, str], progress: _Progress) -> tuple[int, list[str]]:
    """Run ``cmd``; feed each output line (split on \\r and \\n) to ``progress``."""
    tail: deque[str] = deque(maxlen=5000)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    pending = b""
    while chunk := proc.stdout.read1(65536):
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for raw in lines:
            if raw:
                line = raw.decode("utf-8", errors="replace")
                tail.append(line)
                progress.feed(line)
    if pending:
        tail.append(pending.decode("utf-8", errors="replace"))
    return proc.wait(), list(tail)


def save_log(text: str, what: str) -> Path:
    """Keep a failed tool's full output in a temp file the error hint can point to."""
    fd, name = tempfile.mkstemp(prefix=f"deploykit-{what}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(name)


def _failure(lines: list[str], arch: str, tree: llamacpp.Tree) -> ConversionError:
    text = "\n".join(lines)
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
    errs = [ln for ln in lines if re.match(r"^(\w+Error|\w+Exception|ERROR|error)\b", ln)]
    last = (errs or [ln for ln in lines if ln.strip()] or ["no output"])[-1]
    return ConversionError(
        f"the llama.cpp converter failed: {last.strip()[:300]}",
        f"its full output is in {save_log(text, 'convert')}",
    )


def chkhsh_table(tree: llamacpp.Tree) -> tuple[str, dict[str, str]]:
    """The converter's pre-tokenizer check text and its ``chkhsh -> name`` table.

    Read from ``get_vocab_base_pre`` in the converter's sources (the last entry for a hash
    wins, as in the converter's chain of ``if``s).
    """
    import ast

    for path in (tree.path / "conversion" / "base.py", tree.converter):
        if not path.is_file():
            continue
        src = path.read_text(encoding="utf-8")
        m = re.search(r"^\s*chktxt = (.+)$", src, re.M)
        if not m:
            continue
        table = dict(
            re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#.*\n)*\s*res = "([^"]+)"', src)
        )
        return ast.literal_eval(m.group(1)), table
    raise ConversionError(
        f"cannot find the pre-tokenizer table in {tree.path}", "run `make vendor`"
    )


def check_pre_tokenizer(model_dir: Path, pre: str, tree: llamacpp.Tree) -> str | None:
    """Fail when tokenizer.json itself is not the pre-tokenizer the converter wrote.

    The converter hashes the tokenization of a fixed text through ``AutoTokenizer``; with
    transformers 5 some tokenizers (Qwen2) are rebuilt from code, so a broken tokenizer.json
    still gets e.g. ``qwen2``. Here the same text goes through the ``tokenizers`` library
    loading tokenizer.json as is. Returns the matching hash (None when not applicable).
    """
    from hashlib import sha256

    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    chktxt, table = chkhsh_table(tree)
    if not path.is_file() or pre not in table.values():
        return None  # the pre-tokenizer did not come from the hash table
    tok = Tokenizer.from_file(str(path))
    plain = tok.encode(chktxt, add_special_tokens=False).ids
    candidates = [tok.encode(chktxt).ids, plain]
    bos = _json_file(model_dir / "tokenizer_config.json").get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    if isinstance(bos, str) and (bos_id := tok.token_to_id(bos)) is not None:
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


def _json_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def _fix_chat_template(
    tmp: Path, want: str | list[dict[str, str]], tree: llamacpp.Tree, folder: Path
) -> None:
    """Rewrite ``tmp`` with ``want`` as its chat template (gguf-py's gguf_new_metadata.py)."""
    script = tree.gguf_py / "gguf" / "scripts" / "gguf_new_metadata.py"
    fixed = tmp.with_name(tmp.name + ".tmpl")
    value = want if isinstance(want, str) else json.dumps(want)
    fd, tfile = tempfile.mkstemp(prefix=".deploykit-tmpl-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
    try:
        flag = "--chat-template-file" if isinstance(want, str) else "--chat-template"
        arg = tfile if isinstance(want, str) else value
        proc = subprocess.run(
            [
                llamacpp.converter_cmd(tree)[0],
                str(script),
                str(tmp),
                str(fixed),
                flag,
                arg,
                "--force",
            ],
            capture_output=True,
            text=True,
            env=llamacpp.converter_env(tree),
        )
        if proc.returncode != 0:
            raise ConversionError(
                "could not add the chat template to the GGUF: "
                + (proc.stderr.strip().splitlines() or ["?"])[-1][:300],
                f"its full output is in {save_log(proc.stdout + proc.stderr, 'template')}",
            )
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
    tree: llamacpp.Tree | None = None,
) -> dict[str, Any]:
    """Convert ``model_dir`` to the GGUF ``out``; returns a summary for ``--json``."""
    started = time.monotonic()
    model_dir, out = Path(model_dir), Path(out)
    if outtype not in OUTTYPES:
        raise InputError(f"unknown --outtype {outtype!r}", f"use one of {', '.join(OUTTYPES)}")
    if not model_dir.is_dir():
        raise InputError(f"model folder not found: {model_dir}", "check the MODEL_DIR argument")
    tree = tree or llamacpp.locate_tree()
    arch = _architecture(model_dir)
    check_architecture(arch, tree)
    if not _weight_files(model_dir):
        raise InputError(
            f"{model_dir} has no weights (*.safetensors or pytorch_model*.bin)",
            "pass a merged model folder (`deploykit merge`), not an adapter",
        )
    if not any((model_dir / n).is_file() for n in TOKENIZER_FILES):
        raise InputError(
            f"{model_dir} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
            "copy tokenizer.json and tokenizer_config.json from the base model into the folder",
        )
    check_output(out)
    needed = estimate_bytes(model_dir, outtype)
    check_disk(out.parent, needed)

    want_template = model_chat_template(model_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    meta_file = _metadata_file(metadata, out.parent) if metadata else None
    args = [str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
    if name:
        args += ["--model-name", name]
    if meta_file:
        args += ["--metadata", str(meta_file)]
    template_action = "embedded"
    try:
        with ui.progress_bar(f"converting {model_dir.name}", 100) as bar:
            rc, lines = _stream(
                llamacpp.converter_cmd(tree, *args), llamacpp.converter_env(tree), _Progress(bar)
            )
        if rc != 0:
            raise _failure(lines, arch, tree)
        info = gguf_meta.read(tmp)
        if info.get("tokenizer.ggml.model") == "gpt2" and info.get("tokenizer.ggml.pre"):
            check_pre_tokenizer(model_dir, info.get("tokenizer.ggml.pre"), tree)
        want = default_template(want_template)
        have = info.get("tokenizer.chat_template")
        if want is None:
            template_action = "missing" if not have else "embedded"
            if not have:
                ui.info(
                    "warning: the model has no chat template (tokenizer_config.json, "
                    "chat_template.jinja); the GGUF has none either"
                )
        elif have != want:
            _fix_chat_template(tmp, want_template, tree, out.parent)  # type: ignore[arg-type]
            info = gguf_meta.read(tmp)
            template_action = "added" if not have else "replaced"
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it 0600
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
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
        "llama_cpp_commit": tree.commit,
        "seconds": round(time.monotonic() - started, 2),
    }
