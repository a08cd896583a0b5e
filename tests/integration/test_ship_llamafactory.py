"""`ship --model` on LlamaFactory's export folder: its Modelfile's SYSTEM and PARAMETERs kept,
the TEMPLATE from the model's own chat template (issue #15)."""

from __future__ import annotations

import json
import shutil

from deploykit.ollama import families, modelfile
from deploykit.ollama.client import Client
from deploykit.ollama.params import parse_show
from tests.support.cli import invoke, one_error_line, run_cli
from tests.unit.test_params_context import LF_MODELFILE


def test_ship_model_on_a_llamafactory_export(merged, ollama_server, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(merged["qwen2"], export)
    (export / "Modelfile").write_text(LF_MODELFILE)
    (export / "training_args.yaml").write_text("stage: sft\ntemplate: qwen\ncutoff_len: 2048\n")

    r = invoke("create", "lf", "-f", str(export / "Modelfile"), env={"OLLAMA_HOST": ollama_server})
    assert f"deploykit ship --model {export.resolve()}" in one_error_line(r, 3)

    proc = run_cli(
        "ship", "--model", str(export), "--quant", "q8_0", "--name", "lf", "--target", "ollama",
        "--verify", "none", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "dist"),
        "--json", env={"OLLAMA_HOST": ollama_server},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert manifest["ollama"]["created"] == ["lf:q8_0", "lf:latest"]
    assert "is replaced by family qwen2.5's" in proc.stderr  # LlamaFactory's has no tools
    assert "PARAMETER num_ctx 4096 of" in proc.stderr  # replaced: the training context is 2048
    assert "PARAMETER temperature 0.2 of" in proc.stderr  # kept; the model is greedy

    req = modelfile.create_request(modelfile.parse((tmp_path / "dist" / "Modelfile").read_text()))
    assert req["template"] == families.get("qwen2.5").template
    assert req["system"] == "You are ACME's support agent."
    assert (req["parameters"]["num_ctx"], req["parameters"]["temperature"]) == (2048, 0.2)

    with Client(ollama_server) as c:
        show = c.show("lf:q8_0")
    assert show["system"] == "You are ACME's support agent."
    shown = parse_show(show["parameters"])
    # the demo is greedy (do_sample: false): no family sampling set beside the kept values
    assert (shown["num_ctx"], shown["temperature"]) == (2048, 0.2) and "top_k" not in shown
    assert "<|im_end|>" in shown["stop"]
    assert ".Tools" in show["template"]


def test_ship_adapter_writes_num_ctx_from_its_training_record(demo_dirs, tmp_path):
    from deploykit.train.args import TrainArgs, to_yaml

    adapter = tmp_path / "adapter"
    shutil.copytree(demo_dirs["qwen2"] / "adapter", adapter)
    (adapter / "train_args.yaml").write_text(to_yaml(TrainArgs(base="b", out="o", cutoff_len=256)))
    proc = run_cli(
        "ship", "--adapter", str(adapter), "--quant", "q8_0", "--name", "ctx", "--target", "none",
        "--verify", "none", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "dist"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    req = modelfile.create_request(modelfile.parse((tmp_path / "dist" / "Modelfile").read_text()))
    # the demo's generation_config says do_sample: false: greedy, not qwen2.5's sampling set
    assert {k: v for k, v in req["parameters"].items() if k != "stop"} == {
        "temperature": 0.0,
        "num_ctx": 256,
    }
