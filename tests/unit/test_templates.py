"""Family data (validated), exact-match family detection and the nearest family when none
matches, user families (``--families-dir``, proven before use), `deploykit templates
list/show/scaffold/prove`, the README's family table."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
from pydantic import ValidationError

from deploykit.core.errors import InputError, ToolchainError
from deploykit.llamacpp.vendor import vendored_tree_dir
from deploykit.ollama import families
from tests.support.cli import invoke, one_error_line

EXPECTED = {"qwen2.5", "qwen3", "chatml", "llama3", "llama3.2", "mistral", "gemma", "phi3"}


def test_families_are_data_with_go_templates_and_references():
    fams = families.families()
    assert set(fams) >= EXPECTED
    for fam in fams.values():
        assert fam.stop and fam.references and fam.control_tokens, fam.name
        for path in fam.reference_paths():
            assert path.is_file(), path
        if fam.renderer is not None:  # Ollama's renderer: no TEMPLATE (tests/unit/test_renderer)
            assert fam.template is None, fam.name
            continue
        assert ".Messages" in fam.template and "{%" not in fam.template, fam.name
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


# --- no match: the nearest family ------------------------------------------------------------


def _edited_qwen() -> str:
    source = families.reference_path("Qwen-Qwen2.5-7B-Instruct").read_text()
    return source.replace("You are a helpful assistant.", "You are a helpful bot.")


def test_no_match_names_the_nearest_family_with_a_short_diff():
    with pytest.raises(families.DetailedInputError) as exc:
        families.detect(_edited_qwen())
    err = exc.value
    assert "nearest family: qwen2.5 (Qwen-Qwen2.5-7B-Instruct)" in err.message
    assert "scaffold" in err.hint
    first, *details = err.line().splitlines()
    assert first.startswith("error: ") and "(hint: " in first
    assert details[0].strip() == "probe 'user', rendered by"
    assert "helpful assistant.<|im_end|>" in details[1] and "family qwen2.5:" in details[1]
    assert "helpful bot.<|im_end|>" in details[2] and "the model:" in details[2]
    assert len(details) == 3 and all(len(d) < 200 for d in details)


def test_nearest_is_most_probes_then_smallest_edit():
    # Llama 3.2 with one word changed in its date line: 3.2 is nearer than 3.1 (same probes
    # differ, the edit is smaller)
    l32 = families.reference_path("meta-llama-Llama-3.2-3B-Instruct").read_text()
    edited = l32.replace("Cutting Knowledge Date:", "Knowledge Cutoff:")
    assert edited != l32
    near = families.nearest(edited)
    assert (near.family.name, near.reference) == ("llama3.2", "meta-llama-Llama-3.2-3B-Instruct")
    assert near.probe == "user" and near.same < near.total
    assert near.distance == families.distance(near.theirs, near.mine) > 0
    exact = families.nearest(l32)
    assert exact.exact and exact.probe is None and exact.diff() == []


def test_edit_distance():
    assert families.distance("abc", "abc") == 0
    # "a helpful " and "t." in common: "assistan" becomes "bo"
    assert families.distance("a helpful assistant.", "a helpful bot.") == len("assistan")
    assert families.distance("x" * 10, "") == 10
    assert families.distance("ab", "ba") == 2


def test_reference_fingerprints_are_rendered_once_per_process():
    families.nearest(_edited_qwen())
    before = families.fingerprint.cache_info()
    with pytest.raises(InputError):
        families.detect(_edited_qwen())
    after = families.fingerprint.cache_info()
    refs = sum(len(f.references) for f in families.families().values())
    assert after.misses == before.misses  # nothing rendered again
    assert after.hits - before.hits == refs + 1


# --- user families ---------------------------------------------------------------------------


def _user_family(folder, name: str = "mybot", template_fix: bool = True):
    """A user family for the edited Qwen template: qwen2.5's files with the system line fixed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "references").mkdir(exist_ok=True)
    (folder / "references" / f"{name}.jinja").write_text(_edited_qwen())
    src = families.templates_dir()
    gotmpl = (src / "qwen2.5.gotmpl").read_text()
    toml = (src / "qwen2.5.toml").read_text()
    if template_fix:
        gotmpl = gotmpl.replace("helpful assistant.", "helpful bot.")
        toml = toml.replace("helpful assistant.", "helpful bot.")
    (folder / f"{name}.gotmpl").write_text(gotmpl)
    toml = toml.replace('name = "Qwen-Qwen2.5-7B-Instruct"', f'name = "{name}"')
    assert f'name = "{name}"' in toml
    (folder / f"{name}.toml").write_text(toml)
    return folder


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    folder = _user_family(tmp_path / "families")
    monkeypatch.setenv(families.FAMILIES_DIR_ENV, str(folder))
    return folder


