"""`deploykit modelfile`: parameters, Ollama's Modelfile rules, rendering from a model, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploykit.core.errors import InputError
from deploykit.ollama import families, modelfile, params
from deploykit.ollama.render import render
from tests.support.cli import invoke, one_error_line

# --- PARAMETER values --------------------------------------------------------------------------


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
    assert params.coerce(name, raw) == typed
    assert type(params.coerce(name, raw)) is type(typed)


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
        params.coerce(name, raw)
    if name == "Temperature":
        assert "temperature" in exc.value.hint
    if name == "mirostat":  # the hint points at something that exists
        assert "https://docs.ollama.com/modelfile" in exc.value.hint


def test_param_option_needs_name_and_value():
    assert params.parse_option("top_p=0.9") == ("top_p", 0.9)
    with pytest.raises(InputError, match="NAME=VALUE"):
        params.parse_option("top_p")


def test_generation_config_maps_to_ollama_names():
    got = params.from_generation_config(
        {"temperature": 0.3, "repetition_penalty": 1.1, "top_k": 5, "max_new_tokens": 64}
    )
    assert got == {"temperature": 0.3, "repeat_penalty": 1.1, "top_k": 5}


def test_show_parameters_text_is_parsed_and_typed():
    """`/api/show` prints `%-30s %#v` lines: strings Go-quoted, numbers bare."""
    text = "\n".join(
        [
            f"{'num_ctx':<30} 4096",
            f"{'stop':<30} " + '"<|im_end|>"',
            f"{'stop':<30} " + '"say \\"hi\\""',
            f"{'temperature':<30} 0.7",
            f"{'use_mmap':<30} false",
            f"{'some_future_option':<30} 3",
        ]
    )
    assert params.parse_show(text) == {
        "num_ctx": 4096,
        "stop": ["<|im_end|>", 'say "hi"'],
        "temperature": 0.7,
        "use_mmap": False,
        "some_future_option": "3",
    }
    assert params.parse_show("") == {}


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


def test_create_request_holds_only_what_the_modelfile_sets():
    req = modelfile.create_request(modelfile.parse("FROM ./m.gguf\nADAPTER ./a.gguf\n"), "demo")
    assert req == {"model": "demo", "from": "./m.gguf", "adapters": ["./a.gguf"]}
    req = modelfile.create_request(modelfile.parse('FROM x\nREQUIRES 0.14.0\nSYSTEM ""\n'))
    assert req == {"from": "x", "requires": "0.14.0", "system": ""}


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


def test_format_writes_what_parses_back():
    text = modelfile.format(
        header=["written by a test"],
        from_path="./m.gguf",
        requires="0.14.0",
        template='{{ range .Messages }}"{{ .Content }}"{{ end }}',
        system='Say """hi""" politely.\nTwo lines.',
        parameters=[("temperature", 0.5), ("use_mmap", False), ("stop", "<|x|>")],
        licenses=["MIT", "Apache-2.0\n"],
    )
    assert text.startswith("# written by a test\n\nFROM ./m.gguf\nREQUIRES 0.14.0\n\n")
    assert "PARAMETER temperature 0.5\nPARAMETER use_mmap false\n" in text
    req = modelfile.create_request(modelfile.parse(text))
    assert req == {
        "from": "./m.gguf",
        "requires": "0.14.0",
        "template": '{{ range .Messages }}"{{ .Content }}"{{ end }}',
        "system": 'Say """hi""" politely.\nTwo lines.',
        "parameters": {"temperature": 0.5, "use_mmap": False, "stop": ["<|x|>"]},
        "license": ["MIT", "Apache-2.0\n"],
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"system": 'ends early"""'}, 'ends with """'),
        ({"from_path": "a\nTEMPLATE x"}, "contains a newline"),
        ({"parameters": [("temprature", 1.0)]}, "unknown PARAMETER"),
        ({"header": ["two\nlines"]}, "contains a newline"),
    ],
)
def test_format_refuses_what_would_read_back_differently(kwargs, match):
    with pytest.raises(InputError, match=match):
        modelfile.format(**{"from_path": "./m.gguf", "template": "{{ .Prompt }}", **kwargs})


def test_jinja_template_file_is_not_a_go_template():
    jinja = families.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text()
    with pytest.raises(InputError, match="looks like a Jinja chat template"):
        modelfile.check_go_template(jinja, "t.jinja")
    with pytest.raises(InputError, match="uses none of") as exc:
        modelfile.check_go_template("hello", "t.gotmpl")
    assert "https://docs.ollama.com/template" in exc.value.hint


def test_write_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "Modelfile"
    out.write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        modelfile.write(out, "FROM x\n")
    assert out.read_text() == "mine"
    modelfile.write(out, "FROM x\n", force=True)
    assert out.read_text() == "FROM x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["Modelfile"]  # no temp files left


# --- rendering from a model directory ---------------------------------------------------------


def _fake_gguf(tmp_path: Path) -> Path:
    """A GGUF header with nothing in it (render reads its architecture and chat template)."""
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 60)
    return p


def _template_only_in_chat_template_json(src: Path, dest: Path) -> Path:
    """A copy of model folder ``src`` laid out as processors save it: the chat template in
    chat_template.json, none in tokenizer_config.json."""
    shutil.copytree(src, dest)
    tc = json.loads((dest / "tokenizer_config.json").read_text())
    template = tc.pop("chat_template")
    (dest / "tokenizer_config.json").write_text(json.dumps(tc))
    (dest / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return dest


def test_render_qwen_demo_from_model_dir(demo_dirs, tmp_path):
    out = tmp_path / "Modelfile"
    r = render(_fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", out=out)
    assert (r.family, r.detected) == ("qwen2.5", True)
    req = modelfile.create_request(modelfile.parse(r.text))
    assert req["from"] == "./model.gguf"
    assert req["template"] == families.get("qwen2.5").template
    assert req["system"] == families.get("qwen2.5").default_system
    assert req["parameters"] == {
        "temperature": 0.0,  # the demo's generation_config says do_sample: false (greedy)
        # family stops, then the model's eos and generation_config eos ids
        "stop": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    }
    assert "REQUIRES" not in r.text
    assert r.text.startswith("# Modelfile written by deploykit ")
    assert "# family: qwen2.5 (reproduces: Qwen-Qwen2.5-7B-Instruct)\n" in r.text


def test_chat_template_json_only_model_gets_its_modelfile(demo_dirs, tmp_path):
    """Bug: a folder whose chat template is only in chat_template.json had "no chat template"."""
    base = demo_dirs["qwen2"] / "base"
    processor_style = _template_only_in_chat_template_json(base, tmp_path / "m")
    gguf = _fake_gguf(tmp_path)
    r = render(gguf, model_dir=processor_style, out=tmp_path / "Modelfile")
    assert (r.family, r.detected) == ("qwen2.5", True)
    assert r.text == render(gguf, model_dir=base, out=tmp_path / "Modelfile").text


def test_generation_config_beats_family_and_param_beats_both(demo_dirs, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(demo_dirs["qwen2"] / "base", model)
    gc = json.loads((model / "generation_config.json").read_text())
    gc.update(do_sample=True, temperature=0.3, top_p=0.5, repetition_penalty=1.1)
    (model / "generation_config.json").write_text(json.dumps(gc))
    r = render(
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
    mistral = render(gguf, model_dir=base, family="mistral")
    assert modelfile.create_request(modelfile.parse(mistral.text))["requires"] == "0.14.0"
    qwen3 = render(gguf, model_dir=base, family="qwen3")
    assert "requires" not in modelfile.create_request(modelfile.parse(qwen3.text))
    assert "# needs Ollama >= 0.11.0" in qwen3.text


def test_explicit_family_that_differs_from_the_model_warns(demo_dirs, tmp_path):
    r = render(_fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", family="chatml")
    assert (r.family, r.detected) == ("chatml", False)
    assert r.warnings == ["the model's chat template is not family chatml's (it matches qwen2.5)"]


def test_gemma_refuses_a_system_prompt(demo_dirs, tmp_path):
    with pytest.raises(InputError, match="no system role"):
        render(
            _fake_gguf(tmp_path), model_dir=demo_dirs["qwen2"] / "base", family="gemma", system="x"
        )


# --- the CLI on real GGUFs (acceptance) ---------------------------------------------------------


def test_cli_bad_inputs_give_one_error_line_and_write_nothing(demo_dirs, tmp_path):
    base = demo_dirs["qwen2"] / "base"
    gguf = _fake_gguf(tmp_path)
    jinja = tmp_path / "t.jinja"
    jinja.write_text(families.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text())
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
        (["--model-dir", str(base), "--system", 'A\nB"""'], 'ends with """', 3),
        (["--model-dir", str(base), "--param", "Temperature=0.5"], "unknown PARAMETER", 3),
        (["--model-dir", str(base), "--param", "top_k=high"], "must be int", 3),
        (["--model-dir", str(base), "--param", "stop"], "NAME=VALUE", 3),
        (["--model-dir", str(base), "--license", str(lic)], 'ends with """', 3),
        (["--model-dir", str(base), "--template-file", str(jinja)], "Jinja chat template", 3),
        (["--model-dir", str(edited)], "matches no known family", 3),
        (["--model-dir", str(base), "--family", "gemma", "--system", "x"], "no system role", 3),
        (["--model-dir", str(base), "--family", "qwen9"], "unknown template family", 3),
        (["--model-dir", str(tmp_path / "missing")], "not found", 3),
        (["--model-dir", str(tmp_path)], "no tokenizer_config.json", 3),
    ]
    for extra, match, code in cases:
        r = invoke(*common, *extra)
        assert match in one_error_line(r, code), (extra, r.stderr)
        assert not out.exists(), extra
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF")  # the magic, then nothing
    r = invoke("modelfile", "--gguf", str(truncated), "--out", str(out))
    assert "is a truncated or corrupt GGUF file" in one_error_line(r, 3)
    r = invoke("modelfile", "--gguf", str(truncated), "--model-dir", str(base), "--out", str(out))
    assert "is a truncated or corrupt GGUF file" in one_error_line(r, 3)
    r = invoke("modelfile", "--gguf", str(lic), "--model-dir", str(base), "--out", str(out))
    assert "is not a GGUF file" in one_error_line(r, 3)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "LICENSE",
        "edited",
        "model.gguf",
        "t.jinja",
        "truncated.gguf",
    ]


