"""An ms-swift run folder (``output/vN-DATE-TIME/``) given as an adapter is refused with one
line listing its checkpoints and naming the last; a LlamaFactory output folder holding the
final adapter (beside its checkpoints) is an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.core.errors import InputError
from deploykit.data.run_folders import refuse_run_folder
from tests.support.cli import invoke, one_error_line


def checkpoint(folder: Path, step: int) -> Path:
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return d


def swift_run(tmp_path: Path) -> Path:
    run = tmp_path / "output" / "v3-20260101-120000"
    for step in (50, 100, 150):  # 150 after 100: by step, not by name
        checkpoint(run, step)
    (run / "args.json").write_text("{}")
    (run / "logging.jsonl").write_text("")
    return run


def test_eval_refuses_an_ms_swift_run_folder_naming_its_last_checkpoint(tmp_path):
    run, base = swift_run(tmp_path), tmp_path / "base"
    base.mkdir()
    err = one_error_line(invoke("eval", "--data", str(tmp_path), "--hf", str(base),
                                "--adapter", str(run)), 3)  # fmt: skip
    assert f"{run} is an ms-swift run folder, not an adapter" in err
    assert "3 checkpoint(s) checkpoint-50, checkpoint-100, checkpoint-150" in err
    assert f"the last is checkpoint-150 (hint: pass --adapter {run / 'checkpoint-150'})" in err


def test_a_bare_run_folder_given_as_the_model_is_refused_too(tmp_path):
    run = swift_run(tmp_path)
    with pytest.raises(InputError, match="the last is checkpoint-150") as caught:
        refuse_run_folder(run, "--hf")
    assert caught.value.hint == f"pass --hf {run / 'checkpoint-150'}"


def test_an_output_folder_with_the_final_adapter_is_an_adapter(tmp_path):
    out = tmp_path / "saves" / "lora"
    checkpoint(out, 500)
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    refuse_run_folder(out)  # no error: LlamaFactory's output_dir keeps working
    refuse_run_folder(tmp_path)  # nor for a folder with no checkpoints


@pytest.mark.parametrize("command", ["merge", "ship"])
def test_merge_and_ship_refuse_an_ms_swift_run_folder(tmp_path, command):
    run, base = swift_run(tmp_path), tmp_path / "base"
    base.mkdir()
    args = ["--base", str(base)] if command == "merge" else []
    out = ["--out", str(tmp_path / "out")]
    err = one_error_line(invoke(command, "--adapter", str(run), *args, *out), 3)
    assert f"{run} is an ms-swift run folder, not an adapter" in err
    assert f"pass --adapter {run / 'checkpoint-150'}" in err
    assert not (tmp_path / "out").exists()
