"""Parity proof: each family's Ollama TEMPLATE (Go text/template, rendered by the Go helper
with Ollama's data model) renders the probe conversations exactly as the upstream Jinja chat
template does (rendered by transformers), byte for byte.

The one allowed difference is JSON that Go's ``json`` prints (compact, sorted keys, ``<>&``
escaped) where the Jinja template uses ``tojson``. Those spans are each family's ``json_spans``
(its TOML) and are compared after parsing; only probes with tools use the allowance, and every
other byte must match. Everything per family (spans, the probes a reference rejects, the
tool-call tag) is family data: adding a family adds no table here. The proof itself is
:mod:`deploykit.ollama.proof` (``deploykit templates prove`` runs it for user families).
"""

from __future__ import annotations

import shutil

import pytest

from deploykit.core.errors import ToolchainError
from deploykit.model.probes import CONVERSATIONS
from deploykit.ollama import families, gotemplate, proof
from deploykit.ollama.proof import canonical_json_spans

#: The seed document's Qwen2.5 TEMPLATE (tool definitions printed with {{ .Function }}),
#: used with the Modelfile's SYSTEM, i.e. a system message is always present.
SEED_QWEN25 = (
    "{{ if .Messages }}\n{{- if or .System .Tools }}<|im_start|>system\n{{ .System }}\n"
    "{{- if .Tools }}\n\n# Tools\n\nYou are provided with function signatures within "
    "<tools></tools> XML tags:\n<tools>{{- range .Tools }}\n"
    '{"type": "function", "function": {{ .Function }}}{{- end }}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>\n{{- end }}<|im_end|>\n{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
    '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
    "{{ if .Content }}{{ .Content }}\n{{- else if .ToolCalls }}<tool_call>\n"
    '{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": '
    "{{ .Function.Arguments }}}\n{{ end }}</tool_call>\n{{- end }}{{ if not $last }}<|im_end|>\n"
    '{{ end }}\n{{- else if eq .Role "tool" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n'
    "</tool_response><|im_end|>\n{{ end }}\n"
    '{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant\n{{ end }}\n{{- end }}\n'
    "{{- else }}\n{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    "{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"
)


@pytest.fixture(scope="session")
def helper(tmp_path_factory):
    """The Go helper, built once per session (go build, standard library only)."""
    if not shutil.which("go"):
        pytest.fail("Go is required for the parity tests: apt-get install golang-go")
    return proof.helper(tmp_path_factory.mktemp("gotemplate"))


_go_cases = proof.go_cases


def _jinja(source: str, probe: dict, fam: families.Family) -> str | None:
    """Rendered reference text (runtime BOS removed), or None if the template rejects it."""
    with proof.fixed_date():
        return proof.render_jinja(source, probe, fam)


#: Families with a Go TEMPLATE (a renderer family is proven at deploy time, by health).
PAIRS = [
    (f.name, r.name)
    for f in families.shipped().values()
    if f.template is not None
    for r in f.references
]


@pytest.mark.parametrize(("family", "reference"), PAIRS, ids=[f"{a}:{b}" for a, b in PAIRS])
def test_go_template_matches_upstream_jinja(helper, family, reference):
    """Every probe renders identically, except a declared known difference, which must be
    exactly that difference (and real: a declared difference that does not occur fails)."""
    fam = families.get(family)
    result = proof.prove_reference(fam, reference, helper)
    statuses = {r.probe: r.status for r in result.results}
    assert set(statuses) == set(CONVERSATIONS)
    go_errors = [r for r in result.results if r.status == "go-error"]
    assert not go_errors, f"Go template failed: {go_errors}"
    assert not [p for p in result.problems if "declared" in p], result.problems
    rejected = {name for name, status in statuses.items() if status == "rejected"}
    assert rejected == fam.rejects(reference)
    mismatches = [f"{r.probe}: {r.detail}" for r in result.results if r.status == "differs"]
    assert not mismatches, "\n".join(mismatches)
    for name in fam.known_differences:
        assert statuses[name] in ("declared", "rejected"), name
    compared = {name for name, status in statuses.items() if status != "rejected"}
    assert result.compared >= 6 or compared == proof.TOOL_PROBES  # a tool-use template
    assert result.ok, "\n".join(result.failures())


_USR = '{{ if eq .Role "user" }}usr{{ else }}{{ .Role }}{{ end }}'


def test_a_wrong_template_fails_the_proof_per_probe(helper):
    """The proof is not vacuous: one changed word fails exactly the probes that print it."""
    fam = families.get("chatml")
    broken = fam.model_copy(update={"template": fam.template.replace("{{ .Role }}", _USR)})
    [result] = proof.prove(broken, binary=helper)
    assert not result.ok
    differs = {r.probe for r in result.results if r.status == "differs"}
    assert differs == {
        n for n, p in CONVERSATIONS.items() if any(m["role"] == "user" for m in p["messages"])
    } - fam.rejects(fam.reference_names[0])
    assert any("usr" in r.detail for r in result.results)
    # declaring a difference that does not occur is a problem too
    wrong = fam.model_copy(update={"known_differences": ["whitespace"]})
    [result] = proof.prove(wrong, binary=helper)
    assert not result.ok and any("renders exactly" in p for p in result.problems)
    # and a TEMPLATE that does not parse
    [result] = proof.prove(
        fam.model_copy(update={"template": "{{ range .Messages }}"}), binary=helper
    )
    assert not result.ok and "does not parse" in result.problems[0]


def test_proof_without_go_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(proof.shutil, "which", lambda name: None)
    with pytest.raises(ToolchainError) as exc:
        proof.helper()
    assert "needs Go" in exc.value.message
    assert "apt-get install golang-go" in exc.value.hint and "https://go.dev/dl" in exc.value.hint


def test_allowance_only_forgives_json_formatting():
    spans = families.get("qwen2.5").spans
    a = '<tools>\n{"a": 1, "b": "<x>"}\n{"c": [1, 2]}\n</tools> "arguments": {"k": "v"}}'
    b = '<tools>\n{"b":"\\u003cx\\u003e","a":1}\n{"c":[1,2]}\n</tools> "arguments": {"k":"v"}}'
    assert canonical_json_spans(a, spans) == canonical_json_spans(b, spans)
    # different JSON values, or any byte outside the spans, still differ
    c = b.replace('"k":"v"', '"k":"w"')
    assert canonical_json_spans(a, spans) != canonical_json_spans(c, spans)
    d = b.replace("</tools>", "</tool>")
    assert canonical_json_spans(a, spans) != canonical_json_spans(d, spans)


def test_tool_probes_really_differ_only_in_json(helper):
    """The allowance is needed (Go's JSON is compact) and sufficient, for qwen2.5's tools probe."""
    fam = families.get("qwen2.5")
    probe = CONVERSATIONS["tools"]
    [go] = gotemplate.render(helper, fam.template, _go_cases({"tools": probe}))
    want = _jinja(fam.reference_paths()[0].read_text(), probe, fam)
    assert go["output"] != want
    assert '"arguments": {"city":"Paris","unit":"celsius"}' in go["output"]
    spans = fam.spans
    assert canonical_json_spans(go["output"], spans) == canonical_json_spans(want, spans)


def test_seed_qwen25_template_fails_parity_under_current_ollama(helper):
    """The seed's {{ .Function }} prints a Go struct on Ollama >= 0.14: tool definitions break.

    With the missing sentence restored and {{ json .Function }} it matches, so .Function is
    the regression this guards against.
    """
    fam = families.get("qwen2.5")
    source = fam.reference_paths()[0].read_text()
    probe = CONVERSATIONS["tools"]  # has a system message, as the seed's SYSTEM gives
    want = canonical_json_spans(_jinja(source, probe, fam), fam.spans)

    [seed] = gotemplate.render(helper, SEED_QWEN25, _go_cases({"tools": probe}))
    assert (
        "{get_weather Get the current weather in a city {object <nil> <nil> [city]"
        in (seed["output"])
    )
    assert canonical_json_spans(seed["output"], fam.spans) != want

    fixed = SEED_QWEN25.replace(
        "# Tools\n\n",
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
    )
    [still] = gotemplate.render(helper, fixed, _go_cases({"tools": probe}))
    assert canonical_json_spans(still["output"], fam.spans) != want
    fixed = fixed.replace("{{ .Function }}", "{{ json .Function }}")
    [ok] = gotemplate.render(helper, fixed, _go_cases({"tools": probe}))
    assert canonical_json_spans(ok["output"], fam.spans) == want


def test_seed_template_matches_plain_conversations_with_its_system(helper):
    """The seed template is right for plain chats (with its SYSTEM line)."""
    fam = families.get("qwen2.5")
    source = fam.reference_paths()[0].read_text()
    probe = CONVERSATIONS["multi_turn"]
    [seed] = gotemplate.render(helper, SEED_QWEN25, _go_cases({"p": probe}))
    assert seed["output"] == _jinja(source, probe, fam)


def test_helper_emulates_ollama_collation(helper):
    """Consecutive same-role messages merge with a blank line; .System joins system texts."""
    tmpl = "{{ .System }}|{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    msgs = [
        {"role": "system", "content": "s1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    [out] = gotemplate.render(helper, tmpl, [{"messages": msgs}])
    assert out["output"] == "s1\n\ns2|[system:s1\n\ns2][user:a\n\nb][tool:t1][tool:t2]"


def test_helper_rejects_unparsable_template(helper):
    with pytest.raises(ValueError, match="template error"):
        gotemplate.render(helper, "{{ range .Messages }}", [{"messages": []}])


def test_tool_call_tag_is_what_the_model_emits(helper):
    """The tag Ollama's tool-call parser derives from a TEMPLATE (tools/template.go parseTag)
    must be what the model emits (the family's ``tool_call_tag``), or tool calls stay text."""
    for fam in families.families().values():
        if fam.tools and fam.template is not None:
            assert gotemplate.tool_tag(helper, fam.template) == fam.tool_call_tag, fam.name
    # the seed-style block gives the tag; a header inside the block would be a wrong one
    seed_like = "{{ range .Messages }}{{ if .ToolCalls }}<tool_call>\n{{ end }}{{ end }}"
    assert gotemplate.tool_tag(helper, seed_like) == "<tool_call>"
    wrong = "{{ range .Messages }}{{ if .ToolCalls }}<|start_header_id|>x{{ end }}{{ end }}"
    assert gotemplate.tool_tag(helper, wrong) == "<|start_header_id|>x"


def test_gemma_folds_a_system_message_into_the_first_user_turn(helper):
    """Beyond the Jinja template (it rejects system messages): what Ollama renders for one."""
    tmpl = families.get("gemma").template
    [out] = gotemplate.render(helper, tmpl, _go_cases({"p": CONVERSATIONS["multi_turn"]}))
    assert out["output"] == (
        "<start_of_turn>user\nYou are a terse assistant.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n"
        "<start_of_turn>user\nAnd times 3?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_helper_has_ollamas_typescript_types(helper):
    """api.ToolProperty.ToTypeScriptType (Ollama's api/types.go), as a template sees it."""
    props = {
        "a": {"type": "integer"},
        "b": {"type": ["string", "null"]},
        "c": {"anyOf": [{"type": "array"}, {"type": "object"}]},
        "d": {},
        "e": {"type": "boolean"},
    }
    tools = [{"type": "function", "function": {"name": "f", "description": "", "parameters": {
        "type": "object", "properties": props}}}]  # fmt: skip
    tmpl = "{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}"
    tmpl += "{{ $k }}={{ $p.ToTypeScriptType }};{{ end }}{{ end }}{{ range .Messages }}{{ end }}"
    [out] = gotemplate.render(helper, tmpl, [{"messages": [], "tools": tools}])
    assert out["output"] == (
        "a=number;b=string | null;c=any[] | Record<string, any>;d=any;e=boolean;"
    )


def test_a_wrong_default_system_prompt_fails_the_proof(helper):
    """Ollama prepends the Modelfile's SYSTEM (the family's default) to a request without one;
    the Jinja injects its own: the proof renders both, so a wrong default is caught."""
    fam = families.get("qwen2.5")
    wrong = fam.model_copy(update={"default_system": "You are Qwen."})
    result = proof.prove_reference(wrong, fam.reference_names[0], helper)
    assert not result.ok
    assert any(f.startswith("probe user: differs") for f in result.failures())
    assert proof.prove_reference(fam, fam.reference_names[0], helper).ok
