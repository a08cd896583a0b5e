"""Parity proof: each family's Ollama TEMPLATE (Go text/template, rendered by the Go helper
with Ollama's data model) renders the probe conversations exactly as the upstream Jinja chat
template does (rendered by transformers), byte for byte.

The one allowed difference is JSON that Go's ``json`` prints (compact, sorted keys, ``<>&``
escaped) where the Jinja template uses ``tojson``. Those spans are each family's ``json_spans``
(its TOML) and are compared after parsing; only probes with tools use the allowance, and every
other byte must match. Everything per family (spans, the probes a reference rejects, the
tool-call tag) is family data: adding a family adds no table here.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
import transformers.utils.chat_template_utils as chat_utils

from deploykit.model.probes import CONVERSATIONS, render_probe
from deploykit.ollama import families, gotemplate

#: The fixed date both sides render with (strftime_now on the Jinja side, currentDate in Go).
FIXED_DATE = dt.datetime(2025, 3, 9, 12, 0, 0)

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


def canonical_json_spans(text: str, spans: list[tuple[str, str | None]]) -> str:
    """``text`` with each allowed JSON span replaced by a canonical, marked form."""
    decoder = json.JSONDecoder()
    out: list[str] = []
    pos = 0
    while True:
        hits = [(text.find(lead, pos), lead, sep) for lead, sep in spans]
        hits = [h for h in hits if h[0] >= 0]
        if not hits:
            break
        at, lead, sep = min(hits)
        cur = at + len(lead)
        out.append(text[pos:cur])
        while True:
            try:
                obj, end = decoder.raw_decode(text, cur)
            except ValueError:
                break
            out.append("<JSON " + json.dumps(obj, sort_keys=True, ensure_ascii=False) + ">")
            cur = end
            if not (sep and text.startswith(sep, cur)):
                break
            try:
                decoder.raw_decode(text, cur + len(sep))
            except ValueError:
                break
            out.append(sep)
            cur += len(sep)
        pos = cur
    out.append(text[pos:])
    return "".join(out)


@pytest.fixture(scope="session")
def helper(tmp_path_factory):
    """The Go helper, built once per session (go build, standard library only)."""
    if not shutil.which("go"):
        pytest.fail("Go is required for the parity tests: apt-get install golang-go")
    return gotemplate.build(tmp_path_factory.mktemp("gotemplate"))


class _FixedDatetime(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE


def _go_cases(probes: dict) -> list[dict]:
    return [
        {
            "messages": p["messages"],
            "tools": p.get("tools"),
            "think": p.get("think"),
            "date": FIXED_DATE.strftime("%Y-%m-%d"),
        }
        for p in probes.values()
    ]


def _jinja(source: str, probe: dict, fam: families.Family) -> str | None:
    """Rendered reference text (runtime BOS removed), or None if the template rejects it."""
    try:
        text = render_probe(source, probe, bos_token=fam.bos_token, eos_token=fam.eos_token)
    except Exception:
        return None
    if fam.runtime_bos and fam.bos_token:
        assert text.startswith(fam.bos_token)
        text = text[len(fam.bos_token) :]
    return text


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    monkeypatch.setattr(chat_utils, "datetime", _FixedDatetime)


PAIRS = [(f.name, r.name) for f in families.families().values() for r in f.references]


@pytest.mark.parametrize(("family", "reference"), PAIRS, ids=[f"{a}:{b}" for a, b in PAIRS])
def test_go_template_matches_upstream_jinja(helper, family, reference):
    fam = families.get(family)
    source = fam.reference_path(reference).read_text(encoding="utf-8")
    outputs = gotemplate.render(helper, fam.template, _go_cases(CONVERSATIONS))
    rejected, mismatches, compared = set(), [], 0
    for (name, probe), go in zip(CONVERSATIONS.items(), outputs, strict=True):
        want = _jinja(source, probe, fam)
        if want is None:
            rejected.add(name)
            continue
        assert "error" not in go, f"{name}: Go template failed: {go.get('error')}"
        got = go["output"]
        compared += 1
        if probe.get("tools"):
            spans = fam.spans
            want, got = canonical_json_spans(want, spans), canonical_json_spans(got, spans)
        if got != want:
            mismatches.append(f"{name}:\n  jinja: {want!r}\n  go:    {got!r}")
    assert rejected == fam.rejects(reference)
    assert not mismatches, "\n".join(mismatches)
    assert compared >= 6


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
        if fam.tools:
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
