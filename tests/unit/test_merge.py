"""The streaming merge equals peft's merge_and_unload() bit for bit, case by case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from deploykit.core.errors import InputError, MergeError
from deploykit.merge import ops
from deploykit.merge.merge import merge
from tests.support.cli import run_cli
from tests.support.models import TINY, load_base, make_adapter

SMALL = TINY


def _save_base(model, path: Path) -> Path:
    model.save_pretrained(path, max_shard_size="100KB")  # several input shards
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Tiny random bf16 models: Llama (untied), Qwen2 (tied, q/k/v biases), GPT-2 (fp16, Conv1D)."""
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    out = {}
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL, tie_word_embeddings=False))
    out["llama"] = _save_base(llama.to(torch.bfloat16), root / "llama")
    qwen = AutoModelForCausalLM.from_config(Qwen2Config(**SMALL, tie_word_embeddings=True))
    out["qwen2"] = _save_base(qwen.to(torch.bfloat16), root / "qwen2")
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=320, n_positions=128)
    )
    out["gpt2"] = _save_base(gpt2.to(torch.float16), root / "gpt2")
    return out


def peft_merge(base: Path, adapters: list[Path], vocab: int | None = None, dtype="auto") -> dict:
    model = load_base(base, vocab, dtype)
    for a in adapters:
        model = PeftModel.from_pretrained(model, a).merge_and_unload()
    return model.state_dict()


def ours(out: Path) -> dict:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = {}
    for f in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(out / f))
    return tensors


def assert_same(expected: dict, got: dict, tied: bool = False) -> None:
    if tied and "lm_head.weight" not in got:  # a tied checkpoint stores the shared tensor once
        emb = next(k for k in got if k.endswith(("embed_tokens.weight", "wte.weight")))
        assert expected["lm_head.weight"].equal(expected[emb])
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        differing = int((got[k] != v).sum())
        assert differing == 0, f"{k}: {differing} elements differ"


def check(
    bases, tmp_path, family: str, configs: list, dtype: str = "auto", vocab=None, tied: bool = False
) -> dict:
    adapters = [
        make_adapter(bases[family], c, tmp_path / f"a{i}", vocab, seed=i)
        for i, c in enumerate(configs)
    ]
    result = merge(adapters, tmp_path / "out", base=bases[family], dtype=dtype, shard_size="64KB")
    expected = peft_merge(bases[family], adapters, vocab)
    if dtype == "float16":
        expected = {
            k: v.to(torch.float16) if v.is_floating_point() else v for k, v in expected.items()
        }
    assert_same(expected, ours(tmp_path / "out"), tied=tied)
    assert result["shards"] > 1
    return result


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("dtype", ["auto", "float16"])
def test_lora_all_linear_with_patterns_modules_to_save_and_tokens(bases, tmp_path, dtype):
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=LINEAR,
        init_lora_weights=False,
        rank_pattern={"down_proj": 4, "layers.1.self_attn.q_proj": 12},
        alpha_pattern={"v_proj": 7},
        modules_to_save=["lm_head"],
        trainable_token_indices=[3, 5],
    )
    check(bases, tmp_path, "llama", [cfg], dtype)


def test_rslora_on_some_layers(bases, tmp_path):
    cfg = LoraConfig(
        r=16,
        lora_alpha=8,
        use_rslora=True,
        target_modules=LINEAR,
        layers_to_transform=[1],
        layers_pattern="layers",
        init_lora_weights=False,
    )
    check(bases, tmp_path, "llama", [cfg], "float16")


def test_dora(bases, tmp_path):
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=LINEAR, use_dora=True, init_lora_weights=False
    )
    check(bases, tmp_path, "llama", [cfg], "float16")


def test_lora_bias_on_biased_projections(bases, tmp_path):
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj"],
        lora_bias=True,
        init_lora_weights=False,
    )
    check(bases, tmp_path, "qwen2", [cfg], tied=True)


