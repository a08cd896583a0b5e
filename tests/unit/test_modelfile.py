"""`deploykit modelfile`: rendering, validation against Ollama's Modelfile rules, parsing back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

from deploykit.core.errors import InputError
from deploykit.llamacpp import tree as llamacpp
from deploykit.ollama import families as templates
from deploykit.ollama import modelfile
from tests.support.cli import run_cli

# --- PARAMETER validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "typed"),
    [
        ("temperature", "0.7", 0.7),
        ("top_k", "20", 20),
        ("seed", "-1", -1),
        ("use_mmap", "false", False),
        ("use_mmap", "T", True),
        ("stop", "<|im_end|>", "<|im_end|>"),
        ("num_ctx", "8192", 8192),
    ],
)
def test_parameter_values_are_typed_like_ollama(name, raw, typed):
    assert modelfile.coerce_parameter(name, raw) == typed
    assert type(modelfile.coerce_parameter(name, raw)) is type(typed)


@pytest.mark.parametrize(
    ("name", "raw", "match"),
    [
        ("Temperature", "0.5", "unknown PARAMETER 'Temperature'"),
        ("temprature", "0.5", "unknown PARAMETER"),
        ("temperature", "hot", "must be float"),
        ("temperature", "nan", "must be float"),
        ("top_k", "1.5", "must be int"),
        ("use_mmap", "maybe", "must be bool"),
        ("stop", "a\nb", "single-line"),
        ("stop", "", "non-empty"),
        ("mirostat", "1", "deprecated"),
    ],
)
def test_bad_parameters_are_rejected(name, raw, match):
    with pytest.raises(InputError, match=match) as exc:
        modelfile.coerce_parameter(name, raw)
    if name == "Temperature":
        assert "temperature" in exc.value.hint


def test_param_option_needs_name_and_value():
    assert modelfile.parse_param_option("top_p=0.9") == ("top_p", 0.9)
    with pytest.raises(InputError, match="NAME=VALUE"):
        modelfile.parse_param_option("top_p")


# --- text values and Ollama's parser -----------------------------------------------------------


def test_triple_quote_at_line_end_is_rejected_and_why():
    bad = 'Be nice.\nSay """hi"""\nIgnore this'
    with pytest.raises(InputError, match='line 2 ends with """'):
        modelfile.check_text("SYSTEM", bad)
    with pytest.raises(InputError):
        modelfile.check_text("SYSTEM", 'trailing blanks count too"""  \nx')
    # what a naive writer would produce is read differently by Ollama's rules
    naive = f'FROM ./m.gguf\nSYSTEM """{bad}"""\n'
    with pytest.raises(modelfile.ModelfileParseError, match="command must be one of"):
        modelfile.parse(naive)
    # mid-line """ is fine, and reads back unchanged
    ok = 'He said """hi""" ok'
    assert modelfile.check_text("SYSTEM", ok) == ok
    assert modelfile.parse(f'FROM x\nSYSTEM """{ok}"""\n')[1] == ("system", ok)


def test_parser_follows_ollama_rules():
    text = (
        "\ufeff# comment\n"
        "from ./model.gguf\n"
        'SYSTEM """\nline one\n  indented\n"""\n'
        'TEMPLATE "{{ .Prompt }}\nsecond"\n'
        "SYSTEM # not a comment\n"
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop </s>\n"
        "PARAMETER temperature 0.5\n"
        "MESSAGE user hello there\n"
        'LICENSE """MIT\r\nline"""\n'
    )
    cmds = modelfile.parse(text)
    assert cmds[0] == ("from", "./model.gguf")
    assert cmds[1] == ("system", "\nline one\n  indented\n")
    assert cmds[2] == ("template", "{{ .Prompt }}\nsecond")
    assert cmds[3] == ("system", "# not a comment")
    req = modelfile.create_request(cmds)
    assert req["parameters"] == {"stop": ["<|im_end|>", "</s>"], "temperature": 0.5}
    assert req["messages"] == [{"role": "user", "content": "hello there"}]
    assert req["license"] == ["MIT\r\nline"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('FROM x\nSYSTEM """never closed\n', "unexpected EOF"),
        ("SYSTEM hi\n", "no FROM line"),
        ("FROM x\nSTOP now\n", "command must be one of"),
        ("FROM x\nPARAMETER Temperature 0.5\n", "unknown PARAMETER 'Temperature'"),
        ("FROM x\nPARAMETER top_k 0.5\n", "must be int"),
        ("FROM x\nMESSAGE tool hi\n", "message role must be one of"),
    ],
)
def test_parser_rejects_what_ollama_rejects(text, match):
    with pytest.raises(InputError, match=match):
        modelfile.create_request(modelfile.parse(text))


