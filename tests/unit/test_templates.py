"""Family data and exact-match family detection; `deploykit templates list/show`."""

from __future__ import annotations

import json

import pytest

from deploykit.core.errors import InputError
from deploykit.ollama import families as templates
from tests.support.cli import run_cli

EXPECTED = {"qwen2.5", "qwen3", "chatml", "llama3", "llama3.2", "mistral", "gemma", "phi3"}


def test_families_are_data_with_go_templates_and_references():
    fams = templates.families()
    assert set(fams) >= EXPECTED
    for fam in fams.values():
        go = fam.go_template()
        assert ".Messages" in go and "{%" not in go, fam.name
        assert fam.stop and fam.references, fam.name
        for path in fam.reference_paths():
            assert path.is_file(), path
        if fam.tools:
            assert ".Tools" in go and ".ToolCalls" in go, fam.name
            assert "{{ .Function }}" not in go, fam.name  # prints a Go struct on Ollama >= 0.14
    assert fams["qwen2.5"].default_system.startswith("You are Qwen, created by Alibaba Cloud.")
    assert fams["qwen2.5"].parameters == {
        "temperature": 0.7,
        "top_p": 0.8,
        "repeat_penalty": 1.05,
        "top_k": 20,
    }
    assert not fams["gemma"].system_role
    assert fams["qwen3"].thinking and "<think>" in fams["qwen3"].go_template()


@pytest.mark.parametrize(
    ("family", "reference"),
    [(f.name, r) for f in templates.families().values() for r in f.references],
)
def test_every_reference_template_detects_its_own_family(family, reference):
    fam = templates.get(family)
    source = templates.reference_path(reference).read_text(encoding="utf-8")
    got, ref = templates.detect(source, bos_token=fam.bos_token, eos_token=fam.eos_token)
    assert got.name == family
    # Llama 3.1 and 3.3 ship the very same template text; either name is right then
    assert ref == reference or templates.reference_path(ref).read_text() == source


def test_detection_is_exact_not_nearest():
    """A one-word change (what LLaMA-Factory-style edits do) is no match, and says so."""
    source = templates.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text()
    edited = source.replace("You are a helpful assistant.", "You are a helpful bot.")
    assert edited != source
    with pytest.raises(InputError, match="matches no known family") as exc:
        templates.detect(edited)
    assert "--family" in exc.value.hint and "--template-file" in exc.value.hint


def test_detection_tells_llama31_from_llama32_by_the_date():
    l31 = templates.reference_path("meta-llama-Llama-3.1-8B-Instruct").read_text()
    l32 = templates.reference_path("meta-llama-Llama-3.2-3B-Instruct").read_text()
    assert templates.detect(l31)[0].name == "llama3"
    assert templates.detect(l32)[0].name == "llama3.2"


def test_no_chat_template_is_an_error():
    with pytest.raises(InputError, match="no chat template"):
        templates.detect("")


def test_unknown_family_lists_known_ones():
    with pytest.raises(InputError, match="qwen2.5"):
        templates.get("qwen9")


def test_demo_models_detect(demo_dirs):
    for arch, want in (("qwen2", "qwen2.5"), ("llama", "llama3")):
        tc = json.loads((demo_dirs[arch] / "base" / "tokenizer_config.json").read_text())
        fam, _ = templates.detect(tc["chat_template"], bos_token=tc.get("bos_token") or "")
        assert fam.name == want


def test_cli_templates_list_and_show():
    r = run_cli("templates", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = {f["name"] for f in json.loads(r.stdout)["families"]}
    assert names >= EXPECTED
    r = run_cli("templates", "show", "qwen2.5")
    assert r.returncode == 0, r.stderr
    assert "{{ json .Function }}" in r.stdout and "You are Qwen" in r.stdout
    r = run_cli("templates", "show", "qwen2.5", "--json")
    data = json.loads(r.stdout)
    assert data["template"] == templates.get("qwen2.5").go_template()
    assert data["stop"] == ["<|im_start|>", "<|im_end|>"]


def test_cli_templates_show_unknown():
    r = run_cli("templates", "show", "nope")
    assert r.returncode == 3
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown template family 'nope'")