def test_a_user_family_is_detected_and_proven_first(user_dir):
    from deploykit.ollama import proof

    fam, ref = families.detect(_edited_qwen())
    assert (fam.name, ref, fam.user, fam.folder) == ("mybot", "mybot", True, user_dir)
    assert fam.content_hash() in proof._PROVEN  # proven before it was returned
    assert all(p.ok for p in proof._PROVEN[fam.content_hash()])
    assert families.get("qwen2.5").user is False  # the built-ins are still there
    assert list(families.families())[0] == "mybot"  # user families are tried first


def test_a_user_family_that_fails_its_proof_is_refused(tmp_path, monkeypatch):
    folder = _user_family(tmp_path / "families", template_fix=False)
    monkeypatch.setenv(families.FAMILIES_DIR_ENV, str(folder))
    with pytest.raises(families.DetailedInputError) as exc:
        families.get("mybot")
    assert (
        "user family mybot" in exc.value.message and "fails its parity proof" in exc.value.message
    )
    assert "deploykit templates prove" in exc.value.hint
    assert any("probe user: differs" in d for d in exc.value.details)
    assert families.get("mybot", prove=False).name == "mybot"  # shown, never used
    with pytest.raises(InputError, match="fails its parity proof"):
        families.detect(_edited_qwen())


