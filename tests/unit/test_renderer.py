"""Families rendered by Ollama's built-in RENDERER/PARSER (proven at deploy time), the version
checks create makes first, and the TEMPLATE-is-what-runs checks (Ollama's own renderer for an
architecture; on Ollama >= 0.30 the GGUF's chat template when it has more capabilities)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploykit.core.errors import InputError, OllamaError
from deploykit.ollama import capabilities, deploy, families, modelfile
from deploykit.ollama.client import Client
from deploykit.ollama.render import render
from tests.support.cli import invoke
from tests.support.ollama_server import start, stop

GEMMA4 = "google-gemma-4-31B-it"


def _ref(fam: str, ref: str | None = None) -> str:
    f = families.get(fam)
    return f.reference_path(ref or f.reference_names[0]).read_text(encoding="utf-8")


def _gguf(path: Path, arch: str, chat_template: str | None) -> Path:
    """A GGUF with metadata only: architecture and chat template."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if chat_template is not None:
        w.add_string("tokenizer.chat_template", chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- the family data ---------------------------------------------------------------------------


def test_gemma4_is_rendered_by_ollamas_renderer_and_proven_at_deploy_time():
    fam = families.get("gemma4")
    assert (fam.renderer, fam.parser, fam.template) == ("gemma4-large", "gemma4", None)
    assert fam.proof == "deploy time: RENDERER gemma4-large"
    assert families.auto_renderer("gemma4") == ("gemma4", fam)
    assert families.auto_renderer("laguna") == ("laguna", None)
    assert families.auto_renderer("qwen2") is None
    assert not (fam.folder / "gemma4.gotmpl").exists()
    need = modelfile.builtin_since(fam.renderer, fam.parser)
    assert tuple(int(x) for x in fam.min_ollama.split(".")) >= need == (0, 21, 0)
    for ref in fam.reference_names:  # detection picks it for both Gemma 4 references
        assert families.detect(_ref("gemma4", ref))[0].name == "gemma4"
    assert families.get("qwen2.5").proof == "CI: Go TEMPLATE"


@pytest.fixture
def family_dir(tmp_path) -> Path:
    return Path(shutil.copytree(families.templates_dir(), tmp_path / "modelfile_templates"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (('min_ollama = "0.21.0"', 'min_ollama = "0.20.0"'), "older than the first Ollama"),
        (('renderer = "gemma4-large"', 'renderer = "gemma5"'), "Ollama has no renderer 'gemma5'"),
        (('parser = "gemma4"', 'parser = "harmonyx"'), "Ollama has no parser 'harmonyx'"),
        (
            ("tools = true", 'tools = true\ntool_call_tag = "<|tool_call>"'),
            "only for a Go TEMPLATE",
        ),
        (  # a renderer gets the whitespace as it is: that difference is a Go TEMPLATE's only
            ('"continue_system"]', '"continue_system", "whitespace"]'),
            "known_differences 'whitespace': only for a Go TEMPLATE",
        ),
        (('"continue_system"]', '"continue_system", "tools"]'), "'tools'] cannot differ"),
    ],
)
def test_a_renderer_family_is_checked_when_loaded(family_dir, edit, match):
    toml = family_dir / "gemma4.toml"
    text = toml.read_text()
    assert edit[0] in text
    toml.write_text(text.replace(*edit))
    with pytest.raises(InputError, match=match) as exc:
        families.load(family_dir)
    assert "gemma4.toml" in exc.value.message


def test_only_a_renderer_family_may_declare_the_renderers_differences(family_dir):
    toml = family_dir / "qwen2.5.toml"
    text = toml.read_text()
    old, new = 'known_differences = ["consecutive_roles"]', 'known_differences = ["continue"]'
    toml.write_text(text.replace(old, new))
    with pytest.raises(InputError, match=r"known_differences \['continue'\] only with a renderer"):
        families.load(family_dir)


def test_a_renderer_family_has_no_template_that_would_never_run(family_dir):
    (family_dir / "gemma4.gotmpl").write_text("{{ range .Messages }}{{ .Content }}{{ end }}\n")
    with pytest.raises(InputError, match="would never run"):
        families.load(family_dir)


def test_templates_list_says_how_each_family_is_proven():
    r = invoke("templates", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {f["name"]: f for f in json.loads(r.stdout)["families"]}
    assert rows["gemma4"]["proof"] == "deploy time: RENDERER gemma4-large"
    assert rows["gemma4"]["renderer"] == "gemma4-large"
    assert rows["qwen2.5"]["proof"] == "CI: Go TEMPLATE" and rows["qwen2.5"]["renderer"] is None
    human = invoke("templates", "list").stdout
    assert any("gemma4" in line and "deploy time" in line for line in human.splitlines())
    shown = invoke("templates", "show", "gemma4").stdout
    assert "renderer:    gemma4-large" in shown and "template:" not in shown


# --- the Modelfile -----------------------------------------------------------------------------


def test_renderer_and_parser_lines_parse_back_as_ollama_reads_them():
    text = modelfile.format(
        from_path="./m.gguf",
        template=None,
        renderer="gemma4-large",
        parser="gemma4",
        requires="0.21.0",
        parameters=[("stop", "<turn|>")],
    )
    assert "RENDERER gemma4-large\nPARSER gemma4\n" in text and "TEMPLATE" not in text
    body = modelfile.create_request(modelfile.parse(text), "m")
    assert body == {
        "model": "m",
        "from": "./m.gguf",
        "requires": "0.21.0",
        "renderer": "gemma4-large",
        "parser": "gemma4",
        "parameters": {"stop": ["<turn|>"]},
    }


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"template": "{{ .Prompt }}", "renderer": "gemma4"}, "not both"),
        ({"template": None}, "needs a TEMPLATE or a RENDERER"),
        ({"template": None, "renderer": "gpt-5"}, "unknown renderer 'gpt-5'"),
        ({"template": "{{ .Prompt }}", "parser": "nope"}, "unknown parser 'nope'"),
    ],
)
def test_a_modelfile_is_a_template_or_a_known_renderer(fields, match):
    with pytest.raises(InputError, match=match):
        modelfile.format(from_path="./m.gguf", **fields)


