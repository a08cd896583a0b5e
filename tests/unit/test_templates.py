"""Family data (validated), exact-match family detection; `deploykit templates list/show`."""

from __future__ import annotations

import json
import shutil

import pytest

from deploykit.core.errors import InputError
from deploykit.llamacpp.vendor import vendored_tree_dir
from deploykit.ollama import families
from tests.support.cli import invoke, one_error_line

EXPECTED = {"qwen2.5", "qwen3", "chatml", "llama3", "llama3.2", "mistral", "gemma", "phi3"}


def test_families_are_data_with_go_templates_and_references():
    fams = families.families()
    assert set(fams) >= EXPECTED
    for fam in fams.values():
        assert ".Messages" in fam.template and "{%" not in fam.template, fam.name
        assert fam.stop and fam.references and fam.control_tokens, fam.name
        for path in fam.reference_paths():
            assert path.is_file(), path
        if fam.tools:
            assert ".Tools" in fam.template and ".ToolCalls" in fam.template, fam.name
            assert "{{ .Function }}" not in fam.template, fam.name  # a Go struct on Ollama 0.14+
    assert fams["qwen2.5"].default_system.startswith("You are Qwen, created by Alibaba Cloud.")
    assert fams["qwen2.5"].parameters == {
        "temperature": 0.7,
        "top_p": 0.8,
        "repeat_penalty": 1.05,
        "top_k": 20,
    }
    assert not fams["gemma"].system_role
    assert fams["qwen3"].thinking and "<think>" in fams["qwen3"].template
    assert fams["gemma"].rejects("google-gemma-2-2b-it") >= {"system_user", "tools"}


def test_control_tokens_are_every_familys():
    tokens = families.control_tokens()
    assert len(tokens) == len(set(tokens))
    for fam in families.families().values():
        assert set(fam.control_tokens) <= set(tokens)
    assert {"<|im_end|>", "<|eot_id|>", "[INST]", "<end_of_turn>", "<|end|>"} <= set(tokens)


def test_committed_references_equal_the_vendored_ones():
    """Detection runs from the committed copies; each must still be llama.cpp's file."""
    vendored = vendored_tree_dir() / "models" / "templates"
    if not vendored.is_dir():
        pytest.skip("the vendored llama.cpp tree is not extracted (make vendor)")
    compared = 0
    for ref in sorted((families.templates_dir() / families.REFERENCES).glob("*.jinja")):
        upstream = vendored / ref.name
        if upstream.is_file():
            assert ref.read_bytes() == upstream.read_bytes(), ref.name
            compared += 1
    assert compared >= 8


# --- the schema ------------------------------------------------------------------------------


@pytest.fixture
def family_dir(tmp_path):
    """A copy of the shipped families folder, to break."""
    return shutil.copytree(families.templates_dir(), tmp_path / "modelfile_templates")


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_copied_folder_loads_like_the_shipped_one(family_dir):
    loaded = families.load(family_dir)
    assert set(loaded) == set(families.families())
    qwen = loaded["qwen2.5"]
    assert qwen.model_dump(exclude={"folder"}) == families.get("qwen2.5").model_dump(
        exclude={"folder"}
    )
    assert qwen.reference_paths()[0].parent == family_dir / "references"


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("qwen2.5.toml", "stop = [", "stpo = [", "unknown key 'stpo' (did you mean 'stop'?)"),
        ("qwen2.5.toml", "tools = true", "tools = 'yes'", "key 'tools': Input should be"),
        ("gemma.toml", "rejects = [", "rejcts = [", "unknown key 'references[0].rejcts'"),
        ("gemma.toml", '"multi_turn",', '"multi-turn",', "key 'references[0].rejects'"),
        ("qwen2.5.toml", "temperature = 0.7", "temprature = 0.7", "unknown PARAMETER"),
        ("qwen2.5.toml", 'min_ollama = "0.5.5"', 'min_ollama = "0.5"', "key 'min_ollama'"),
        ("qwen2.5.toml", 'tool_call_tag = "<tool_call>"\n', "", "tool_call_tag is required"),
        ("phi3.toml", 'description = "', 'descr = "', "unknown key 'descr'"),
        ("phi3.toml", "control_tokens = [", "# control_tokens = [", "missing key 'control"),
        ("phi3.toml", "microsoft-Phi-3.5-mini-instruct", "microsoft-Phi-9", "has no references/"),
        ("phi3.toml", "[parameters]", "[parameters", "not valid TOML"),
    ],
)
def test_a_schema_error_names_the_file_and_the_key(family_dir, file, old, new, message):
    _edit(family_dir / file, old, new)
    with pytest.raises(InputError) as exc:
        families.load(family_dir)
    assert exc.value.message.startswith(f"{family_dir / file}: ")
    assert message in exc.value.message
    assert "modelfile_templates/README.md" in exc.value.hint


def test_family_files_come_in_pairs(family_dir):
    (family_dir / "phi3.gotmpl").rename(family_dir / "phi4.gotmpl")
    with pytest.raises(InputError, match="phi4.gotmpl has no phi4.toml"):
        families.load(family_dir)
    (family_dir / "phi4.gotmpl").unlink()
    with pytest.raises(InputError, match="family phi3 has phi3.toml but no phi3.gotmpl"):
        families.load(family_dir)


