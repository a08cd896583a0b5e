"""Bad input and faults for ``deploykit merge``: one error line of the right class, nothing touched.

Each case copies a tiny real base and a real peft adapter into the corpus's temp tree, breaks
one thing, and runs ``deploykit merge`` through ``tests.support.corpus`` (in-process; HOME, the
caches and the working directory in the tree): the exit code of its class, one ``error: ...
(hint: ...)`` line, no traceback, no file created, changed or deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from deploykit.core.errors import InputError, MergeError
from deploykit.merge import adapters
from deploykit.merge.safetensors_io import iter_chunks, read_header, read_tensor
from tests.support import corpus
from tests.support.cli import invoke, one_error_line
from tests.support.models import TINY

PREFIX = "base_model.model.model.layers.0.self_attn."
CFG = "adapter_config.json"
Q_A, Q_B = PREFIX + "q_proj.lora_A.weight", PREFIX + "q_proj.lora_B.weight"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> tuple[Path, Path]:
    """A sharded bf16 Llama (untied) and a LoRA adapter on its q/v projections, made by peft."""
    root = tmp_path_factory.mktemp("failclosed-merge")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY, tie_word_embeddings=False))
    model.to(torch.bfloat16).save_pretrained(root / "base", max_shard_size="100KB")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


# --- editing the inputs -------------------------------------------------------------------------


@dataclass
class Inputs:
    """One case's copies of the inputs (under the corpus's temp tree)."""

    root: Path
    base: Path
    adapter: Path

    def shard_of(self, tensor: str) -> Path:
        index = json.loads((self.base / "model.safetensors.index.json").read_text())
        return self.base / index["weight_map"][tensor]

    @property
    def weights(self) -> Path:
        return self.adapter / "adapter_model.safetensors"


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_st(path: Path, header: dict | bytes, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_header(path: Path, edit: Callable[[dict], None]) -> None:
    header, data = split(path)
    edit(header)
    write_st(path, header, data)


def cut_inside(path: Path, tensor: str) -> None:
    """Truncate ``path`` halfway through ``tensor``."""
    header, _ = split(path)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    begin, end = header[tensor]["data_offsets"]
    os.truncate(path, 8 + n + (begin + end) // 2)


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    data = edit(data) if callable(edit) else {**data, **edit}
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def edit_tensors(i: Inputs, edit: Callable[[dict], None]) -> None:
    tensors = load_file(i.weights)
    edit(tensors)
    save_file(tensors, i.weights, metadata={"format": "pt"})


def ia3_with_bad_shape(i: Inputs) -> None:
    base = json.loads((i.adapter / CFG).read_text())["base_model_name_or_path"]
    config = {"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": []}
    (i.adapter / CFG).write_text(json.dumps({**config, "base_model_name_or_path": base}))
    save_file({PREFIX + "k_proj.ia3_l": torch.ones(32, 2)}, i.weights)


def tokens(indices: list[int], rows: int) -> Callable[[Inputs], None]:
    def edit(i: Inputs) -> None:
        edit_json(i.adapter / CFG, {"trainable_token_indices": indices})
        key = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
        edit_tensors(i, lambda t: t.update({key: torch.zeros(rows, 64)}))

    return edit


def tensor(key: str, value: torch.Tensor) -> Callable[[Inputs], None]:
    return lambda i: edit_tensors(i, lambda t: t.update({key: value}))


def tensors(**values: torch.Tensor) -> Callable[[Inputs], None]:
    keys = {"A": Q_A, "B": Q_B}
    return lambda i: edit_tensors(i, lambda t: t.update({keys[k]: v for k, v in values.items()}))


def q0(i: Inputs) -> Path:
    """The base shard that holds a tensor the adapter changes."""
    return i.shard_of("model.layers.0.self_attn.q_proj.weight")


def first_two(header: dict) -> tuple[str, str]:
    names = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    return names[0], names[1]


def shard_header(edit: Callable[[dict, str, str], None]) -> Callable[[Inputs], None]:
    """Edit the header of the q0 shard: ``edit(header, first tensor, second tensor)``."""
    return lambda i: edit_header(q0(i), lambda h: edit(h, *first_two(h)))


def shard_bytes(make: Callable[[bytes], bytes]) -> Callable[[Inputs], None]:
    return lambda i: q0(i).write_bytes(make(q0(i).read_bytes()))


def shard_header_raw(raw: bytes) -> Callable[[Inputs], None]:
    return lambda i: write_st(q0(i), raw, split(q0(i))[1])


def far_away(h: dict, a: str, b: str) -> None:
    begin, end = h[b]["data_offsets"]
    h[b]["data_offsets"] = [10**9, 10**9 + end - begin]


def weight_map(**changes: str) -> Callable[[Inputs], None]:
    def edit(i: Inputs) -> None:
        index = i.base / "model.safetensors.index.json"
        names = {k.replace("__", "."): v for k, v in changes.items()}
        names = {k: (q0(i).name if v == "<q0>" else v) for k, v in names.items()}
        edit_json(index, lambda d: {**d, "weight_map": {**d["weight_map"], **names}})

    return edit


def index_text(text: str) -> Callable[[Inputs], None]:
    return lambda i: (i.base / "model.safetensors.index.json").write_text(text)


def config(**changes) -> Callable[[Inputs], None]:
    return lambda i: edit_json(i.adapter / CFG, changes)


def config_bytes(raw: bytes) -> Callable[[Inputs], None]:
    return lambda i: (i.adapter / CFG).write_bytes(raw)


def cut(tensor_name: str) -> Callable[[Inputs], None]:
    return lambda i: cut_inside(i.shard_of(tensor_name), tensor_name)


def link_to_the_models(i: Inputs) -> None:
    (i.root / "link").symlink_to(i.adapter.parent)


def a_file_of_the_users(i: Inputs) -> None:
    (i.root / "notes.txt").write_text("mine")


def nothing(i: Inputs) -> None:
    pass


# --- faults while the command runs --------------------------------------------------------------


@contextlib.contextmanager
def read_only(root: Path):
    """A folder nobody may write to (chattr +i where root ignores modes) for ``--out``."""
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a read-only folder here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@contextlib.contextmanager
def file_size_limit(root: Path):
    """Writes fail part-way (EFBIG), as on a disk that fills up during the merge."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# --- the corpus ---------------------------------------------------------------------------------