def test_render_writes_the_renderer_for_a_gemma4_gguf(tmp_path):
    gguf = _gguf(tmp_path / "g.gguf", "gemma4", _ref("gemma4"))
    out = render(gguf, out=tmp_path / "Modelfile")
    assert (out.family, out.renderer, out.parser, out.template) == (
        "gemma4",
        "gemma4-large",
        "gemma4",
        None,
    )
    assert "REQUIRES 0.21.0" in out.text and "RENDERER gemma4-large" in out.text
    assert "TEMPLATE" not in out.text
    assert out.summary()["renderer"] == "gemma4-large"


def test_render_refuses_a_template_ollama_would_replace_by_its_renderer(tmp_path):
    gguf = _gguf(tmp_path / "g.gguf", "gemma4", _ref("gemma4"))
    tmpl = tmp_path / "t.gotmpl"
    tmpl.write_text("{{ range .Messages }}{{ .Content }}{{ end }}")
    with pytest.raises(InputError, match="would never run") as exc:
        render(gguf, template_file=tmpl)
    assert "--family gemma4" in exc.value.hint


def test_render_warns_when_ollama_030_would_render_the_gguf_template_instead(tmp_path):
    gguf = _gguf(tmp_path / "q.gguf", "qwen2", _ref("qwen2.5"))
    out = render(gguf, family="chatml")  # an explicit family without tools on Qwen2.5
    assert any("not what runs" in w and "tools" in w for w in out.warnings), out.warnings
    assert not any("not what runs" in w for w in render(gguf).warnings)


# --- Ollama's template selection rules ---------------------------------------------------------