def test_a_user_family_overrides_a_builtin_with_a_warning(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "families"
    shutil.copytree(families.templates_dir() / "references", folder / "references")
    for suffix in (".toml", ".gotmpl"):
        text = (families.templates_dir() / f"chatml{suffix}").read_text()
        (folder / f"chatml{suffix}").write_text(text.replace("Generic ChatML", "My ChatML"))
    monkeypatch.setenv(families.FAMILIES_DIR_ENV, str(folder))
    fam = families.get("chatml")
    assert fam.user and fam.description.startswith("My ChatML")
    assert (
        f"warning: user family chatml ({folder}) overrides the built-in" in capsys.readouterr().err
    )
    assert families.shipped()["chatml"].description.startswith("Generic ChatML")


def test_a_missing_user_families_folder_is_one_error_line(tmp_path):
    r = invoke("templates", "list", env={families.FAMILIES_DIR_ENV: str(tmp_path / "nope")})
    assert "user template families folder not found" in one_error_line(r, 3)
    r = invoke("--families-dir", str(tmp_path / "nope"), "templates", "list")
    assert "families folder not found" in one_error_line(r, 3)


def test_families_dir_option_and_environment(tmp_path):
    from deploykit.cli import options

    assert options.FAMILIES_DIR_ENV == families.FAMILIES_DIR_ENV
    folder = _user_family(tmp_path / "families")
    for args, env in (
        (["templates", "list", "--families-dir", str(folder), "--json"], None),
        (["--families-dir", str(folder), "templates", "list", "--json"], None),
        (["templates", "list", "--json"], {families.FAMILIES_DIR_ENV: str(folder)}),
    ):
        r = invoke(*args, env=env)
        assert r.returncode == 0, r.stderr
        rows = {f["name"]: f for f in json.loads(r.stdout)["families"]}
        assert rows["mybot"]["source"] == str(folder) and rows["qwen2.5"]["source"] == "built-in"
    import os

    assert families.FAMILIES_DIR_ENV not in os.environ  # the option lasts one command
    r = invoke("templates", "list", "--json")
    assert "mybot" not in r.stdout


# --- scaffold and prove ----------------------------------------------------------------------


def test_scaffold_then_prove_from_the_cli(tmp_path):
    model = tmp_path / "my-Model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": _edited_qwen(), "eos_token": "<|im_end|>"})
    )
    out = tmp_path / "families"
    r = invoke("templates", "scaffold", "--model-dir", str(model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "started from family qwen2.5" in r.stdout
    assert f"deploykit templates prove --families-dir {out} my-model" in r.stdout
    assert (out / "references" / "my-model.jinja").read_text() == _edited_qwen()
    assert (out / "my-model.gotmpl").read_text() == families.get("qwen2.5").template + "\n"
    fam = families.load(out)["my-model"]
    assert fam.eos_token == "<|im_end|>" and fam.reference_names == ["my-model"]
    assert fam.stop == families.get("qwen2.5").stop

    again = invoke("templates", "scaffold", "--model-dir", str(model), "--out", str(out))
    assert "exists" in one_error_line(again, 3) and "--force" in again.stderr
    forced = ["templates", "scaffold", "--model-dir", str(model), "--out", str(out), "--force"]
    assert invoke(*forced).returncode == 0

    failing = invoke("templates", "prove", "--families-dir", str(out))
    assert "parity proofs failed: my-model against my-model" in one_error_line(failing, 7)
    assert "FAIL my-model against my-model" in failing.stdout
    assert "  differs   user  at char" in failing.stdout
    assert "  same      system_user" in failing.stdout

    for name in ("my-model.gotmpl", "my-model.toml"):
        path = out / name
        path.write_text(path.read_text().replace("helpful assistant.", "helpful bot."))
    proved = invoke("templates", "prove", "--families-dir", str(out), "my-model", "--json")
    assert proved.returncode == 0, proved.stderr + proved.stdout
    [result] = json.loads(proved.stdout)["proofs"]
    assert result["ok"] and {r["status"] for r in result["results"]} <= {"same", "declared"}


def test_scaffold_needs_a_chat_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    r = invoke("templates", "scaffold", "--model-dir", str(tmp_path), "--out", str(tmp_path / "f"))
    assert "no chat template" in one_error_line(r, 3)


def test_scaffold_toml_round_trips_every_family():
    from deploykit.ollama import scaffold

    for fam in families.shipped().values():
        data = fam.model_dump(exclude={"name", "template", "folder", "user"})
        import tomllib

        assert families.FamilyFile.model_validate(
            tomllib.loads(scaffold.family_toml(data, "a comment"))
        ) == families.FamilyFile.model_validate(data), fam.name


def test_readme_family_table_is_the_family_data():
    from deploykit.cli.reference import family_table

    rows = [ln for ln in family_table().splitlines() if ln.startswith("| `")]
    assert len(rows) == len(families.shipped())
    qwen = next(r for r in rows if r.startswith("| `qwen2.5` |"))
    assert "`Qwen-Qwen2.5-7B-Instruct`" in qwen and qwen.endswith("| CI: Go TEMPLATE |")
    assert "<" not in "".join(rows)  # control tokens are escaped, not HTML


def test_scaffold_fills_in_what_the_template_rejects(tmp_path):
    from deploykit.ollama import scaffold

    gemma = families.get("gemma")
    source = gemma.reference_paths()[0].read_text().replace("<start_of_turn>model", "<sot>model")
    model = tmp_path / "gemma-edit"
    model.mkdir()
    config = {"chat_template": source, "bos_token": "<bos>", "eos_token": "<eos>"}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    result = scaffold.scaffold(model, tmp_path / "f")
    fam = families.load(tmp_path / "f")["gemma-edit"]
    assert result.nearest.family.name == "gemma"
    assert fam.rejects("gemma-edit") == gemma.rejects("google-gemma-2-2b-it")
    assert (fam.bos_token, fam.eos_token, fam.runtime_bos) == ("<bos>", "<eos>", True)


def test_a_user_family_without_go_says_how_to_install_it(user_dir, monkeypatch):
    from deploykit.ollama import proof

    monkeypatch.setattr(proof.shutil, "which", lambda name: None)
    monkeypatch.setattr(proof, "_PROVEN", {})
    r = invoke("templates", "show", "mybot")  # showing needs no proof
    assert r.returncode == 0, r.stderr
    with pytest.raises(ToolchainError, match="needs Go") as exc:
        families.get("mybot")
    assert "apt-get install golang-go" in exc.value.hint


def test_a_reference_name_cannot_leave_the_families_folder():
    with pytest.raises(ValidationError):
        families.Reference(name="../../tmp/evil")
    assert families.Reference(name="Qwen-Qwen3-0.6B").name == "Qwen-Qwen3-0.6B"


@pytest.mark.parametrize("key", ["num_ctx", "stop", "seed"])
def test_a_family_sets_only_sampling_parameters(key):
    data = tomllib.loads((families.templates_dir() / "qwen2.5.toml").read_text())
    data["parameters"][key] = 4096 if key != "stop" else "x"
    with pytest.raises(ValidationError, match="not sampling parameters"):
        families.FamilyFile.model_validate(data)


def test_a_source_build_of_ollama_counts_as_the_newest():
    from deploykit.ollama.names import parse_version, server_version

    assert server_version("0.0.0") > parse_version("99.0.0")
    assert server_version("0.30.11-rc1") == (0, 30, 11)