def test_cli_keeps_an_existing_modelfile_unless_forced(demo_dirs, tmp_path):
    base = demo_dirs["llama"] / "base"
    gguf = _fake_gguf(tmp_path)
    out = tmp_path / "Modelfile"
    out.write_text("user's own\n")
    args = ["modelfile", "--gguf", str(gguf), "--model-dir", str(base), "--out", str(out)]
    r = invoke(*args)
    assert "already exists" in one_error_line(r, 3) and "--force" in r.stderr
    assert out.read_text() == "user's own\n"
    r = invoke(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert modelfile.create_request(modelfile.parse(out.read_text()))["template"] == (
        families.get("llama3").template
    )


def test_cli_template_file_and_stdout(demo_dirs, tmp_path):
    custom = tmp_path / "t.gotmpl"
    custom.write_text("{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>")
    r = invoke(
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


def test_cli_chat_template_json_only_model(demo_dirs, tmp_path):
    folder = _template_only_in_chat_template_json(demo_dirs["llama"] / "base", tmp_path / "m")
    out = tmp_path / "Modelfile"
    gguf = _fake_gguf(tmp_path)
    r = invoke("modelfile", "--gguf", str(gguf), "--model-dir", str(folder), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out} (family llama3, detected)"
    assert modelfile.create_request(modelfile.parse(out.read_text()))["template"] == (
        families.get("llama3").template
    )


# --- Ollama's line and character rules (parser/parser.go; reference/ollama-api.md §3, §8) ------

INJECTION = 'ok."""\rADAPTER ../evil.gguf\rPARAMETER temperature 2\r#'
#: Characters Ollama's parser drops (Go's strconv.IsPrint is false) and Python may not.
DROPPED = ["\u00a0", "\u200b", "\u200d", "\x1b", "\x00", "\u00ad", "\u2028", "\ufeff", "\x0c"]


def test_carriage_return_ends_a_line_as_in_ollama():
    """Bug: the \"\"\" check split on \\n only, so a \\r smuggled instructions in."""
    naive = f'FROM ./m.gguf\nSYSTEM """{INJECTION}"""\n'
    assert modelfile.parse(naive) == [
        ("from", "./m.gguf"),
        ("system", "ok."),
        ("adapter", "../evil.gguf"),
        ("parameter", "temperature 2"),
    ]
    with pytest.raises(InputError, match='line 1 ends with """.*carriage return ends a line'):
        modelfile.check_text("SYSTEM", INJECTION)
    for kind in ("system", "template", "licenses"):
        value = [INJECTION] if kind == "licenses" else INJECTION
        with pytest.raises(InputError, match='ends with """'):
            modelfile.format(**{"from_path": "./m.gguf", "template": "{{ .Prompt }}", kind: value})
    # a \r inside a value is kept, as in a CRLF file
    assert modelfile.parse('FROM x\rSYSTEM """a\rb"""\r') == [("from", "x"), ("system", "a\rb")]


@pytest.mark.parametrize("ch", DROPPED)
def test_characters_ollama_drops_are_dropped_when_read_and_refused_when_written(ch):
    """Bug: deploykit kept them, so `deploykit create` and `ollama create -f` sent other text."""
    text = f'FROM ./m{ch}.gguf\nSYSTEM """a{ch}b"""\nPARAMETER stop "<{ch}/s>"\n'
    req = modelfile.create_request(modelfile.parse(text))
    assert (req["from"], req["system"], req["parameters"]) == ("./m.gguf", "ab", {"stop": ["</s>"]})
    with pytest.raises(InputError, match="which Ollama's Modelfile parser drops"):
        modelfile.check_text("SYSTEM", f"line one\nx{ch}")
    for kwargs in (
        {"from_path": f"./m{ch}.gguf"},
        {"licenses": [f"MIT{ch}"]},
        {"parameters": [("stop", f"<{ch}>")]},
    ):
        with pytest.raises(InputError, match="drops"):
            modelfile.format(**{"from_path": "./m.gguf", "template": "{{ .Prompt }}", **kwargs})
    with pytest.raises(InputError, match="drops"):
        params.parse_option(f"stop=<{ch}>")


def test_the_instruction_after_a_dropped_character_still_counts():
    """Ollama drops a leading non-printable and then reads the instruction that follows it."""
    assert modelfile.parse("\x00FROM x\n\u200bSYSTEM hi\n") == [("from", "x"), ("system", "hi")]
    with pytest.raises(modelfile.ModelfileParseError):
        modelfile.parse("FR\x00OM x\n")


def test_printable_is_gos_strconv_isprint(tmp_path):
    """The kept set, checked against Go itself for every character both Unicode tables know."""
    import os
    import shutil
    import subprocess
    import unicodedata

    from deploykit.ollama.text import is_print

    if not shutil.which("go"):
        pytest.fail("Go is required for this check: apt-get install golang-go")
    src = tmp_path / "main.go"
    src.write_text(GO_ISPRINT)
    env = {**os.environ, "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off", "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(tmp_path / "isprint"), str(src)], env=env, check=True)
    out = subprocess.run([str(tmp_path / "isprint")], capture_output=True, text=True, check=True)
    changes = [(int(a, 16), state) for a, state in (ln.split() for ln in out.stdout.splitlines())]
    wrong, compared = [], 0
    for (start, state), (end, _) in zip(changes, changes[1:] + [(0x110000, "")], strict=True):
        if state == "-":  # unassigned in Go's tables (Go may know an older Unicode)
            continue
        for cp in range(start, end):
            if unicodedata.category(chr(cp)) == "Cn":
                continue
            compared += 1
            if is_print(chr(cp)) != (state == "1"):
                wrong.append(f"U+{cp:04X}")
    assert compared > 140_000 and not wrong, wrong[:20]


GO_ISPRINT = """package main

import (
\t"bufio"
\t"fmt"
\t"os"
\t"strconv"
\t"unicode"
)

// prints "<hex> <state>" where the state changes: - unassigned, 0 not printable, 1 printable
func main() {
\tw := bufio.NewWriter(os.Stdout)
\tdefer w.Flush()
\tlast := ""
\tfor r := rune(0); r <= unicode.MaxRune; r++ {
\t\tstate := "-"
\t\tif unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C) {
\t\t\tstate = "0"
\t\t\tif strconv.IsPrint(r) {
\t\t\t\tstate = "1"
\t\t\t}
\t\t}
\t\tif state != last {
\t\t\tfmt.Fprintf(w, "%x %s\\n", r, state)
\t\t\tlast = state
\t\t}
\t}
}
"""


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0.14.0", "0.14.0"),
        ("v0.14.0", "0.14.0"),
        ("1", "1"),
        ("0.30", "0.30"),
        ("1.2.3-rc.1+build.5", "1.2.3-rc.1+build.5"),
        ("latest", None),
        ("01.2.3", None),
        ("1.2.3-01", None),
        ("1.2-rc1", None),
        ("1.2.3.4", None),
        ("1.2.3+", None),
        ("", None),
    ],
)
def test_requires_must_be_semver_as_ollama_checks_it(given, stored):
    """Bug: `REQUIRES latest` was accepted; Ollama refuses what golang.org/x/mod/semver does."""
    text = f"FROM x\nREQUIRES {given}\n"
    if stored is None:
        with pytest.raises(InputError, match="semantic version|missing value") as exc:
            modelfile.create_request(modelfile.parse(text))
        assert exc.value.hint
        with pytest.raises(InputError):
            modelfile.format(from_path="x", template="{{ .Prompt }}", requires=given or " ")
    else:
        assert modelfile.create_request(modelfile.parse(text))["requires"] == stored
        written = modelfile.format(from_path="x", template="{{ .Prompt }}", requires=given)
        assert f"REQUIRES {stored}\n" in written


@pytest.mark.parametrize("stop", ['"""', '""', '"', '""x', '""x""'])
def test_stop_strings_a_modelfile_cannot_carry_are_refused_with_a_hint(stop):
    """Bug: `--param 'stop=\"\"\"'` ended in "unexpected EOF" with no hint; `\"\"x\"\"` was
    silently read back as `x`."""
    with pytest.raises(InputError, match="cannot be written in a Modelfile") as exc:
        params.parse_option(f"stop={stop}")
    assert "two double quotes" in exc.value.hint
    with pytest.raises(InputError, match="cannot be written"):
        modelfile.format(from_path="x", template="{{ .Prompt }}", parameters=[("stop", stop)])


@pytest.mark.parametrize("stop", ['x"""', 'say "hi"', '"x', "\t<|end|> "])
def test_other_quotes_in_stop_strings_read_back_unchanged(stop):
    text = modelfile.format(from_path="x", template="{{ .Prompt }}", parameters=[("stop", stop)])
    assert modelfile.create_request(modelfile.parse(text))["parameters"] == {"stop": [stop]}


def test_an_unterminated_value_says_where_and_what_to_do():
    with pytest.raises(modelfile.ModelfileParseError, match="unexpected EOF") as exc:
        modelfile.parse('FROM x\nSYSTEM """one\ntwo\n')
    assert "line 2" in exc.value.message and '"""' in exc.value.hint