def test_capabilities_follow_ollamas_substring_rules():
    qwen25 = _ref("qwen2.5")
    assert capabilities.jinja_capabilities(qwen25) == {"completion", "tools"}
    assert capabilities.jinja_round_trip(qwen25)
    assert capabilities.jinja_capabilities(_ref("qwen3")) == {"completion", "tools", "thinking"}
    assert capabilities.jinja_capabilities("") == set()
    chatml = families.get("chatml").template
    assert capabilities.go_capabilities(chatml) == {"completion"}
    assert "tools" in capabilities.gguf_template_wins(chatml, qwen25)
    assert capabilities.gguf_template_wins(families.get("qwen2.5").template, qwen25) is None
    assert capabilities.gguf_template_wins(families.get("qwen3").template, _ref("qwen3")) is None
    # same capabilities, tools on both: only a missing tool round trip loses
    no_results = (
        "{{ range .Messages }}{{ .Content }}{{ if .ToolCalls }}x{{ end }}{{ end }}{{ .Tools }}"
    )
    assert "round trip" in capabilities.gguf_template_wins(no_results, qwen25)
    # the TEMPLATE's own round trip keeps it against a Jinja template without one
    plain_tools = (
        "{% for m in messages %}{{ m.content }}{% endfor %}{{ tools }}{{ '<think></think>' }}"
    )
    with_rt = families.get("qwen2.5").template
    assert capabilities.gguf_template_wins(with_rt, plain_tools) is None


# --- create: the server's version first, then what runs ---------------------------------------


@pytest.fixture(scope="module")
def server():
    httpd, state, url = start()
    yield state, url
    stop(httpd, state)


def _modelfile(tmp_path: Path, gguf: Path, **fields) -> Path:
    path = tmp_path / "Modelfile"
    path.write_text(modelfile.format(from_path=f"./{gguf.name}", **fields))
    return path


@pytest.mark.parametrize(
    ("version", "fields", "match"),
    [
        ("0.20.7", {"renderer": "gemma4-large", "parser": "gemma4"}, "RENDERER gemma4-large"),
        ("0.19.0", {"renderer": "gemma4", "parser": "gemma4"}, "needs Ollama >= 0.20.0"),
        ("0.13.2", {"template": "{{ .Prompt }}", "requires": "0.14.0"}, "REQUIRES needs"),
    ],
)
def test_create_refuses_a_modelfile_the_server_is_too_old_for(
    server, tmp_path, version, fields, match
):
    state, url = server
    gguf = _gguf(tmp_path / "m.gguf", "llama", None)
    mf = _modelfile(tmp_path, gguf, template=fields.pop("template", None), **fields)
    uploaded = set(state.blobs.iterdir())
    state.version = version
    try:
        with pytest.raises(OllamaError, match=match) as exc:
            deploy.create("old", mf, url)
    finally:
        state.version = "0.33.0"
    assert version in exc.value.message and "upgrade Ollama" in exc.value.hint
    assert set(state.blobs.iterdir()) == uploaded  # refused before any upload
    assert not any("old:" in full for full in state.models)


def test_create_sends_the_renderer_and_the_server_shows_it(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "g.gguf", "gemma4", _ref("gemma4"))
    mf = tmp_path / "Modelfile"
    mf.write_text(render(gguf, out=mf).text)
    deploy.create("g4", mf, url)
    with Client(url) as c:
        show = c.show("g4")
    assert (show["renderer"], show["parser"], show["requires"]) == (
        "gemma4-large",
        "gemma4",
        "0.21.0",
    )
    assert {"tools", "thinking"} <= set(show["capabilities"])
    assert "RENDERER gemma4-large\nPARSER gemma4" in show["modelfile"]


def test_the_server_sets_ollamas_renderer_for_a_gemma4_gguf_itself(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "g.gguf", "gemma4", _ref("gemma4"))
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM ./{gguf.name}\n")  # no TEMPLATE, no RENDERER
    deploy.create("g4auto", mf, url)
    with Client(url) as c:
        show = c.show("g4auto")
    assert (show["renderer"], show["parser"]) == ("gemma4", "gemma4")
    assert '"<turn|>"' in show["parameters"]