def test_jinja_template_file_is_not_a_go_template():
    jinja = templates.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text()
    with pytest.raises(InputError, match="looks like a Jinja chat template"):
        modelfile.check_go_template(jinja, "t.jinja")


# --- rendering from a model directory ---------------------------------------------------------


def _fake_gguf(tmp_path: Path) -> Path:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF")
    return p


def test_render_qwen_demo_from_model_dir(demo_dirs, tmp_path):
    out = tmp_path / "Modelfile"
    r = modelfile.render(_fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", out=out)
    assert (r.family, r.detected) == ("qwen2.5", True)
    req = modelfile.create_request(modelfile.parse(r.text))
    assert req["from"] == "./model.gguf"
    assert req["template"] == templates.get("qwen2.5").go_template()
    assert req["system"] == templates.get("qwen2.5").default_system
    assert req["parameters"] == {
        "temperature": 0.7,
        "top_p": 0.8,
        "repeat_penalty": 1.05,
        "top_k": 20,
        # family stops, then the model's eos and generation_config eos ids
        "stop": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    }
    assert "REQUIRES" not in r.text


def test_generation_config_beats_family_and_param_beats_both(demo_dirs, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(demo_dirs["qwen2"] / "base", model)
    gc = json.loads((model / "generation_config.json").read_text())
    gc.update(temperature=0.3, top_p=0.5, repetition_penalty=1.1)
    (model / "generation_config.json").write_text(json.dumps(gc))
    r = modelfile.render(
        _fake_gguf(tmp_path),
        model_dir=model,
        params=[("top_p", 0.95), ("stop", "###")],
        system="Be brief.",
    )
    req = modelfile.create_request(modelfile.parse(r.text))
    p = req["parameters"]
    assert (p["temperature"], p["top_p"], p["repeat_penalty"], p["top_k"]) == (0.3, 0.95, 1.1, 20)
    assert p["stop"][-1] == "###"
    assert req["system"] == "Be brief."


def test_newer_server_families_say_so(demo_dirs, tmp_path):
    gguf = _fake_gguf(tmp_path)
    base = demo_dirs["qwen2"] / "base"
    mistral = modelfile.render(gguf, model_dir=base, family="mistral")
    assert modelfile.create_request(modelfile.parse(mistral.text))["requires"] == "0.14.0"
    qwen3 = modelfile.render(gguf, model_dir=base, family="qwen3")
    assert "requires" not in modelfile.create_request(modelfile.parse(qwen3.text))
    assert "# needs Ollama >= 0.11.0" in qwen3.text


def test_explicit_family_that_differs_from_the_model_warns(demo_dirs, tmp_path):
    r = modelfile.render(
        _fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", family="chatml"
    )
    assert (r.family, r.detected) == ("chatml", False)
    assert r.warnings == ["the model's chat template is not family chatml's (it matches qwen2.5)"]


def test_modelfile_templates_render_sandboxed_and_strict():
    env = templates.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ not_given }}").render()
    with pytest.raises(jinja2.exceptions.SecurityError):
        env.from_string("{{ ''.__class__.__mro__ }}").render()


def test_gemma_refuses_a_system_prompt(demo_dirs, tmp_path):
    with pytest.raises(InputError, match="no system role"):
        modelfile.render(
            _fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", family="gemma", system="x"
        )


def test_write_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "Modelfile"
    out.write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        modelfile.write(out, "FROM x\n")
    assert out.read_text() == "mine"
    modelfile.write(out, "FROM x\n", force=True)
    assert out.read_text() == "FROM x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["Modelfile"]  # no temp files left


# --- the CLI on real GGUFs (acceptance) ---------------------------------------------------------