def test_a_jinja_gotmpl_is_refused(family_dir):
    jinja = (family_dir / "references" / "microsoft-Phi-3.5-mini-instruct.jinja").read_text()
    (family_dir / "phi3.gotmpl").write_text(jinja)
    with pytest.raises(InputError, match="phi3.gotmpl looks like a Jinja chat template"):
        families.load(family_dir)


def test_the_gotmpl_final_newline_is_not_part_of_the_template(family_dir):
    assert (family_dir / "chatml.gotmpl").read_text().endswith("{{ end }}\n")
    assert families.load(family_dir)["chatml"].template.endswith("{{ end }}")


def test_a_new_family_is_only_data(family_dir):
    """Adding a family touches only the families folder: a TOML, a .gotmpl, a reference."""
    for suffix in (".toml", ".gotmpl"):
        shutil.copyfile(family_dir / f"chatml{suffix}", family_dir / f"mychatml{suffix}")
    jinja = family_dir / "references" / "teknium-OpenHermes-2.5-Mistral-7B.jinja"
    shutil.copyfile(jinja, family_dir / "references" / "my-org-chatml.jinja")
    _edit(family_dir / "mychatml.toml", "teknium-OpenHermes-2.5-Mistral-7B", "my-org-chatml")
    loaded = families.load(family_dir)
    fam, ref = families.detect(jinja.read_text(), fams={"mychatml": loaded["mychatml"]})
    assert (fam.name, ref) == ("mychatml", "my-org-chatml")


def test_a_broken_shipped_family_is_one_error_line(monkeypatch, family_dir):
    _edit(family_dir / "qwen2.5.toml", "stop = [", "stpo = [")
    monkeypatch.setattr(families, "templates_dir", lambda: family_dir)
    families.families.cache_clear()
    try:
        r = invoke("templates", "list")
    finally:
        families.families.cache_clear()
    line = one_error_line(r, 3)
    assert f"{family_dir / 'qwen2.5.toml'}: unknown key 'stpo'" in line


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "reference"),
    [(f.name, r.name) for f in families.families().values() for r in f.references],
)
def test_every_reference_template_detects_its_own_family(family, reference):
    fam = families.get(family)
    source = fam.reference_path(reference).read_text(encoding="utf-8")
    got, ref = families.detect(source, bos_token=fam.bos_token, eos_token=fam.eos_token)
    assert got.name == family
    # Llama 3.1 and 3.3 ship the very same template text; either name is right then
    assert ref == reference or got.reference_path(ref).read_text() == source


def test_detection_is_exact_not_nearest():
    """A one-word change (what LLaMA-Factory-style edits do) is no match, and says so."""
    source = families.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text()
    edited = source.replace("You are a helpful assistant.", "You are a helpful bot.")
    assert edited != source
    with pytest.raises(InputError, match="matches no known family") as exc:
        families.detect(edited)
    assert "--family" in exc.value.hint and "--template-file" in exc.value.hint


def test_detection_tells_llama31_from_llama32_by_the_date():
    l31 = families.reference_path("meta-llama-Llama-3.1-8B-Instruct").read_text()
    l32 = families.reference_path("meta-llama-Llama-3.2-3B-Instruct").read_text()
    assert families.detect(l31)[0].name == "llama3"
    assert families.detect(l32)[0].name == "llama3.2"


def test_no_chat_template_is_an_error():
    with pytest.raises(InputError, match="no chat template"):
        families.detect("")


def test_unknown_family_lists_known_ones():
    with pytest.raises(InputError, match="qwen2.5"):
        families.get("qwen9")


def test_demo_models_detect(demo_dirs):
    for arch, want in (("qwen2", "qwen2.5"), ("llama", "llama3")):
        tc = json.loads((demo_dirs[arch] / "base" / "tokenizer_config.json").read_text())
        fam, _ = families.detect(tc["chat_template"], bos_token=tc.get("bos_token") or "")
        assert fam.name == want


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_templates_list_and_show():
    r = invoke("templates", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {f["name"]: f for f in json.loads(r.stdout)["families"]}
    assert set(rows) >= EXPECTED
    assert rows["llama3"]["references"] == [
        "meta-llama-Llama-3.1-8B-Instruct",
        "meta-llama-Llama-3.3-70B-Instruct",
    ]
    r = invoke("templates", "show", "qwen2.5")
    assert r.returncode == 0, r.stderr
    assert "{{ json .Function }}" in r.stdout and "You are Qwen" in r.stdout
    r = invoke("templates", "show", "qwen2.5", "--json")
    data = json.loads(r.stdout)
    assert data["template"] == families.get("qwen2.5").template
    assert data["stop"] == ["<|im_start|>", "<|im_end|>"]


def test_cli_templates_show_unknown():
    r = invoke("templates", "show", "nope")
    assert r.stdout == ""
    assert one_error_line(r, 3).startswith("error: unknown template family 'nope'")