def test_create_refuses_a_template_ollama_replaces_by_its_renderer(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "g.gguf", "gemma4", _ref("gemma4"))
    mf = _modelfile(tmp_path, gguf, template=families.get("chatml").template)
    with pytest.raises(InputError, match="would never run") as exc:
        deploy.create("g4tmpl", mf, url)
    assert "--family gemma4" in exc.value.hint
    assert not any("g4tmpl" in full for full in state.models)


def test_create_refuses_both_renderer_and_template(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "m.gguf", "llama", None)
    mf = tmp_path / "Modelfile"
    mf.write_text(f'FROM ./{gguf.name}\nRENDERER gemma4\nTEMPLATE """{{{{ .Prompt }}}}"""\n')
    with pytest.raises(InputError, match="both RENDERER and TEMPLATE"):
        deploy.create("both", mf, url)
    mf.write_text(f"FROM ./{gguf.name}\nRENDERER harmony2\n")
    with pytest.raises(InputError, match="unknown renderer 'harmony2'"):
        deploy.create("both", mf, url)


def test_create_refuses_a_template_ollama_030_would_ignore_unless_asked(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "q.gguf", "qwen2", _ref("qwen2.5"))
    mf = _modelfile(tmp_path, gguf, template=families.get("chatml").template)
    with pytest.raises(InputError, match="ignore the Modelfile's TEMPLATE") as exc:
        deploy.create("chatml-on-qwen", mf, url)
    assert "tools" in exc.value.message and "--allow-gguf-template" in exc.value.hint
    assert not any("chatml-on-qwen" in full for full in state.models)
    deploy.create("chatml-on-qwen", mf, url, allow_gguf_template=True)
    state.version = "0.29.3"  # before 0.30 the TEMPLATE always runs
    try:
        deploy.create("chatml-on-qwen-old", mf, url)
    finally:
        state.version = "0.33.0"
    assert any("chatml-on-qwen-old" in full for full in state.models)
    good = _modelfile(tmp_path, gguf, template=families.get("qwen2.5").template)
    deploy.create("qwen-ok", good, url)  # the detected family is what runs


def test_cli_create_names_the_option_that_lets_ollama_use_the_gguf_template(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "q.gguf", "qwen2", _ref("qwen2.5"))
    mf = _modelfile(tmp_path, gguf, template=families.get("chatml").template)
    env = {"OLLAMA_HOST": url}
    r = invoke("create", "cli-chatml", "-f", str(mf), env=env)
    assert r.returncode == 3 and "--allow-gguf-template" in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    r = invoke("create", "cli-chatml", "-f", str(mf), "--allow-gguf-template", env=env)
    assert r.returncode == 0, r.stderr
    assert "--allow-gguf-template" in invoke("create", "--help").stdout


def test_create_refuses_a_template_for_any_architecture_ollama_renders_itself(server, tmp_path):
    state, url = server
    gguf = _gguf(tmp_path / "l.gguf", "laguna", "{{ messages }}")
    mf = _modelfile(tmp_path, gguf, template=families.get("chatml").template)
    with pytest.raises(InputError, match="renderer 'laguna'") as exc:
        deploy.create("laguna", mf, url)
    assert "drop the TEMPLATE" in exc.value.hint
    assert not any("laguna" in full for full in state.models)


def test_the_round_trip_rule_is_applied_from_0_30_11_only():
    qwen25 = _ref("qwen2.5")
    no_results = (
        "{{ range .Messages }}{{ .Content }}{{ if .ToolCalls }}x{{ end }}{{ end }}{{ .Tools }}"
    )
    assert "round trip" in capabilities.gguf_template_wins(no_results, qwen25, (0, 30, 11))
    assert capabilities.gguf_template_wins(no_results, qwen25, (0, 30, 10)) is None
    chatml = families.get("chatml").template  # fewer capabilities: from 0.30.0
    assert capabilities.gguf_template_wins(chatml, qwen25, (0, 30, 0))
    assert capabilities.gguf_template_wins(chatml, qwen25, (0, 29, 9)) is None
