"""The way forward for a chat template no family matches, end to end: detection names the
nearest family, `templates scaffold` starts a user family from it, the TEMPLATE is fixed,
`templates prove` passes, and `ship --families-dir` ships the model with it to the test server
(whose health check compares the server's rendering with the model's own template)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import one_error_line, run_cli
from tests.support.models import variant

OLD = "You are provided with function signatures within <tools></tools> XML tags:"
NEW = "Function signatures are given within <tools></tools> XML tags:"


def _edit_template(folder: Path) -> None:
    """The slight edit a fine-tune brings: another sentence in the tool instructions."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    assert OLD in config["chat_template"]
    config["chat_template"] = config["chat_template"].replace(OLD, NEW)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def test_scaffold_fix_prove_and_ship(merged, ollama_server, tmp_path):
    model = variant(merged["qwen2"], tmp_path / "bot-model", _edit_template)
    fams = tmp_path / "families"

    proc = run_cli(
        "templates", "scaffold", "--model-dir", str(model), "--out", str(fams), "--name", "bot"
    )
    assert proc.returncode == 0, proc.stderr
    assert "started from family qwen2.5" in proc.stdout
    for name in ("bot.toml", "bot.gotmpl", "references/bot.jinja"):
        assert (fams / name).is_file(), name

    proc = run_cli("templates", "prove", "--families-dir", str(fams), "bot")
    assert "parity proofs failed" in one_error_line(proc, 7)
    assert "differs   tools" in proc.stdout

    proc = run_cli("--families-dir", str(fams), "templates", "show", "bot")  # shown, not used
    assert proc.returncode == 0 and "bot (started from qwen2.5" in proc.stdout

    # the fix: the same sentence in the TEMPLATE
    path = fams / "bot.gotmpl"
    assert OLD in path.read_text()
    path.write_text(path.read_text().replace(OLD, NEW))
    proc = run_cli("templates", "prove", "--families-dir", str(fams), "bot", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True

    proc = run_cli(
        "--families-dir",
        str(fams),
        "ship",
        "--model",
        str(model),
        "--quant",
        "q8_0",
        "--name",
        "demo-bot",
        "--target",
        "ollama",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "dist"),
        "--json",
        env={"OLLAMA_HOST": ollama_server},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert {o["family"] for o in manifest["outputs"]} == {"bot"}
    modelfile = Path(manifest["outputs"][0]["modelfile"]).read_text()
    assert NEW in modelfile and OLD not in modelfile
    assert manifest["ollama"]["created"]
    for tag, report in manifest["ollama"]["health"].items():
        failed = [c for c in report["checks"] if not c["ok"]]
        assert not failed, (tag, failed)

    # without the user family, no family matches: the error names the nearest, with a diff
    gguf = manifest["outputs"][0]["path"]
    out = tmp_path / "Modelfile"
    args = ["modelfile", "--gguf", gguf, "--model-dir", str(model), "--out", str(out)]
    proc = run_cli(*args)
    line = one_error_line(proc, 3)
    assert "matches no known family" in line and "nearest family: qwen2.5" in line
    assert "templates scaffold" in line
    assert "Function signatures are given" in proc.stderr  # the short diff shows both sides
    assert "You are provided with function signatures" in proc.stderr
    # with it, the Modelfile uses it; broken again, it is refused
    assert run_cli("--families-dir", str(fams), *args).returncode == 0
    assert "family: bot" in out.read_text()
    gotmpl = fams / "bot.gotmpl"
    gotmpl.write_text(gotmpl.read_text().replace(NEW, OLD))
    proc = run_cli("--families-dir", str(fams), *args, "--force")
    assert "user family bot" in one_error_line(proc, 3) and "fails its parity proof" in proc.stderr
    assert "probe tools: differs" in proc.stderr
