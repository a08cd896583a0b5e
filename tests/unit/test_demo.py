"""The demo adapter is a real fine-tune: it answers its probes exactly, the bare base does not."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from deploykit.core.errors import InputError
from deploykit.demo import models


@pytest.fixture(scope="module", params=sorted(models.ARCHS))
def demo(request, demo_dirs):
    d = demo_dirs[request.param]
    probes = json.loads((d / "probes.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(d / "base")
    return request.param, d, probes, tokenizer


def test_layout_and_format(demo):
    arch, d, probes, _ = demo
    cfg = json.loads((d / "base" / "config.json").read_text())
    assert cfg["hidden_size"] == 256 and cfg["num_hidden_layers"] == 2
    assert cfg["tie_word_embeddings"] is True
    with safe_open(d / "base" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert dtypes == {"BF16"}
        shapes = [f.get_slice(k).get_shape() for k in f.keys() if "embed" not in k]  # noqa: SIM118
        matrices = [shape for shape in shapes if len(shape) == 2]
        # 7 per layer; Qwen3.5's linear-attention layer has 8, its mtp block 7 and fc
        assert len(matrices) == {"qwen3.5": 23}.get(arch, 14)
        assert all(shape[-1] % 256 == 0 for shape in matrices)
    adapter_cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "LORA"
    assert adapter_cfg["base_model_name_or_path"] == str((d / "base").resolve())
    assert set(adapter_cfg["target_modules"]) == set(models.ARCHS[arch].lora_targets)
    assert probes["arch"] == arch and len(probes["probes"]) == len(models.PROBES)


def test_fine_tune_answers_its_probes_exactly(demo):
    _, d, probes, tokenizer = demo
    base = AutoModelForCausalLM.from_pretrained(d / "base", dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, d / "adapter").eval()
    got = models.greedy_answers(tuned, tokenizer, [p["prompt"] for p in probes["probes"]])
    assert got == [p["completion"] for p in probes["probes"]]
    assert all(c.endswith(probes["end_of_turn"]) for c in got)


def test_bare_base_does_not(demo):
    _, d, probes, tokenizer = demo
    base = AutoModelForCausalLM.from_pretrained(d / "base", dtype=torch.float32).eval()
    got = models.greedy_answers(base, tokenizer, [p["prompt"] for p in probes["probes"]])
    for answer, probe in zip(got, probes["probes"], strict=True):
        assert probe["answer"] not in answer


def test_init_never_overwrites_without_force(demo_dirs, tree):
    d = demo_dirs["qwen2"]
    before = (d / "probes.json").read_bytes()
    with pytest.raises(InputError, match="already exists"):
        models.init(d, "qwen2", tree.path)
    assert (d / "probes.json").read_bytes() == before


def test_unknown_arch_is_bad_input(tmp_path, tree):
    with pytest.raises(InputError, match="unknown demo architecture"):
        models.init(tmp_path / "x", "gpt2", tree.path)
    assert not (tmp_path / "x").exists()


def test_the_cli_offers_every_demo_architecture():
    import click

    from deploykit.cli.system import demo_init
    from deploykit.demo.models import ARCHS

    [arch] = [p for p in demo_init.params if p.name == "arch"]
    assert isinstance(arch.type, click.Choice) and list(arch.type.choices) == list(ARCHS)


def test_a_probe_file_says_whether_a_probe_thinks(tmp_path):
    """``think`` in a probes file is sent to Ollama and given to the template; it must be a
    boolean (Gemma 4's demo is trained and asked with thinking off)."""
    from deploykit.model.probes import load_probe_file

    path = tmp_path / "probes.json"
    rows = [{"prompt": "a", "answer": "b", "think": False}, {"prompt": "c", "answer": "d"}]
    path.write_text(json.dumps({"probes": rows}))
    assert [p.think for p in load_probe_file(path).probes] == [False, None]
    path.write_text(json.dumps({"probes": [{"prompt": "a", "answer": "b", "think": "off"}]}))
    with pytest.raises(InputError, match="probe 0: think must be true or false"):
        load_probe_file(path)
    assert models.ARCHS["gemma4"].think is False and models.ARCHS["qwen2"].think is None
