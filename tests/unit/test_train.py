"""The trainer on the tiny demo base: every method trains, saves and reloads with peft;
schedules have their shapes; LoRA+ groups; --layers; AdaLoRA ranks; merge accepts or
explains; a hub base is pulled through the one base resolver. Runs are a few steps on short
examples (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from deploykit.core.errors import MergeError
from deploykit.merge import merge as merge_mod
from deploykit.train import methods, run
from deploykit.train.args import TrainArgs
from tests.support.cli import run_cli
from tests.support.fakehub import FakeHub, Repo, client_env

DATA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
    {"instruction": "Say hi.", "output": "Hi!", "system": "Be brief."},
    {"instruction": "Count.", "output": "1 2 3", "history": [["Ready?", "Yes."]]},
]


@pytest.fixture(scope="module")
def base(demo_dirs) -> Path:
    return demo_dirs["qwen2"] / "base"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train-data") / "tiny.json"
    path.write_text(json.dumps(DATA))
    return path


def tiny(base: Path, data: Path, out: Path, **kw) -> TrainArgs:
    """A run of a few steps on short examples."""
    settings = {
        "base": str(base),
        "data": [str(data)],
        "out": str(out),
        "cutoff_len": 48,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "num_virtual_tokens": 4,
        "lora_rank": 4,
        **kw,
    }
    return TrainArgs(**settings)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / run.LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def base_logits(base):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    ids = torch.tensor([[9707, 11, 1879, 0, 13]])
    with torch.no_grad():
        return ids, model(input_ids=ids).logits[0, -1]


EXTRA = {
    # AdaLoRA: enough steps to reallocate ranks between its warm-up and final phases
    "adalora": {"max_steps": 8, "adalora_init_r": 4, "lora_rank": 2, "adalora_tinit": 1},
    "ptuning": {"encoder_type": "LSTM", "encoder_hidden_size": 32},
    "prefix": {"encoder_hidden_size": 32},
}


@pytest.mark.parametrize("method", methods.LORA_FAMILY + ("ia3",) + methods.PROMPT_STYLE)
def test_method_trains_saves_and_reloads(method, base, data_file, base_logits, tmp_path):
    out = tmp_path / method
    r = run.train(tiny(base, data_file, out, method=method, **EXTRA.get(method, {})))
    assert r["steps"] == (EXTRA.get(method, {}).get("max_steps", 2))
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    for name in (run.ARGS_FILE, run.PLOT_FILE):
        assert (out / name).stat().st_size > 0
    assert (out / run.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = log_rows(out)
    assert [row["current_steps"] for row in rows] == list(range(1, r["steps"] + 1))
    assert all(row["loss"] > 0 and row["lr"] > 0 for row in rows)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert cfg["peft_type"] == r["peft_type"]

    # reloads with peft onto the base, and the adapter changes what the model computes
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(model, out).eval()
    ids, plain = base_logits
    with torch.no_grad():
        got = tuned(input_ids=ids).logits[0, -1]
    assert torch.isfinite(got).all()
    assert not torch.allclose(got, plain, atol=1e-4)

    if method == "adalora":  # ranks differ per module after reallocation
        ranks = {k: sum(mask) for k, mask in cfg["rank_pattern"].items()}
        assert len(ranks) == 7 * 2  # every linear module of both layers
        assert len(set(ranks.values())) > 1, ranks
    if method == "prefix":
        assert cfg["prefix_projection"] is True
    if method == "ptuning-v2":
        assert cfg["prefix_projection"] is False
    if method == "ptuning":
        assert cfg["encoder_reparameterization_type"] == "LSTM"

    # merge takes every LoRA-family and IA3 output, and explains why it refuses the others
    if method in methods.PROMPT_STYLE:
        with pytest.raises(MergeError, match="cannot be merged|no weights that can be merged"):
            merge_mod.merge([out], tmp_path / "merged")
    else:
        merged = merge_mod.merge([out], tmp_path / "merged", dtype="float32")
        assert merged["tensors_changed"] > 0


SCHEDULES = {
    "constant": None,
    "constant_with_warmup": None,
    "linear": None,
    "cosine": None,
    "cosine_with_restarts": '{"num_cycles": 2}',
    "polynomial": '{"power": 2.0}',
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_shapes_in_trainer_log(schedule, base, tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"instruction": "Hi", "output": "Yo"}) + "\n")
    out = tmp_path / "out"
    peak, steps, warm = 1e-3, 12, 3
    run.train(
        tiny(
            base,
            data,
            out,
            max_steps=steps,
            per_device_train_batch_size=1,
            learning_rate=peak,
            lr_scheduler_type=schedule,
            lr_scheduler_kwargs=SCHEDULES[schedule],
            warmup_ratio=warm / steps,
        )
    )
    lr = [row["lr"] for row in log_rows(out)]
    assert len(lr) == steps
    if schedule == "constant":  # no warm-up at all
        assert lr == pytest.approx([peak] * steps)
        return
    ramp, rest = lr[: warm + 1], lr[warm:]
    assert ramp == sorted(ramp) and ramp[0] < peak / 2  # warm-up climbs ...
    assert lr[warm] == pytest.approx(peak)  # ... to the peak
    if schedule == "constant_with_warmup":
        assert rest == pytest.approx([peak] * len(rest))
    elif schedule == "cosine_with_restarts":
        low = min(range(warm, steps), key=lambda i: lr[i])
        assert lr[low] < peak * 0.05 and max(lr[low:]) > peak * 0.5  # decays, then restarts
    else:
        assert rest == sorted(rest, reverse=True) and lr[-1] < peak * 0.15  # decays to ~0
        drops = [a - b for a, b in zip(rest, rest[1:], strict=False)]
        if schedule == "linear":
            assert max(drops) == pytest.approx(min(drops), rel=1e-3)
        elif schedule == "cosine":
            assert drops[0] < drops[len(drops) // 2] and lr[-1] < peak * 0.05
        elif schedule == "polynomial":  # power 2: big drops first, small ones last
            assert drops[0] > drops[-1] * 2


def test_loraplus_gives_b_a_larger_learning_rate(base, data_file, tmp_path):
    args = tiny(base, data_file, tmp_path / "out", method="loraplus", loraplus_lr_ratio=8.0)
    trainer, _ = run.build(args, tmp_path / "work")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lr_of: dict[str, set[float]] = {"lora_A": set(), "lora_B": set()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            kind = "lora_B" if "lora_B" in names[id(p)] else "lora_A"
            lr_of[kind].add(group["lr"])
    assert sorted(lr_of["lora_A"]) == pytest.approx([args.learning_rate])
    assert sorted(lr_of["lora_B"]) == pytest.approx([args.learning_rate * 8.0])
    # and the scheduler the Trainer builds scales every group
    trainer.create_scheduler(num_training_steps=2, optimizer=trainer.optimizer)
    assert sorted(trainer.lr_scheduler.get_last_lr()) == pytest.approx(
        sorted(g["lr"] for g in trainer.optimizer.param_groups)
    )


def test_layers_leave_other_layers_without_adapters(base, data_file, tmp_path):
    out = tmp_path / "out"
    run.train(tiny(base, data_file, out, layers="1", max_steps=1))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(".layers.1." in k for k in keys)
    assert {k.split(".layers.1.")[1].split(".lora_")[0] for k in keys} == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }


def test_out_of_range_layers_and_unknown_targets_are_input_errors(base, data_file, tmp_path):
    from deploykit.core.errors import InputError

    with pytest.raises(InputError, match="outside 0-1"):
        run.train(tiny(base, data_file, tmp_path / "a", layers="0-5"))
    with pytest.raises(InputError, match="no module named qq_proj"):
        run.train(tiny(base, data_file, tmp_path / "b", lora_target="q_proj,qq_proj"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- a hub base: resolved by the same code as merge's -----------------------------------------

HUB_REPO, HUB_COMMIT = "acme/demo-base", "3" * 40


@pytest.fixture(scope="module")
def hub(base):
    """A loopback hub (HF and ModelScope protocols) serving the demo base, plus a pickle that
    must never be fetched."""
    files = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"pickle" * 100
    repo = Repo({HUB_COMMIT: files}, {"main": HUB_COMMIT, "master": HUB_COMMIT})
    fake = FakeHub({HUB_REPO: repo}).start()
    yield fake
    fake.stop()


# ModelScope: the hub the old code ignored (merge's Hugging Face path is tested in test_pull.py)
@pytest.mark.parametrize("source", ["modelscope"])
def test_hub_base_is_pulled_like_merge_and_recorded_by_id(hub, data_file, tmp_path, source):
    hub.requests.clear()
    env = client_env(hub, tmp_path, source)
    out = tmp_path / "adapter"
    proc = run_cli("train", "--base", HUB_REPO, "--data", str(data_file), "--out", str(out),
                   "--max-steps", "1", "--cutoff-len", "48", "--lora-rank", "4", "--json",
                   env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    asked = hub.paths()
    assert asked and all(p.startswith("/api/v1/") == (source == "modelscope") for p in asked)
    assert not any("pytorch_model" in p for p in asked)  # pickles stay excluded
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["base_model_name_or_path"], cfg["revision"]) == (HUB_REPO, HUB_COMMIT)
    assert json.loads(proc.stdout)["base"] == HUB_REPO
    assert yaml.safe_load((out / run.ARGS_FILE).read_text())["base"] == HUB_REPO
    # merge finds the same base from what the adapter records: the same snapshot of the same hub
    merged = run_cli("merge", "--adapter", str(out), "--out", str(tmp_path / "m"), "--json",
                     env=env)  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-3000:]
    cache = env["HF_HOME"] if source == "hf" else env["MODELSCOPE_CACHE"]
    assert Path(json.loads(merged.stdout)["base"]).is_relative_to(cache)