@dataclass
class Case:
    """A merge case: ``edit`` breaks the copied inputs; ``says`` is a regex for the error line;
    ``out`` (``{root}``: the temp tree) and ``extra`` complete the command line; ``during``
    is a fault that lasts while the command runs."""

    id: str
    edit: Callable[[Inputs], object]
    code: int
    says: str
    out: str = "{root}/out"
    extra: tuple[str, ...] = ()
    during: Callable[[Path], contextlib.AbstractContextManager] | None = None


NAN, INF = float("nan"), float("inf")
FORCE = ("--force",)
Q0 = "model.layers.0.self_attn.q_proj.weight"
CASES = [
    # the base's safetensors files
    Case("base-cut-in-a-changed-tensor", cut(Q0), 3, r"truncated"),
    Case("base-cut-in-an-untouched-tensor", cut("model.norm.weight"), 3, r"truncated"),
    Case("base-empty-shard", shard_bytes(lambda b: b""), 3, r"safetensors: empty file"),
    Case("base-garbage", shard_bytes(lambda b: os.urandom(4096)), 3, r"\.safetensors: "),
    Case("base-4-bytes", shard_bytes(lambda b: b"\x08\0\0\0"), 3, r"only 4 bytes long"),
    Case(
        "base-header-too-long",
        shard_bytes(lambda b: struct.pack("<Q", 1 << 40) + b"{}"),
        3,
        r"header length \d+ does not fit",
    ),
    Case("base-header-not-json", shard_header_raw(b"{not json"), 3, r"not valid JSON"),
    Case("base-header-a-list", shard_header_raw(b"[]"), 3, r"not a JSON object"),
    Case(
        "base-unknown-dtype",
        shard_header(lambda h, a, b: h[a].update(dtype="Q4")),
        3,
        r"unknown or unsupported dtype 'Q4'",
    ),
    Case("base-offsets-out-of-range", shard_header(far_away), 3, r"leaves a gap"),
    Case("base-overlapping-ranges", shard_header(lambda h, a, b: h[b].update(h[a])), 3, "overlaps"),
    Case(
        "base-shape-disagrees",
        shard_header(lambda h, a, b: h[a].update(shape=[3])),
        3,
        r"needs 6 bytes",
    ),
    Case(
        "base-trailing-bytes", shard_bytes(lambda b: b + b"\0" * 16), 3, r"16 bytes follow the last"
    ),
    Case("base-shard-without-tensors", lambda i: write_st(q0(i), {}, b""), 3, "does not hold it"),
    # the base's index and config
    Case("index-not-json", index_text("{"), 3, r"cannot read .*index\.json"),
    Case("index-a-list", index_text("[]"), 3, r"index\.json is not a JSON object"),
    Case("index-without-weight-map", index_text('{"metadata": {}}'), 3, r"has no weight_map"),
    Case(
        "index-names-a-missing-shard",
        weight_map(model__norm__weight="gone.safetensors"),
        3,
        r"names gone\.safetensors",
    ),
    Case(
        "index-names-a-file-outside",
        weight_map(model__norm__weight="../adapter/adapter_model.safetensors"),
        3,
        r"bad file name",
    ),
    Case(
        "index-names-the-wrong-shard",
        weight_map(model__norm__weight="<q0>"),
        3,
        r"puts model\.norm\.weight in .*, which does not hold it",
    ),
    Case(
        "index-missing",
        lambda i: (i.base / "model.safetensors.index.json").unlink(),
        3,
        r"no model\.safetensors\.index\.json for its shards",
    ),
    Case(
        "base-config-not-utf8",
        lambda i: (i.base / "config.json").write_bytes(b'{"a": "\xff\xfe"}'),
        3,
        r"cannot read .*config\.json",
    ),
    Case(
        "base-config-a-list",
        lambda i: (i.base / "config.json").write_text("[]"),
        3,
        r"config\.json is not a JSON object",
    ),
    # the adapter's weights
    Case(
        "adapter-cut",
        lambda i: os.truncate(i.weights, i.weights.stat().st_size // 2),
        3,
        r"adapter_model\.safetensors: truncated",
    ),
    Case(
        "adapter-garbage",
        lambda i: i.weights.write_bytes(os.urandom(2048)),
        3,
        r"adapter_model\.safetensors: ",
    ),
    Case(
        "adapter-empty",
        lambda i: i.weights.write_bytes(b""),
        3,
        r"adapter_model\.safetensors: empty file",
    ),
    Case(
        "adapter-nan",
        tensors(B=torch.full((64, 4), NAN)),
        3,
        r"q_proj\.lora_B\.weight has 256 NaN or infinite",
    ),
    Case(
        "adapter-inf-in-a-full-tensor",
        tensor("base_model.model.lm_head.weight", torch.full((320, 64), INF)),
        3,
        r"lm_head\.weight has 20480 NaN or infinite",
    ),
    Case("adapter-int-dtype", tensors(A=torch.ones(4, 64, dtype=torch.int32)), 3, r"has dtype I32"),
    Case(
        "adapter-ranks-differ",
        tensors(B=torch.zeros(64, 3)),
        5,
        r"has rank 4 in .*lora_A\.weight but 3 in .*lora_B\.weight",
    ),
    Case(
        "adapter-rank-0",
        tensors(A=torch.zeros(0, 64), B=torch.zeros(64, 0)),
        5,
        r"has rank 0, adapter_config\.json says r=4",
    ),
    Case("adapter-r-disagrees", config(r=16), 5, r"has rank 4, adapter_config\.json says r=16"),
    Case(
        "adapter-replaces-a-tensor-with-another-shape",
        tensor("base_model.model.model.norm.weight", torch.ones(32)),
        5,
        r"cannot merge into model\.norm\.weight: .*shape \(32,\)",
    ),
    Case(
        "adapter-resizes-one-vocabulary-tensor",
        tensor("base_model.model.model.embed_tokens.weight", torch.zeros(384, 64)),
        5,
        r"resize the vocabulary unevenly",
    ),
    Case(
        "adapter-delta-of-another-shape",
        tensors(A=torch.zeros(4, 32)),
        5,
        r"cannot merge into model\.layers\.0\.self_attn\.q_proj\.weight",
    ),
    Case(
        "ia3-vector-of-a-wrong-shape",
        ia3_with_bad_shape,
        5,
        r"IA3 vector of .*k_proj has shape \(32, 2\), the layer needs \(32, 1\)",
    ),
    Case(
        "token-index-negative",
        tokens([-1], 1),
        3,
        r"trainable_token_indices must be a list of token ids",
    ),
    Case(
        "token-rows-do-not-match-the-ids",
        tokens([3, 5], 1),
        5,
        r"trainable token rows \(1, 64\) for 2 token ids",
    ),
    Case("token-index-beyond-the-vocabulary", tokens([320], 1), 5, r"do not fit \(320, 64\)"),
    # adapter_config.json
    Case("config-a-list", config_bytes(b"[1]"), 3, r"adapter_config\.json is not a JSON object"),
    Case(
        "config-too-deep",
        config_bytes(b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
        3,
        r"nested too deeply",
    ),
    Case(
        "config-not-utf8", config_bytes(b'{"r": "\xff"}'), 3, r"cannot read .*adapter_config\.json"
    ),
    Case(
        "lora-alpha-a-string",
        config(lora_alpha="16"),
        3,
        r"lora_alpha must be a finite number, not '16'",
    ),
    Case(
        "lora-alpha-null",
        config(lora_alpha=None),
        3,
        r"lora_alpha must be a finite number, not None",
    ),
    Case(
        "lora-alpha-1e308",
        config(lora_alpha=1e308),
        5,
        r"into model\.layers\.\d\.self_attn\.[qv]_proj\.weight gives \d+ NaN or infinite",
    ),
    Case(
        "alpha-pattern-bad-regex",
        config(alpha_pattern={"(": 4}),
        3,
        r"alpha_pattern must be a map of regexes",
    ),
    Case("rank-pattern-a-string", config(rank_pattern={"q_proj": "4"}), 3, r"rank_pattern must be"),
    Case("r-zero", config(r=0), 3, r"r must be a positive integer, not 0"),
    Case(
        "target-modules-match-nothing",
        config(target_modules=["nope"]),
        5,
        r"target_modules \['nope'\] match no module",
    ),
    Case(
        "target-modules-a-number",
        config(target_modules=42),
        3,
        r"target_modules must be a regex or a list",
    ),
    # where the output goes
    Case("out-is-the-adapters-parent", nothing, 3, "holds the input", "{root}/models", FORCE),
    Case("out-is-the-base", nothing, 3, "is the input", "{root}/models/base", FORCE),
    Case("out-is-above-everything", nothing, 3, "holds the input", "{root}", FORCE),
    Case(
        "out-is-a-link-to-the-inputs",
        link_to_the_models,
        3,
        "holds the input",
        "{root}/link",
        FORCE,
    ),
    Case("out-is-a-file", a_file_of_the_users, 3, "is a file", "{root}/notes.txt", FORCE),
    Case(
        "out-under-a-file",
        a_file_of_the_users,
        3,
        "cannot create the output folder",
        "{root}/notes.txt/out",
    ),
    Case(
        "out-read-only",
        nothing,
        3,
        "cannot write to .*read-only",
        "{root}/read-only/out",
        during=read_only,
    ),
    Case(
        "disk-fills-up",
        nothing,
        5,
        r"writing the merged model to .* failed \(File too large\)",
        during=file_size_limit,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_and_touches_nothing(case, originals, tmp_path):
    with contextlib.ExitStack() as faults:

        def setup(root: Path) -> None:
            i = Inputs(root, root / "models" / "base", root / "models" / "adapter")
            shutil.copytree(originals[0], i.base)
            shutil.copytree(originals[1], i.adapter)
            case.edit(i)
            if case.during:  # from here until the command has run
                faults.enter_context(case.during(root))

        args = ["merge", "--adapter", "{root}/models/adapter", "--base", "{root}/models/base"]
        row = corpus.Case(case.id, [*args, "--out", case.out, *case.extra], case.code, "", setup)
        result = corpus.run(row, tmp_path)
    line = one_error_line(result, case.code)
    assert re.search(case.says, line), line


def test_the_unbroken_inputs_merge(originals, tmp_path):
    """The corpus's control: the inputs every case breaks merge as they are."""
    base, adapter = originals
    args = ["--adapter", str(adapter), "--base", str(base), "--out", str(tmp_path / "out")]
    proc = invoke("merge", *args)
    assert proc.returncode == 0, proc.stderr


# --- properties ---------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Each example loads and plans the adapter (a few ms): fewer of them.
PLANS = settings(FAST, max_examples=100)
torch.manual_seed(0)
VALID = save(
    {
        "a": torch.randn(3, 4).to(torch.bfloat16),
        "b": torch.arange(6, dtype=torch.int64),
        "c": torch.randn(2, 2),
    },
    metadata={"format": "pt"},
)


def _read_all(path: Path) -> dict[str, torch.Tensor] | None:
    """Every tensor of ``path`` as deploykit reads it, or None for its one InputError; a header
    it accepts must then read in full, whole and in chunks."""
    try:
        entries, _ = read_header(path)
    except InputError:
        return None
    out = {}
    for e in entries:
        out[e.name] = read_tensor(e)
        assert tuple(out[e.name].shape) == e.shape
        whole = b"".join(iter_chunks(e, chunk=8))
        buf = bytearray(8)  # the same bytes read into one reused buffer
        parts = [bytes(c) for c in iter_chunks(e, chunk=8, into=lambda n, b=buf: memoryview(b)[:n])]
        assert len(whole) == e.end - e.begin and b"".join(parts) == whole
    return out


def _library(path: Path) -> dict[str, torch.Tensor] | None:
    """The same file as the safetensors library reads it (None when it refuses it)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception:  # the library raises SafetensorError, or others for odd headers
        return None


@FAST
@given(data=st.binary(max_size=400))
def test_any_bytes_are_tensors_or_one_input_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    _read_all(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "BF16", "I64", "F16", "Q4", "u8", ""]) | _json,
        "shape": st.lists(st.integers(-2, 14), max_size=3) | _json,
        "data_offsets": st.lists(st.integers(-8, 120), min_size=2, max_size=2) | _json,
    },
)


@FAST
@example(edits={}, cut=None, extra=b"")  # the unedited file reads
@given(
    edits=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "__metadata__"]), _entry | _json),
    cut=st.none() | st.integers(0, len(VALID) + 16),
    extra=st.binary(max_size=16),
)
def test_edited_headers_and_truncations_read_as_the_library_reads_them(
    tmp_path_factory, edits, cut, extra
):
    """Whatever the header and length: deploykit's tensors are the library's, or InputError."""
    (n,) = struct.unpack("<Q", VALID[:8])
    header, data = json.loads(VALID[8 : 8 + n]), VALID[8 + n :]
    for k, v in edits.items():
        merged = isinstance(header.get(k), dict) and isinstance(v, dict)
        header[k] = {**header[k], **v} if merged else v
    raw = json.dumps(header).encode()
    blob = struct.pack("<Q", len(raw)) + raw + data + extra
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(blob if cut is None else blob[:cut])
    ours, theirs = _read_all(path), _library(path)
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None:
        assert ours.keys() == theirs.keys()
        assert all(theirs[k].equal(t) for k, t in ours.items())


@pytest.fixture(scope="module")
def adapter_copy(originals, tmp_path_factory) -> tuple[Path, dict, dict]:
    """A copy of the adapter (its config rewritten per example) and the base's tensor shapes."""
    base, adapter = originals
    folder = tmp_path_factory.mktemp("config") / "adapter"
    shutil.copytree(adapter, folder)
    cfg = json.loads((folder / CFG).read_text())
    shapes = {e.name: e.shape for f in base.glob("*.safetensors") for e in read_header(f)[0]}
    return folder, cfg, shapes


def _load_and_plan(folder: Path, shapes: dict, cfg) -> None:
    (folder / CFG).write_text(json.dumps(cfg))
    adapters.plan(adapters.load(folder), shapes)


FIELDS = [
    "peft_type", "r", "lora_alpha", "alpha_pattern", "rank_pattern", "use_rslora", "use_dora",
    "fan_in_fan_out", "target_modules", "exclude_modules", "modules_to_save", "layers_pattern",
    "layers_to_transform", "trainable_token_indices", "init_lora_weights", "layer_replication",
    "base_model_name_or_path", "init_r", "feedforward_modules", "lora_bias",
]  # fmt: skip


@PLANS
@given(changes=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), _json, max_size=4))
def test_any_adapter_config_is_a_plan_or_an_input_or_merge_error(adapter_copy, changes):
    folder, cfg, shapes = adapter_copy
    with contextlib.suppress(InputError, MergeError):
        _load_and_plan(folder, shapes, {**cfg, **changes})


#: Values peft cannot compute with, per field: always bad input (InputError), never anything else.
WRONG = {
    "r": st.integers(max_value=0) | st.text() | st.floats() | st.none() | st.booleans(),
    "lora_alpha": st.text()
    | st.none()
    | st.booleans()
    | st.sampled_from([float("nan"), float("inf")])
    | st.lists(st.integers()),
    "alpha_pattern": st.text()
    | st.lists(st.integers(), min_size=1)
    | st.dictionaries(st.sampled_from(["(", "[", "q_proj"]), st.text(), min_size=1),
    "target_modules": st.integers()
    | st.dictionaries(st.text(), st.integers(), min_size=1)
    | st.sampled_from(["(", "*", "[a-"]),
    "trainable_token_indices": st.lists(st.integers(max_value=-1), min_size=1)
    | st.text(min_size=1)
    | st.lists(st.text(), min_size=1),
    "use_rslora": st.text(min_size=1) | st.integers(),
}


@PLANS
@given(data=st.data(), name=st.sampled_from(sorted(WRONG)))
def test_a_value_of_the_wrong_type_is_bad_input(adapter_copy, data, name):
    folder, cfg, shapes = adapter_copy
    value = data.draw(WRONG[name])
    with pytest.raises(InputError, match=name):
        _load_and_plan(folder, shapes, {**cfg, name: value})


@pytest.mark.parametrize("doc", ["[]", "1", '"x"', "null", "{", ""])
def test_a_config_that_is_not_an_object_is_bad_input(adapter_copy, doc):
    folder, _, _ = adapter_copy
    (folder / CFG).write_text(doc)
    with pytest.raises(InputError, match="adapter_config.json"):
        adapters.load(folder)