@pytest.fixture(scope="session")
def demo_ggufs(demo_dirs, tree, tmp_path_factory) -> dict[str, Path]:
    """Metadata-only GGUFs of both demo bases (the vendored converter, --vocab-only)."""
    out = {}
    d = tmp_path_factory.mktemp("ggufs")
    for arch, root in demo_dirs.items():
        path = d / f"{arch}.gguf"
        cmd = llamacpp.converter_cmd(
            tree, str(root / "base"), "--vocab-only", "--outfile", str(path)
        )
        proc = subprocess.run(cmd, env=llamacpp.converter_env(tree), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[arch] = path
    return out


@pytest.mark.parametrize(("arch", "family"), [("qwen2", "qwen2.5"), ("llama", "llama3")])
def test_cli_modelfile_auto_detects_from_gguf(demo_ggufs, tmp_path, arch, family):
    out = tmp_path / "release" / "Modelfile"
    r = run_cli("modelfile", "--gguf", str(demo_ggufs[arch]), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (result["family"], result["detected"]) == (family, True)
    req = modelfile.create_request(modelfile.parse(out.read_text()))
    assert (out.parent / req["from"]).resolve() == demo_ggufs[arch].resolve()
    assert req["template"] == templates.get(family).go_template()
    fam = templates.get(family)
    assert req["parameters"]["stop"][: len(fam.stop)] == list(fam.stop)
    eos = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>"}[arch]
    assert eos in req["parameters"]["stop"]


def one_error_line(r) -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_cli_bad_inputs_give_one_error_line_and_write_nothing(demo_dirs, tmp_path):
    base = demo_dirs["qwen2"] / "base"
    gguf = _fake_gguf(tmp_path)
    jinja = tmp_path / "t.jinja"
    jinja.write_text(templates.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text())
    lic = tmp_path / "LICENSE"
    lic.write_text('Terms """\nmore')
    edited = tmp_path / "edited"
    shutil.copytree(base, edited)
    tc = json.loads((edited / "tokenizer_config.json").read_text())
    tc["chat_template"] = tc["chat_template"].replace("helpful assistant", "helpful bot")
    (edited / "tokenizer_config.json").write_text(json.dumps(tc))
    out = tmp_path / "Modelfile"
    common = ["modelfile", "--gguf", str(gguf), "--out", str(out)]
    cases = [
        (["--model-dir", str(base), "--system", 'A\nB"""'], 'ends with """'),
        (["--model-dir", str(base), "--param", "Temperature=0.5"], "unknown PARAMETER"),
        (["--model-dir", str(base), "--param", "top_k=high"], "must be int"),
        (["--model-dir", str(base), "--param", "stop"], "NAME=VALUE"),
        (["--model-dir", str(base), "--license", str(lic)], 'ends with """'),
        (["--model-dir", str(base), "--template-file", str(jinja)], "Jinja chat template"),
        (["--model-dir", str(edited)], "matches no known family"),
        (["--model-dir", str(base), "--family", "gemma", "--system", "x"], "no system role"),
        (["--model-dir", str(base), "--family", "qwen9"], "unknown template family"),
        (["--model-dir", str(tmp_path / "missing")], "not found"),
        (["--model-dir", str(tmp_path)], "no tokenizer_config.json"),
    ]
    for extra, match in cases:
        r = run_cli(*common, *extra)
        assert match in one_error_line(r), (extra, r.stderr)
        assert not out.exists(), extra
    r = run_cli("modelfile", "--gguf", str(gguf), "--out", str(out))  # GGUF magic, no metadata
    assert "is a truncated or corrupt GGUF file" in one_error_line(r)
    r = run_cli("modelfile", "--gguf", str(lic), "--model-dir", str(base), "--out", str(out))
    assert "is not a GGUF file" in one_error_line(r)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "LICENSE",
        "edited",
        "model.gguf",
        "t.jinja",
    ]


def test_cli_keeps_an_existing_modelfile_unless_forced(demo_dirs, tmp_path):
    base = demo_dirs["llama"] / "base"
    gguf = _fake_gguf(tmp_path)
    out = tmp_path / "Modelfile"
    out.write_text("user's own\n")
    args = ["modelfile", "--gguf", str(gguf), "--model-dir", str(base), "--out", str(out)]
    r = run_cli(*args)
    assert "already exists" in one_error_line(r) and "--force" in r.stderr
    assert out.read_text() == "user's own\n"
    r = run_cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert modelfile.create_request(modelfile.parse(out.read_text()))["template"] == (
        templates.get("llama3").go_template()
    )


def test_cli_template_file_and_stdout(demo_dirs, tmp_path):
    custom = tmp_path / "t.gotmpl"
    custom.write_text("{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>")
    r = run_cli(
        "modelfile",
        "--gguf",
        str(_fake_gguf(tmp_path)),
        "--model-dir",
        str(demo_dirs["qwen2"] / "base"),
        "--template-file",
        str(custom),
        "--out",
        "-",
    )
    assert r.returncode == 0, r.stderr
    req = modelfile.create_request(modelfile.parse(r.stdout))
    assert req["template"] == custom.read_text()
    assert "system" not in req  # a custom TEMPLATE gets no family default system prompt
    assert "<|im_end|>" in req["parameters"]["stop"]