def test_fan_in_fan_out_conv1d(bases, tmp_path):
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        init_lora_weights=False,
    )
    check(bases, tmp_path, "gpt2", [cfg], tied=True)


def test_trainable_tokens_on_tied_model(bases, tmp_path):
    cfg = LoraConfig(
        r=8, target_modules=["q_proj"], trainable_token_indices=[7, 9], init_lora_weights=False
    )
    check(bases, tmp_path, "qwen2", [cfg], "float16", tied=True)


def test_embedding_lora(bases, tmp_path):
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False
    )
    check(bases, tmp_path, "llama", [cfg])


def test_lora_on_lm_head_of_tied_model_changes_the_shared_tensor(bases, tmp_path):
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["lm_head", "q_proj"], init_lora_weights=False
    )
    check(bases, tmp_path, "qwen2", [cfg], "float16", tied=True)
    cfg_out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg_out["tie_word_embeddings"] is True


def test_resized_vocabulary(bases, tmp_path):
    cfg = LoraConfig(r=8, target_modules=LINEAR, init_lora_weights=False)
    check(bases, tmp_path, "llama", [cfg], vocab=384)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 384


def test_modules_to_save_embeddings(bases, tmp_path):
    cfg = LoraConfig(
        r=8,
        target_modules=["q_proj"],
        modules_to_save=["embed_tokens", "lm_head"],
        init_lora_weights=False,
    )
    check(bases, tmp_path, "llama", [cfg], "float16")


def test_adalora(bases, tmp_path):
    cfg = AdaLoraConfig(
        init_r=6,
        target_r=4,
        lora_alpha=12,
        total_step=100,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )
    check(bases, tmp_path, "llama", [cfg])


def test_ia3(bases, tmp_path):
    cfg = IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    )
    check(bases, tmp_path, "qwen2", [cfg], "float16", tied=True)


def test_two_adapters_in_sequence(bases, tmp_path):
    a = LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, init_lora_weights=False)
    b = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "o_proj"],
        use_dora=True,
        init_lora_weights=False,
    )
    result = check(bases, tmp_path, "llama", [a, b], "float16")
    assert len(result["adapters"]) == 2


def test_lora_on_both_tied_embeddings_adds_the_deltas_in_peft_order(bases, tmp_path):
    """Both deltas land on the one shared tensor: the input embedding's first, as peft does."""
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["embed_tokens", "lm_head"], init_lora_weights=False
    )
    check(bases, tmp_path, "qwen2", [cfg], "float16", tied=True)


def test_float32_merge_is_a_float32_merge(bases, tmp_path):
    """--dtype float32 equals peft on the base loaded in float32: neither the LoRA deltas nor
    float32 modules_to_save weights are rounded to the base's bf16 on the way."""
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=LINEAR,
        modules_to_save=["lm_head"],
        trainable_token_indices=[3, 5],
        init_lora_weights=False,
    )
    adapter = make_adapter(bases["llama"], cfg, tmp_path / "a", dtype=torch.float32)
    result = merge([adapter], tmp_path / "out", base=bases["llama"], dtype="float32")
    assert result["dtype"] == "float32"
    expected = peft_merge(bases["llama"], [adapter], dtype=torch.float32)
    assert_same(expected, ours(tmp_path / "out"))


