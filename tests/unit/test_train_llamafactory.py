"""A LlamaFactory training YAML means what it means in LlamaFactory 0.9.5: its defaults fill
omitted keys, every key it uses is honoured (a real run on the tiny demo base), and the keys
deploykit cannot honour are refused with one line saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploykit.train import run
from tests.support.cli import invoke, one_error_line, run_cli

RECORDS = [
    {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(8)
] + [{"instruction": "Count.", "output": "1 2 3", "history": [["Ready?", "Yes."]]}]


@pytest.fixture(scope="module")
def base(demo_dirs) -> Path:
    return demo_dirs["qwen2"] / "base"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lf-data")
    (d / "tiny.json").write_text(json.dumps(RECORDS))
    (d / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    return d


def lf_yaml(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys))
    return path


def saved_args(out: Path) -> dict:
    return yaml.safe_load((out / "train_args.yaml").read_text())


#: Every key deploykit honours, as a LlamaFactory 0.9.5 user writes them.
def honoured(base: Path, dataset_dir: Path, out: Path) -> dict:
    return {
        "model_name_or_path": str(base), "trust_remote_code": True,
        "flash_attn": "disabled", "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target": "all",
        "use_dora": False, "use_rslora": False,
        "dataset": "tiny", "dataset_dir": str(dataset_dir), "template": "qwen",
        "cutoff_len": 64, "max_samples": 9, "overwrite_cache": True,
        "preprocessing_num_workers": 4, "dataloader_num_workers": 0,
        "train_on_prompt": False, "mask_history": True, "packing": False, "neat_packing": False,
        "enable_thinking": True, "output_dir": str(out), "overwrite_output_dir": True,
        "logging_steps": 1, "plot_loss": True, "report_to": "none",
        "save_strategy": "steps", "save_steps": 2, "save_total_limit": 1, "save_only_model": False,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3, "num_train_epochs": 1.0, "max_steps": 4,
        "lr_scheduler_type": "cosine", "warmup_steps": 1, "warmup_ratio": 0.0,
        "weight_decay": 0.01, "max_grad_norm": 0.5, "optim": "adamw_torch", "seed": 7,
        "bf16": False, "fp16": False, "ddp_timeout": 600, "disable_gradient_checkpointing": True,
        "val_size": 0.25, "per_device_eval_batch_size": 2, "eval_strategy": "steps",
        "eval_steps": 2, "resume_from_checkpoint": None,
    }  # fmt: skip


def test_every_honoured_key_trains_and_omitted_keys_take_llamafactory_defaults(
    base, dataset_dir, tmp_path
):
    out = tmp_path / "adapter"
    cfg = lf_yaml(tmp_path / "full.yaml", **honoured(base, dataset_dir, out))
    proc = run_cli("train", "--config", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["steps"] == 4 and result["held_out"] == 3  # ceil(0.25 * 9)
    args = saved_args(out)
    assert (args["lora_rank"], args["lora_alpha"], args["cutoff_len"], args["seed"]) == (
        4, 8, 64, 7)  # fmt: skip
    assert (args["warmup_steps"], args["lr_scheduler_type"], args["attn"]) == (1, "cosine", "eager")
    assert args["gradient_checkpointing"] is False and args["mask_history"] is True
    rows = run.read_log(out / run.LOG_FILE)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["current_steps"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["current_steps"] for r in rows if "eval_loss" in r] == [2, 4]
    assert {"total_steps", "lr", "epoch", "percentage", "elapsed_time", "remaining_time"} <= set(
        train_rows[-1]
    )
    assert train_rows[-1]["percentage"] == 100.0
    assert (out / run.PLOT_FILE).is_file()
    # checkpoints go beside the output (kept by a crash), save_total_limit keeps the last
    ckpts = sorted(p.name for p in (tmp_path / "adapter-checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-4"]

    # resume_from_checkpoint: true continues from the last checkpoint, to max_steps 6
    more = honoured(base, dataset_dir, out) | {"max_steps": 6, "resume_from_checkpoint": True}
    proc = run_cli("train", "--config", str(lf_yaml(tmp_path / "resume.yaml", **more)), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps"] == 6
    resumed = [r["current_steps"] for r in run.read_log(out / run.LOG_FILE) if "loss" in r]
    assert resumed == [5, 6]

    # a YAML that omits them gets LlamaFactory's defaults, not deploykit's
    minimal = {k: v for k, v in honoured(base, dataset_dir, tmp_path / "m").items() if k in (
        "model_name_or_path", "stage", "finetuning_type", "dataset", "dataset_dir",
        "output_dir", "max_steps", "cutoff_len")}  # fmt: skip
    minimal["max_steps"] = 1
    proc = run_cli("train", "--config", str(lf_yaml(tmp_path / "min.yaml", **minimal)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = saved_args(tmp_path / "m")
    assert {k: got[k] for k in (
        "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps",
        "gradient_accumulation_steps", "per_device_train_batch_size", "logging_steps",
        "gradient_checkpointing", "precision", "save_strategy", "save_steps", "lora_alpha")} == {
        "learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
        "warmup_steps": 0, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 8,
        "logging_steps": 500, "gradient_checkpointing": True, "precision": "fp32",
        "save_strategy": "steps", "save_steps": 500, "lora_alpha": None}  # fmt: skip


def test_deploykit_configs_keep_deploykits_defaults(base, dataset_dir, tmp_path):
    from deploykit.train.args import TrainArgs, llamafactory

    ours = {"base": str(base), "dataset": "tiny", "out": "x"}
    assert llamafactory(ours, "ours.yaml") == ours  # nothing added: deploykit's defaults
    d = TrainArgs()
    assert (d.learning_rate, d.lr_scheduler_type, d.warmup_ratio) == (1e-4, "cosine", 0.1)
    assert (d.gradient_accumulation_steps, d.per_device_train_batch_size) == (8, 1)


REFUSED = [
    ("quantization_bit", 4, "QLoRA needs a CUDA GPU and bitsandbytes"),
    ("deepspeed", "ds_z3_config.json", "use `accelerate launch` with a DeepSpeed config"),
    ("packing", True, "examples are padded per batch, not packed"),
    ("neat_packing", True, "examples are padded per batch, not packed"),
    ("additional_target", "embed_tokens", "adapters hold LoRA weights only"),
    ("pissa_init", True, "applies to PiSSA's residual base, not the original base"),
    ("enable_thinking", None, "null (thoughts kept, the empty one in the prompt) is no chat"),
    ("report_to", "wandb", "deploykit logs to trainer_log.jsonl only"),
    ("flash_attn", "fa2", "FlashAttention kernels are not used"),
    ("finetuning_type", "full", "only lora"),
    ("stage", "dpo", "only sft"),
    ("val_size", 0.1, "needs eval_strategy steps or epoch"),
    ("use_badam", True, "unknown setting(s) use_badam"),
]


@pytest.mark.parametrize("key,value,why", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_key_is_one_line_saying_why(key, value, why, tmp_path):
    keys = {"model_name_or_path": "base", "stage": "sft", "finetuning_type": "lora",
            "output_dir": str(tmp_path / "o"), key: value}  # fmt: skip
    err = one_error_line(invoke("train", "--config", str(lf_yaml(tmp_path / "lf.yaml", **keys))), 3)
    assert why in err and str(tmp_path / "lf.yaml") in err


def test_a_template_that_is_not_the_bases_is_refused_unless_told(base, dataset_dir, tmp_path):
    keys = {"model_name_or_path": str(base), "stage": "sft", "finetuning_type": "lora",
            "dataset": "tiny", "dataset_dir": str(dataset_dir), "max_steps": 1,
            "cutoff_len": 32, "template": "llama3", "output_dir": str(tmp_path / "o")}  # fmt: skip
    err = one_error_line(run_cli("train", "--config", str(lf_yaml(tmp_path / "a.yaml", **keys))), 3)
    assert "LlamaFactory template 'llama3' renders training examples differently" in err
    assert "looks like 'qwen3'" in err or "looks like 'qwen'" in err
    assert not (tmp_path / "o").exists()
    keys["template_mismatch"] = "model"
    proc = run_cli("train", "--config", str(lf_yaml(tmp_path / "b.yaml", **keys)))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_older_logs_are_still_read_and_plotted(tmp_path):
    old = tmp_path / "trainer_log.jsonl"
    old.write_text(
        '{"step": 5, "loss": 2.5, "lr": 0.001}\n{"step": 10, "loss": 1.5, "lr": 0.0005}\n'
    )
    rows = run.read_log(old)
    assert [(r["current_steps"], r["loss"], r["lr"]) for r in rows] == [
        (5, 2.5, 0.001), (10, 1.5, 0.0005)]  # fmt: skip
    run.plot(rows, tmp_path / "p.png", "old log")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_log_rows_use_llamafactorys_field_names():
    row = run.log_row({"loss": 1.25, "learning_rate": 1e-4, "epoch": 0.333333}, 2, 8, 30.0)
    assert row == {"current_steps": 2, "total_steps": 8, "loss": 1.25, "lr": 1e-4,
                   "epoch": 0.33, "percentage": 25.0, "elapsed_time": "0:00:30",
                   "remaining_time": "0:01:30"}  # fmt: skip
    assert run.log_row({"eval_loss": 0.5}, 4, 8, 1.0)["eval_loss"] == 0.5


def test_pissa_with_conversion_applies_to_the_original_base(base, dataset_dir, tmp_path):
    # learning rate 0: the trained model is the original base, so the converted adapter
    # (twice the rank) must change nothing on it; an unconverted PiSSA adapter would
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pissa"
    keys = {"model_name_or_path": str(base), "stage": "sft", "finetuning_type": "lora",
            "dataset": "tiny", "dataset_dir": str(dataset_dir), "cutoff_len": 96,
            "max_steps": 1, "learning_rate": 0.0, "lora_rank": 4, "pissa_init": True,
            "pissa_convert": True, "pissa_iter": -1, "output_dir": str(out)}  # fmt: skip
    proc = run_cli("train", "--config", str(lf_yaml(tmp_path / "p.yaml", **keys)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert not (out / "pissa_init").exists()
    ids = torch.tensor([[9707, 11, 1879, 0, 13]])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(model, out).eval()
        assert tuned.peft_config["default"].r == 8
        assert torch.allclose(tuned(input_ids=ids).logits, plain, atol=1e-4)


# --- enable_thinking: false -------------------------------------------------------------------
# LlamaFactory 0.9.5's qwen3 (a ReasoningTemplate), one turn, encode_oneturn/encode_multiturn:
# prompt "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", response
# "{a}<|im_end|>\n". enable_thinking true (its default) prepends the empty thought
# "<think>\n\n</think>\n\n" to the response (trained); false removes the answer's thought and
# appends the empty thought to the prompt (not trained).
PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
EMPTY = "<think>\n\n</think>\n\n"
REFERENCES = Path(__file__).parents[2] / "modelfile_templates" / "references"


@pytest.fixture(scope="module")
def qwen3_tokenizer(tree):
    from transformers import AutoTokenizer

    from deploykit.demo.tokenizer import tokenizer_dir

    tok = AutoTokenizer.from_pretrained(tokenizer_dir("qwen2", tree.path))
    tok.chat_template = (REFERENCES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    return tok


@pytest.mark.parametrize(
    "answer,thinking,expected",
    [
        ("Hello", True, [(PROMPT, False), (EMPTY + "Hello<|im_end|>\n", True)]),
        ("Hello", False, [(PROMPT + EMPTY, False), ("Hello<|im_end|>\n", True)]),
        ("<think>\nplan\n</think>\n\nHello", True,
         [(PROMPT, False), ("<think>\nplan\n</think>\n\nHello<|im_end|>\n", True)]),
        ("<think>\nplan\n</think>\n\nHello", False,
         [(PROMPT + EMPTY, False), ("Hello<|im_end|>\n", True)]),
    ],
)  # fmt: skip
def test_examples_render_as_llamafactorys_qwen3_with_enable_thinking(
    qwen3_tokenizer, answer, thinking, expected
):
    from deploykit.data import lf_templates
    from deploykit.data.formats import Conversation
    from deploykit.train import data

    conv = Conversation(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    )
    shown = conv if thinking else data.without_thinking(conv)
    assert data.segments(qwen3_tokenizer, shown, {} if thinking else data.NO_THINKING) == expected
    ex = data.encode(qwen3_tokenizer, conv, 1000, enable_thinking=thinking)
    ids = zip(ex.input_ids, ex.labels, strict=True)
    trained = qwen3_tokenizer.decode([t for t, lab in ids if lab != -100])
    assert trained == expected[1][0]
    # eval's label is the trained text with the special tokens skipped, as LlamaFactory's
    label = lf_templates.get("qwen3").label(answer, enable_thinking=thinking)
    assert label == expected[1][0].replace("<|im_end|>", "")


@pytest.fixture(scope="module")
def rebased(base, tmp_path_factory):
    """``f(reference)``: the demo base with that upstream chat template instead of its own."""
    import shutil

    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            d = tmp_path_factory.mktemp("rebased") / "base"
            shutil.copytree(base, d)
            cfg = json.loads((d / "tokenizer_config.json").read_text())
            cfg["chat_template"] = (REFERENCES / f"{name}.jinja").read_text(encoding="utf-8")
            (d / "tokenizer_config.json").write_text(json.dumps(cfg))
            (d / "chat_template.jinja").unlink(missing_ok=True)
            made[name] = d
        return made[name]

    return make


def _thinking_off(base: Path, dataset_dir: Path, out: Path, **more) -> dict:
    return {"model_name_or_path": str(base), "stage": "sft", "finetuning_type": "lora",
            "dataset": "tiny", "dataset_dir": str(dataset_dir), "max_steps": 1,
            "cutoff_len": 48, "enable_thinking": False, "output_dir": str(out)} | more  # fmt: skip


def test_enable_thinking_false_trains_on_a_base_with_the_switch(rebased, dataset_dir, tmp_path):
    qwen3 = rebased("Qwen-Qwen3-0.6B")
    keys = _thinking_off(qwen3, dataset_dir, tmp_path / "o", template="qwen3")
    proc = run_cli("train", "--config", str(lf_yaml(tmp_path / "t.yaml", **keys)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert saved_args(tmp_path / "o")["enable_thinking"] is False


def test_enable_thinking_false_is_refused_where_it_cannot_be_honoured(
    base, rebased, dataset_dir, tmp_path
):
    keys = _thinking_off(base, dataset_dir, tmp_path / "o")  # Qwen2.5's template: no switch
    err = one_error_line(run_cli("train", "--config", str(lf_yaml(tmp_path / "a.yaml", **keys))), 3)
    assert "the base's chat template has no enable_thinking switch" in err
    # SmolLM3's template has the switch, but LlamaFactory's smollm2 is no reasoning template
    smol = rebased("HuggingFaceTB-SmolLM3-3B")
    keys = _thinking_off(smol, dataset_dir, tmp_path / "o", template="smollm2")
    err = one_error_line(run_cli("train", "--config", str(lf_yaml(tmp_path / "b.yaml", **keys))), 3)
    assert "enable_thinking false does nothing in LlamaFactory's 'smollm2' template" in err
    assert not (tmp_path / "o").exists()


def test_a_nothink_template_is_not_qwen3s(rebased, dataset_dir, tmp_path):
    # LlamaFactory's qwen3_nothink trains "answer<|im_end|>\n"; Qwen3's own template renders
    # the empty think block in front of it
    keys = _thinking_off(rebased("Qwen-Qwen3-0.6B"), dataset_dir, tmp_path / "o",
                         template="qwen3_nothink", enable_thinking=True)  # fmt: skip
    err = one_error_line(run_cli("train", "--config", str(lf_yaml(tmp_path / "a.yaml", **keys))), 3)
    assert "'qwen3_nothink' renders training examples differently" in err
    assert "looks like 'qwen3'" in err


@pytest.mark.parametrize("thinking", [True, False])
def test_eval_prompts_and_labels_follow_enable_thinking(rebased, tmp_path, thinking):
    # LlamaFactory's qwen3 predict: the prompt gets the empty thought when thinking is off,
    # the label when it is on (its default)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}]))
    flag = "--enable-thinking" if thinking else "--no-enable-thinking"
    proc = run_cli("eval", "--data", str(data), "--hf", str(rebased("Qwen-Qwen3-0.6B")), flag,
                   "--max-new-tokens", "2", "--out", str(tmp_path / "e"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(x) for x in (tmp_path / "e" / "generated_predictions.jsonl").open()]
    if thinking:
        assert row["prompt"].endswith(PROMPT) and row["label"] == EMPTY + "Hello\n"
    else:
        assert row["prompt"].endswith(PROMPT + EMPTY) and row["label"] == "Hello\n"
