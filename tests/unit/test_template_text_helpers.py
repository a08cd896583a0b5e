"""Go TEMPLATE text tricks the probe suite only touches lightly, checked against each family's
reference Jinja: whitespace stripping (recursive ``define`` templates standing in for Python's
``strip``/``lstrip``/``rstrip``, Unicode whitespace included), argument values printed the way
Python prints them, and call ids counted over a whole conversation. Same rules as the parity
proof (JSON spans compared parsed)."""

from __future__ import annotations

import jinja2
import pytest

from deploykit.model.probes import jinja_messages, template_variables
from deploykit.ollama import families, gotemplate, proof

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run",
            "description": "  Run a command \n",
            "parameters": {
                "type": "object",
                "required": ["cmd"],
                "properties": {
                    "args": {"type": ["array", "null"], "items": {"type": "string"}},
                    "cmd": {"type": "string", "description": "The command "},
                },
            },
        },
    }
]


def _call(cid: str, **arguments) -> dict:
    """A call; keys in sorted order, as Go ranges a map (the Jinja keeps insertion order)."""
    return {"id": cid, "function": {"name": "run", "arguments": arguments}}


#: Odd whitespace: leading/trailing blanks, tabs, newlines, NBSP, ideographic space, U+2028.
_WS = "\u3000 \t\n"
CASES = {
    "unicode_whitespace": {
        "messages": [
            {"role": "system", "content": " Be brief. \u00a0\n"},
            {"role": "user", "content": _WS + "hi" + "\u2028 "},
            {"role": "assistant", "content": "\n\n\n ok \u3000", "thinking": "\u0085 why \n"},
            {"role": "user", "content": "\x1c again\x1f"},
        ]
    },
    "whitespace_only": {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": " \n "},
            {"role": "user", "content": "y"},
        ]
    },
    "typed_arguments": {
        "tools": _TOOLS,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "  Running.  ",
                "tool_calls": [
                    _call("c1", cmd="ls", flag=True, n=3, none=None, x=2.5),
                    _call("c2", cmd="pwd"),
                ],
            },
            {"role": "tool", "content": " a ", "tool_call_id": "c1"},
            {"role": "tool", "content": "b", "tool_call_id": "c2"},
            {"role": "assistant", "content": "", "tool_calls": [_call("c3", cmd="id")]},
            {"role": "tool", "content": "c", "tool_call_id": "c3"},
        ],
    },
}

#: (family, reference, cases): cases rendered by transformers, or (``unsandboxed``) by plain
#: Jinja2 for a reference that uses list.append, which transformers' sandbox refuses.
CHECKS = [
    ("qwen3.5", "Qwen3.5-4B", ["unicode_whitespace", "whitespace_only", "typed_arguments"]),
    ("qwen3-coder", "Qwen3-Coder", ["whitespace_only", "typed_arguments"]),
    ("smollm3", "HuggingFaceTB-SmolLM3-3B", ["unicode_whitespace", "whitespace_only"]),
    ("bielik", "Bielik-11B-v3.0-Instruct", ["unicode_whitespace", "typed_arguments"]),
    ("laguna-xs.2", "poolside-Laguna-XS.2", ["unicode_whitespace", "typed_arguments"]),
    ("ling3", "inclusionai-ling-3.0-flash", ["typed_arguments"]),
    ("lfm2.5-moe", "LFM2.5-8B-A1B", ["typed_arguments"]),
    ("step3.5", "StepFun3.5-Flash", ["typed_arguments"]),
    ("kimi-k3", "Kimi-K3", ["typed_arguments", "unicode_whitespace"]),
]
UNSANDBOXED = [
    ("kimi-k2-instruct", "Kimi-K2-Instruct", ["typed_arguments"]),
    ("kimi-k2-thinking", "Kimi-K2-Thinking", ["typed_arguments", "unicode_whitespace"]),
]


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    return proof.helper(tmp_path_factory.mktemp("gotemplate"))


def _go(helper, fam, names):
    outputs = gotemplate.render(helper, fam.template, proof.go_cases({n: CASES[n] for n in names}))
    return [o.get("output", o.get("error")) for o in outputs]


@pytest.mark.parametrize(("family", "reference", "names"), CHECKS, ids=[c[0] for c in CHECKS])
def test_go_template_matches_jinja_on_text_edge_cases(helper, family, reference, names):
    fam = families.get(family)
    source = fam.reference_path(reference).read_text(encoding="utf-8")
    with proof.fixed_date():
        wanted = [proof.render_jinja(source, CASES[n], fam) for n in names]
    for name, want, got in zip(names, wanted, _go(helper, fam, names), strict=True):
        assert want is not None, f"{name}: the reference rejects it"
        assert proof.same(fam, want, got, CASES[name]), f"{name}:\n {want!r}\n {got!r}"


def _plain_jinja(source: str, probe: dict) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, **_: __import__("json").dumps(value, ensure_ascii=False)
    variables = template_variables(probe)
    return env.from_string(source).render(
        messages=jinja_messages(probe),
        tools=probe.get("tools"),
        add_generation_prompt=variables["add_generation_prompt"],
    )


@pytest.mark.parametrize(
    ("family", "reference", "names"), UNSANDBOXED, ids=[c[0] for c in UNSANDBOXED]
)
def test_kimi_call_ids_count_over_the_conversation(helper, family, reference, names):
    """Kimi numbers calls functions.NAME:N over the whole conversation and labels results in
    call order (the Jinja needs list.append: rendered outside transformers' sandbox)."""
    fam = families.get(family)
    source = fam.reference_path(reference).read_text(encoding="utf-8")
    outputs = dict(zip(names, _go(helper, fam, names), strict=True))
    for name, got in outputs.items():
        want = _plain_jinja(source, CASES[name])
        assert proof.same(fam, want, got, CASES[name]), f"{name}:\n {want!r}\n {got!r}"
    # the third call is number 2, and the third result is labelled with it
    assert "## Return of functions.run:2" in outputs["typed_arguments"]


def test_a_trim_that_does_nothing_would_fail(helper):
    """The edge cases really exercise the stripping: without it, qwen3.5 differs."""
    fam = families.get("qwen3.5")
    broken = fam.model_copy(update={"template": fam.template.replace('template "trim" ', "")})
    source = fam.reference_path("Qwen3.5-4B").read_text(encoding="utf-8")
    with proof.fixed_date():
        want = proof.render_jinja(source, CASES["unicode_whitespace"], fam)
    [got] = _go(helper, broken, ["unicode_whitespace"])
    assert not proof.same(fam, want, got, CASES["unicode_whitespace"])