def test_auto_dtype_reports_what_the_tensors_are(bases, tmp_path):
    """A base whose config says float32 but whose tensors are bf16: auto writes bf16 and says so."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(bases["llama"], base)
    cfg = json.loads((base / "config.json").read_text())
    cfg.update({"torch_dtype": "float32", "dtype": "float32"})
    (base / "config.json").write_text(json.dumps(cfg))
    adapter = make_adapter(base, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a")
    result = merge([adapter], tmp_path / "out", base=base, dtype="auto")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (written["torch_dtype"], written["dtype"], result["dtype"]) == ("bfloat16",) * 3
    assert {t.dtype for t in ours(tmp_path / "out").values()} == {torch.bfloat16}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "modules, vocab, save",
    [
        (["lm_head"], 384, {}),
        (["lm_head", "embed_tokens"], 384, {}),
        (["lm_head", "embed_tokens"], None, {"save_embedding_layers": True}),
    ],
    ids=["head-resized", "both-resized", "both-saved"],
)
def test_adapters_saved_with_their_embedding_layers(bases, tmp_path, family, modules, vocab, save):
    """peft then writes lm_head.modules_to_save.weight, lm_head.original_module.weight and a
    plain lm_head.weight (the same for embed_tokens): merged as peft loads them."""
    from safetensors import safe_open

    cfg = LoraConfig(
        r=4, target_modules=["q_proj"], modules_to_save=modules, init_lora_weights=False
    )
    adapter = make_adapter(bases[family], cfg, tmp_path / "a", vocab=vocab, **save)
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.lm_head.original_module.weight" in f.keys()  # noqa: SIM118
    merge([adapter], tmp_path / "out", base=bases[family], dtype="auto")
    assert_same(peft_merge(bases[family], [adapter], vocab), ours(tmp_path / "out"), tied=True)


# --- bad input: one error, nothing left behind --------------------------------------------


def _no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize(
    "config",
    [PromptTuningConfig(num_virtual_tokens=4), PrefixTuningConfig(num_virtual_tokens=4)],
    ids=["prompt", "prefix"],
)
def test_prompt_style_adapters_are_refused_with_the_reason(bases, tmp_path, config):
    config.task_type = "CAUSAL_LM"
    adapter = make_adapter(bases["llama"], config, tmp_path / "a")
    with pytest.raises(MergeError, match="virtual tokens at inference time"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)


def test_shape_mismatch_names_the_tensor(bases, tmp_path):
    small = tmp_path / "wide"
    wide = dict(SMALL, hidden_size=96)
    AutoModelForCausalLM.from_config(LlamaConfig(**wide)).save_pretrained(small)
    adapter = make_adapter(small, LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a")
    with pytest.raises(MergeError, match=r"cannot merge into model\.layers\.0\.self_attn\.q_proj"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)


def test_adapter_matching_nothing_is_an_error(bases, tmp_path):
    adapter = make_adapter(
        bases["gpt2"], LoraConfig(r=4, target_modules=["c_attn"]), tmp_path / "a"
    )
    with pytest.raises(MergeError, match=r"target_modules \['c_attn'\] match no module"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = r".*\.(c_attn|q_proj)"  # the config now matches, the tensors do not
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="targets .*c_attn.weight, which the base model does not"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)


def test_fp16_overflow_is_refused_unless_allowed(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL)).to(torch.bfloat16)
    with torch.no_grad():
        model.model.norm.weight[0] = 1e6
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(
        tmp_path / "base", LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    with pytest.raises(MergeError, match=r"model\.norm\.weight has 1 values outside float16"):
        merge([adapter], tmp_path / "out", base=tmp_path / "base")
    _no_output(tmp_path)
    merge([adapter], tmp_path / "out", base=tmp_path / "base", allow_overflow=True)
    assert torch.isinf(ours(tmp_path / "out")["model.norm.weight"][0])


def test_an_existing_empty_output_folder_is_used(bases, tmp_path):
    adapter = make_adapter(
        bases["llama"], LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    (tmp_path / "out").mkdir()
    merge([adapter], tmp_path / "out", base=bases["llama"])
    assert (tmp_path / "out" / "config.json").is_file()


def test_existing_output_is_never_overwritten(bases, tmp_path):
    adapter = make_adapter(
        bases["llama"], LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="already exists"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


# --- the demo models, end to end through the CLI ------------------------------------------


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def merged_demo(request, demo_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"merged-{request.param}") / "merged"
    proc = run_cli(
        "merge", "--adapter", str(demo_dirs[request.param] / "adapter"), "--out", str(out), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    return request.param, demo_dirs[request.param], out, json.loads(proc.stdout)


def test_demo_merge_answers_like_the_fine_tune(merged_demo):
    from transformers import AutoTokenizer

    from deploykit.demo.models import greedy_answers

    _, d, out, result = merged_demo
    assert result["dtype"] == "float16" and result["tensors_changed"] == 14
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    probes = json.loads((d / "probes.json").read_text())["probes"]
    got = greedy_answers(model, AutoTokenizer.from_pretrained(out), [p["prompt"] for p in probes])
    assert got == [p["completion"] for p in probes]


def test_cli_bad_adapter_is_one_error_line(tmp_path, demo_dirs):
    proc = run_cli(
        "merge", "--adapter", str(demo_dirs["qwen2"] / "base"), "--out", str(tmp_path / "out")
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        f"error: {demo_dirs['qwen2'] / 'base'} is not a PEFT adapter (no adapter_config.json) "
        "(hint: pass the directory that PeftModel.save_pretrained wrote)"
    ]
    assert not (tmp_path / "out").exists()


def test_tokenizer_comes_from_the_adapter_when_it_has_one(demo_dirs, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(demo_dirs["qwen2"] / "adapter", adapter)
    base = demo_dirs["qwen2"] / "base"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(base / name, adapter / name)
    cfg = json.loads((adapter / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 4096  # the fine-tune's own tokenizer differs from the base's
    (adapter / "tokenizer_config.json").write_text(json.dumps(cfg))
    result = merge([adapter], tmp_path / "out")
    assert result["tokenizer_from"] == str(adapter)
    got = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert got["model_max_length"] == 4096


def test_variants_peft_refuses_are_refused(bases, tmp_path):
    adapter = make_adapter(
        bases["llama"], LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["layer_replication"] = [[0, 2], [1, 2]]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergeError, match="layers are replicated"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)


def test_not_enough_disk_fails_before_writing(bases, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    adapter = make_adapter(
        bases["llama"], LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(MergeError, match=r"not enough disk space .* need \d+ bytes, 1000 free"):
        merge([adapter], tmp_path / "out", base=bases["llama"])
    _no_output(tmp_path)


def test_adalora_after_rank_allocation(bases, tmp_path):
    """Ranks pruned by update_and_allocate (a rank_pattern in the config, some ranks zero)."""
    torch.manual_seed(0)
    cfg = AdaLoraConfig(
        init_r=6,
        target_r=2,
        tinit=1,
        tfinal=1,
        deltaT=1,
        total_step=6,
        lora_alpha=12,
        target_modules=["q_proj", "v_proj"],
    )
    model = get_peft_model(load_base(bases["llama"]), cfg)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 320, (2, 16))
    for step in range(6):
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        model.base_model.update_and_allocate(step)
        optim.zero_grad()
    model.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["rank_pattern"]
    merge([tmp_path / "a"], tmp_path / "out", base=bases["llama"], dtype="auto")
    assert_same(peft_merge(bases["llama"], [tmp_path / "a"]), ours(tmp_path / "out"))


@pytest.mark.parametrize(
    ("values", "overflows"),
    [
        ([1.0, 65504.0, 65519.0, -65519.0], 0),  # round to float16's largest finite value
        ([1.0, 65520.0], 1),  # the smallest float32 that float16 rounds to inf
        ([-65520.0, 1e6, 2.0], 2),
        ([float("inf"), 3.0], 0),  # already infinite: not an overflow of the cast
        ([float("nan"), 3.0], 0),
        ([float("nan"), 7e4], 1),
    ],
)
def test_the_fp16_overflow_check_counts_exactly_what_the_cast_makes_infinite(values, overflows):
    """The cheap check (one min/max reduction) agrees with the exact count it falls back to."""
    from deploykit.merge import ops

    t = torch.tensor(values, dtype=torch.float32)
    if overflows:
        with pytest.raises(MergeError, match=f"has {overflows} values outside float16"):
            ops.cast(t, torch.float16, "w", allow_overflow=False)
    else:
        assert torch.equal(ops.cast(t, torch.float16, "w", False), t.to(torch.float16)) or any(
            v != v for v in values
        )
    assert torch.isinf(ops.cast(t, torch.float16, "w", True)).sum() >= overflows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_values_are_counted_exactly(dtype):
    from deploykit.merge.merge import _nonfinite

    t = torch.ones(1000, dtype=dtype)
    assert _nonfinite(t, False) == 0
    t[[3, 500]] = float("inf")
    t[7] = float("nan")
    assert _nonfinite(t, False) == 3
    assert _nonfinite(t, True) == (1 if dtype == torch.float16 else 3)
    assert _nonfinite(torch.empty(0, dtype=dtype), False) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lora_through_reused_buffers_is_peft_arithmetic(monkeypatch, dtype):
    """LoRA with its float32 temporaries in a workspace, the base widened a step at a time
    (several steps and a last partial one), gives the bits of peft's ``weight += B @ A * s``,
    also for a second, smaller tensor through the same buffers and for a second adapter on a
    result still in the workspace (written to the other result slot)."""
    monkeypatch.setattr(ops, "STEP", 1000)
    ws, g = ops.Workspace(), torch.Generator().manual_seed(0)
    for rows, cols in [(97, 61), (40, 33)]:
        w = torch.randn(rows, cols, generator=g).to(dtype)
        b, a = torch.randn(rows, 4, generator=g), torch.randn(4, cols, generator=g)
        expected = w.clone()
        expected += (b @ a) * 0.37  # peft: the float32 delta added in place to the weight
        got = ops._lora(w, b, a, 0.37, ws)
        assert got.dtype == dtype and torch.equal(got, expected) and ws.holds(got)
    b, a = torch.randn(40, 4, generator=g), torch.randn(4, 33, generator=g)
    first = got.clone()
    expected = got.clone()
    expected += (b @ a) * 0.5
    second = ops._lora(got, b, a, 0.5, ws)
    assert torch.equal(second, expected) and second.data_ptr() != got.data_ptr()
    assert torch.equal(got, first)  # its input is left as it was


@pytest.mark.parametrize("base", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("out", [torch.float16, torch.bfloat16, torch.float32])
def test_lora_a_step_at_a_time_is_the_whole_tensor_merge_and_cast(monkeypatch, base, out):
    """The merge fed the base in pieces of any size (the last one partial) and cast a step at
    a time gives the bits of the whole-tensor merge then cast, and its minimum and maximum."""
    monkeypatch.setattr(ops, "STEP", 1000)
    ws, g = ops.Workspace(), torch.Generator().manual_seed(1)
    w = torch.randn(97, 61, generator=g).to(base)
    b, a = torch.randn(97, 4, generator=g), torch.randn(4, 61, generator=g)
    whole = ops._lora(w, b, a, 0.37, ops.Workspace())
    flat = w.reshape(-1)
    parts = [flat[i : i + 700] for i in range(0, flat.numel(), 700)]
    got = ws.get("out0", out, tuple(w.shape))
    bounds = ops.lora_cast(iter(parts), b, a, 0.37, ws, got)
    assert torch.equal(got, whole.to(out)) and bounds == ops.extremes(whole)
    with pytest.raises(ValueError, match="hold 6000 of its 5917 values|more than its 5917"):
        ops.lora_cast(iter(parts + [flat[:83]]), b, a, 0.37, ws, got)
    with pytest.raises(ValueError, match="hold 5600 of its 5917 values"):
        ops.lora_cast(iter(parts[:-1]), b, a, 0.37, ws, got)


def test_lora_values_out_of_float16s_range_or_nan_take_the_checked_path(tmp_path, monkeypatch):
    """A LoRA'd tensor merged a step at a time that overflows float16 is refused, naming it,
    as the whole-tensor path does (and written as inf when allowed); the base's own NaN is
    kept, not an error."""
    streamed, real = [], ops.lora_cast

    def spy(*args):
        streamed.append(bounds := real(*args))
        return bounds

    monkeypatch.setattr(ops, "lora_cast", spy)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL)).to(torch.bfloat16)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = 1e6
        model.model.layers[1].self_attn.q_proj.weight[1, 2] = float("nan")
    model.save_pretrained(tmp_path / "base")
    adapter = make_adapter(
        tmp_path / "base", LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a"
    )
    with pytest.raises(
        MergeError, match=r"layers\.0\.self_attn\.q_proj\.weight has 1 values outside float16"
    ):
        merge([adapter], tmp_path / "out", base=tmp_path / "base")
    _no_output(tmp_path)
    merge([adapter], tmp_path / "out", base=tmp_path / "base", allow_overflow=True)
    got = ours(tmp_path / "out")
    expected = peft_merge(tmp_path / "base", [adapter])
    for name, t in expected.items():
        assert torch.equal(got[name].isnan(), t.to(torch.float16).isnan()), name
        assert torch.equal(got[name].nan_to_num(0), t.to(torch.float16).nan_to_num(0)), name
    assert torch.isinf(got["model.layers.0.self_attn.q_proj.weight"][0, 0])
    assert torch.isnan(got["model.layers.1.self_attn.q_proj.weight"][1, 2])
    # each q_proj went a step at a time first: the refused merge stopped at layer 0's; the
    # allowed one wrote it (inf), and merged layer 1's again whole (NaN: it counts them)
    assert len(streamed) == 3 == SMALL["num_hidden_layers"] + 1
    assert streamed[0] == streamed[1] and streamed[0][1] > 65520
    assert all(map(math.isnan, streamed[2]))


def test_a_slot_is_reused_only_once_the_writer_wrote_it():
    """Tensors cast into the writer's two slots in turn reach the file whole and in order,
    however slow the writes: a slot is handed out only once its last buffer is written."""
    import time

    from deploykit.merge.merge import _BackgroundWriter
    from deploykit.merge.safetensors_io import tensor_bytes

    class Slow:
        parts: list[bytes] = []

        def write(self, buf):
            time.sleep(0.02)
            self.parts.append(bytes(buf))

    ws, fh = ops.Workspace(), Slow()
    writer = _BackgroundWriter(fh, depth=2)
    for k in range(6):
        slot = writer.slot()
        buf = ws.get(slot, torch.uint8, (4096,))
        buf.fill_(k)  # were the slot still queued, an earlier tensor would be overwritten
        writer.write(tensor_bytes(buf), slot)
    writer.close()
    assert fh.parts == [bytes([k]) * 4096 for k in range(6)]


def test_a_failed_write_reaches_the_producer_waiting_for_a_slot():
    from deploykit.merge.merge import _BackgroundWriter

    class Full:
        def write(self, buf):
            raise OSError(28, "No space left on device")

    writer = _BackgroundWriter(Full(), depth=2)
    with pytest.raises(OSError, match="No space"):
        for _ in range(4):  # the third slot() waits for the first write, which failed
            writer.write(b"x" * 10, writer.slot())
    with pytest.raises(OSError, match="No space"):
        writer.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_apply_with_and_without_buffers_agree(dtype):
    """``apply`` gives the same bits with a workspace as without one, also for a float64 base,
    which must not be narrowed to float32 before the add (1 + 2**-24 is a float32 tie: narrowed
    first, adding 2**-30 gives 1.0; added first, it rounds up)."""
    from deploykit.merge.adapters import Op

    factors = {"b": torch.full((64, 4), 0.5), "a": torch.full((4, 48), 0.5)}  # B @ A == 1

    class Factors:
        def get_tensor(self, key):
            return factors[key]

    w = torch.full((64, 48), 1 + 2**-24, dtype=torch.float64).to(dtype)
    op = Op("lora", {"B": "b", "A": "a"}, scaling=2**-30)
    plain = ops.apply(w, op, Factors(), dtype)
    assert torch.equal(ops.apply(w, op, Factors(), dtype, ops.Workspace()), plain)
