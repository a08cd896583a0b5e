"""Render parity at deploy time: health renders the whole probe suite through the server's
``_debug_render_only`` and compares each prompt with the model's own Jinja chat template.

Against the test server (Go ``text/template`` through the Go helper, Ollama's request handling)
with a tiny metadata-only GGUF: render-only requests never start llama-server.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from deploykit.model.chat_template import ChatSpec, TemplateBoundError
from deploykit.model.probes import CONVERSATIONS, render_probe
from deploykit.ollama import capabilities, families, health
from deploykit.ollama.client import Client
from tests.support.ollama_server import start, stop

GO_FAMILIES = [f.name for f in families.families().values() if f.template]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The test server in this process, with a tiny GGUF uploaded; ``(url, state, digest)``."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    httpd, state, url = start()
    with Client(url) as c:
        digest, _ = c.upload_blob(path)
    yield url, state, digest
    stop(httpd, state)


def create(server, name: str, template: str, **fields) -> None:
    url, _, digest = server
    with Client(url) as c:
        c.create({"model": name, "files": {"m.gguf": digest}, "template": template, **fields})


def spec_of(fam: families.Family, reference: str | None = None) -> ChatSpec:
    """The reference model's chat template, as a reference model folder gives it."""
    path = fam.reference_path(reference or fam.reference_names[0])
    return ChatSpec(
        path.read_text(encoding="utf-8"),
        bos_token=fam.bos_token,
        eos_token=fam.eos_token,
        add_bos=fam.runtime_bos or None,
        source=path.name,
    )


def parity(server, name: str, spec: ChatSpec, timeout: float = 120.0):
    url = server[0]
    with Client(url) as c:
        show = c.show(name)
        return health.render_parity(c, name, spec, show, c.version(), timeout)


def results(checks) -> dict[str, dict]:
    return {r["probe"]: r for r in checks[0].data["probes"]}


@pytest.mark.parametrize("family", GO_FAMILIES)
def test_every_probe_renders_on_the_server_as_the_family_proves(server, family):
    """Each family's TEMPLATE, deployed: every probe the server renders equals the reference
    Jinja (with the proof's allowances); skipped are only what the reference rejects and what
    Ollama refuses for the model."""
    fam = families.get(family)
    name = f"fam-{family}"
    create(server, name, fam.template)
    checks = parity(server, name, spec_of(fam))
    summary, by = checks[0], results(checks)
    with Client(server[0]) as c:
        caps = c.show(name)["capabilities"]
    assert summary.status == "pass", [c.detail for c in checks]
    assert list(by) == list(CONVERSATIONS)  # one result per probe, in order
    skipped = {p for p, r in by.items() if r["result"] == "skipped"}
    assert set(caps) - {"completion"} == capabilities.go_capabilities(fam.template) - {"completion"}
    refused = {p for p, c in CONVERSATIONS.items() if c.get("tools") and "tools" not in caps}
    refused |= {"think_on"} if "thinking" not in caps else set()
    assert skipped == fam.rejects(fam.reference_names[0]) | refused
    assert any(r["result"] == "ok" for r in by.values())
    assert summary.data["family"] == family


def test_a_wrong_template_names_each_failing_probe_with_a_diff(server):
    create(server, "wrong", families.get("llama3").template)
    checks = parity(server, "wrong", spec_of(families.get("qwen2.5")))
    summary, by = checks[0], results(checks)
    assert summary.status == "fail"
    differing = [p for p, r in by.items() if r["result"] == "differs"]
    assert "user" in differing and "tools" in differing
    assert summary.detail.startswith(f"{len(differing)} of {len(CONVERSATIONS)} probes differ")
    per_probe = {c.name: c for c in checks[1:]}
    assert set(per_probe) == {f"render parity: {p}" for p in differing}
    user = per_probe["render parity: user"]
    assert user.status == "fail" and user.detail.startswith("differs at char 2 (line 1): server")
    assert "<|start_header_id|>" in user.detail and "<|im_start|>" in user.detail


def test_the_models_system_and_messages_come_first_as_on_the_server(server):
    """SYSTEM is prepended unless the request starts with a system message; MESSAGE lines
    come before the request's messages (server/routes.go ChatHandler)."""
    fam = families.get("qwen2.5")
    history = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Me."}]
    create(server, "sys", fam.template, system="Answer in one line.", messages=history)
    url = server[0]
    with Client(url) as c:
        plain = c.render({"model": "sys", "messages": [{"role": "user", "content": "x"}]})
        own = c.render(
            {
                "model": "sys",
                "messages": [
                    {"role": "system", "content": "Mine."},
                    {"role": "user", "content": "x"},
                ],
            }
        )
    assert plain.startswith("<|im_start|>system\nAnswer in one line.<|im_end|>\n")
    assert plain.index("Who are you?") < plain.index("<|im_start|>user\nx")
    assert "Answer in one line." not in own  # the request has its own system message
    assert own.index("Me.") < own.index("<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nx")
    checks = parity(server, "sys", spec_of(fam))
    assert checks[0].status == "pass", [c.detail for c in checks]


def test_a_thinking_model_thinks_unless_told_and_others_refuse_think(server):
    """Ollama sets think=true for a thinking model when the request leaves it out, and refuses
    think=true for a model without thinking (400): health skips that probe and says why."""
    qwen3 = families.get("qwen3")
    create(server, "thinker", qwen3.template)
    create(server, "plain", families.get("qwen2.5").template)
    url = server[0]
    msgs = [{"role": "user", "content": "hi"}]
    with Client(url) as c, httpx.Client(base_url=url) as http:
        unset = c.render({"model": "thinker", "messages": msgs})
        on = c.render({"model": "thinker", "messages": msgs, "think": True})
        off = c.render({"model": "thinker", "messages": msgs, "think": False})
        refused = http.post(
            "/api/chat",
            json={"model": "plain", "messages": msgs, "think": True, "_debug_render_only": True},
        )
    assert unset == on != off and off.endswith("<think>\n\n</think>\n\n")
    assert refused.status_code == 400
    assert refused.json() == {"error": '"plain" does not support thinking'}
    by = results(parity(server, "plain", spec_of(families.get("qwen2.5"))))
    assert by["think_on"]["result"] == "skipped"
    assert "no thinking capability" in by["think_on"]["detail"]


def test_server_decodes_chat_requests_as_ollama_does(server):
    """Go's JSON decoding of api.ChatRequest: arguments must be an object, think a bool or a
    level; roles are lower-cased."""
    create(server, "strict", families.get("qwen2.5").template)
    url = server[0]
    call = {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    bad = [
        {"messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": "hi"}], "think": "very"},
    ]
    with httpx.Client(base_url=url) as http:
        for body in bad:
            resp = http.post("/api/chat", json={"model": "strict", **body})
            assert resp.status_code == 400, body
        arguments = http.post("/api/chat", json={"model": "strict", **bad[0]}).json()["error"]
        assert arguments.startswith("json: cannot unmarshal string into Go struct field")
        assert "arguments" in arguments
        loud = http.post(
            "/api/chat",
            json={
                "model": "strict",
                "messages": [{"role": "USER", "content": "hi"}],
                "_debug_render_only": True,
            },
        ).json()["_debug_info"]["rendered_template"]
        empty = http.post("/api/chat", json={"model": "strict", "messages": []}).json()
    assert "<|im_start|>user\nhi<|im_end|>" in loud
    assert empty["done"] is True and empty["done_reason"] == "load"


def test_a_renderer_model_is_refused_by_this_server_and_health_stops_early(server):
    """The test server cannot run Ollama's renderers: it answers as an Ollama without that
    renderer (500 unknown renderer), and health fails after two identical refusals."""
    url, _, digest = server
    with Client(url) as c:  # a RENDERER Modelfile: no TEMPLATE, Ollama renders in code
        c.create(
            {
                "model": "rendered",
                "files": {"m.gguf": digest},
                "renderer": "qwen3-coder",
                "parser": "qwen3-coder",
            }
        )
    with httpx.Client(base_url=url) as http:
        resp = http.post(
            "/api/chat",
            json={
                "model": "rendered",
                "messages": [{"role": "user", "content": "hi"}],
                "_debug_render_only": True,
            },
        )
    assert resp.status_code == 500 and resp.json() == {"error": 'unknown renderer "qwen3-coder"'}
    with Client(url) as c:
        show = c.show("rendered")
        assert show["renderer"] == "qwen3-coder"
        checks = health.render_parity(
            c, "rendered", spec_of(families.get("qwen2.5")), show, c.version()
        )
    by = results(checks)
    refused = [p for p, r in by.items() if 'unknown renderer "qwen3-coder"' in r["detail"]]
    assert checks[0].status == "fail" and len(refused) == 2  # then it stops asking
    after = list(by.values())[list(by).index(refused[-1]) + 1 :]
    assert after and not any(r["result"] == "ok" for r in after)
    assert all(r["detail"].startswith("not tried") for r in after if r["result"] == "error")


@pytest.mark.parametrize("think", [None, False])
def test_a_gemma4_model_renders_every_probe_as_its_family_declares(server, think):
    """Gemma 4's RENDERER through the test server's port of Ollama's renderer: every probe is
    identical to the 31B Jinja template or differs exactly as the family declares; a probe
    without ``think`` is rendered with the renderer's default (thinking off), as the template's."""
    url, _, digest = server
    fam = families.get("gemma4")
    with Client(url) as c:
        c.create(
            {"model": "g4", "files": {"m.gguf": digest}, "renderer": fam.renderer,
             "parser": fam.parser}
        )  # fmt: skip
        show = c.show("g4")
        probes = {
            n: p if think is None or "think" in p else {**p, "think": think}
            for n, p in CONVERSATIONS.items()
        }
        checks = health.render_parity(c, "g4", spec_of(fam), show, c.version(), probes=probes)
    by = results(checks)
    assert checks[0].status == "pass", [ch.detail for ch in checks]
    assert checks[0].data["family"] == "gemma4"
    declared = {p for p, r in by.items() if r["detail"] == "as declared"}
    assert declared == set(fam.known_differences) == {
        "consecutive_roles", "continue", "continue_system"
    }  # fmt: skip
    assert all(r["result"] == "ok" for r in by.values())


def test_a_renderer_that_thinks_by_default_is_compared_with_thinking_on(server, monkeypatch):
    """Renderers' thinking defaults differ between Ollama releases: a probe without ``think``
    passes when the server's render is the Jinja one with thinking on or off, and says which."""
    from tests.support import ollama_renderers

    monkeypatch.setitem(ollama_renderers.THINKING, "default", True)
    url, _, digest = server
    fam = families.get("gemma4")
    with Client(url) as c:
        c.create(
            {"model": "g4t", "files": {"m.gguf": digest}, "renderer": fam.renderer,
             "parser": fam.parser}
        )  # fmt: skip
        # (with thinking on, the renderer opens a thought channel after a final tool response
        # and this template does not: the probes with tools are not rendered that way here)
        plain = {n: p for n, p in CONVERSATIONS.items() if not p.get("tools")}
        show = c.show("g4t")
        checks = health.render_parity(c, "g4t", spec_of(fam), show, c.version(), probes=plain)
    by = results(checks)
    assert checks[0].status == "pass", [ch.detail for ch in checks]
    assert by["user"]["detail"] == "identical (the renderer's default: thinking on)"
    assert by["think_off"]["detail"] == "identical"


def test_a_gemma4_model_without_its_declared_differences_fails(server, monkeypatch):
    url, _, digest = server
    fam = families.get("gemma4").model_copy(update={"known_differences": []})
    monkeypatch.setattr(health, "deployed_family", lambda show, spec: fam)
    with Client(url) as c:
        c.create(
            {"model": "g4b", "files": {"m.gguf": digest}, "renderer": "gemma4-large",
             "parser": "gemma4"}
        )  # fmt: skip
        show = c.show("g4b")
        checks = health.render_parity(c, "g4b", spec_of(fam), show, c.version())
    failing = {ch.name.removeprefix("render parity: ") for ch in checks[1:]}
    assert failing == {"consecutive_roles", "continue", "continue_system"}


def test_render_checks_are_bounded_by_the_timeout(server):
    create(server, "slow", families.get("qwen2.5").template)
    checks = parity(server, "slow", spec_of(families.get("qwen2.5")), timeout=0)
    assert checks[0].status == "fail"  # a probe not compared is not a pass
    by = results(checks)
    assert all(r["result"] == "error" for p, r in by.items() if p != "think_on")
    assert all("not tried" in r["detail"] and "timeout" in r["detail"]
               for p, r in by.items() if p != "think_on")  # fmt: skip


def test_jinja_today_sets_the_date_templates_print(tmp_path):
    fam = families.get("llama3.2")
    source = fam.reference_path(fam.reference_names[0]).read_text()
    probe = CONVERSATIONS["user"]
    with health.jinja_today(dt.date(2024, 2, 29)):
        text = render_probe(source, probe, bos_token=fam.bos_token)
    assert "29 Feb 2024" in text
    assert "29 Feb 2024" not in render_probe(source, probe, bos_token=fam.bos_token)


def test_short_diff_shows_where_and_both_sides():
    got, want = "abc\ndef-server", "abc\ndef-template"
    assert health.short_diff(got, want) == (
        "differs at char 8 (line 2): server 'abc\\ndef-server' vs template 'abc\\ndef-template'"
    )


def test_a_template_bound_is_an_error_not_a_skip(server, monkeypatch):
    create(server, "bound", families.get("qwen2.5").template)
    monkeypatch.setenv("DEPLOYKIT_TEMPLATE_MAX_CHARS", "10")
    with pytest.raises(TemplateBoundError):
        parity(server, "bound", spec_of(families.get("qwen2.5")))


def test_without_listed_capabilities_the_servers_refusals_are_skips(server):
    """An older server's /api/show has no capabilities: the probes are sent, and its 400
    "does not support ..." answers make them skipped (with the server's words), not failures."""
    fam = families.get("chatml")
    create(server, "unlisted", fam.template)
    url = server[0]
    with Client(url) as c:
        show = {k: v for k, v in c.show("unlisted").items() if k != "capabilities"}
        checks = health.render_parity(c, "unlisted", spec_of(fam), show, c.version())
    by = results(checks)
    assert checks[0].status == "pass", [c.detail for c in checks]
    assert by["think_on"]["detail"] == (
        'the server refuses it: render for unlisted: HTTP 400: "unlisted" does not support thinking'
    )
    assert by["tools"]["result"] == "skipped"
    assert by["tools"]["detail"].endswith("unlisted:latest does not support tools")


def test_template_and_stop_checks_understand_a_renderer_model(server):
    """A RENDERER model has no TEMPLATE and may have no stop parameter: its parser ends the
    turn. A TEMPLATE model without stops still fails."""
    from deploykit.core.report import Report

    url, _, digest = server
    with Client(url) as c:
        c.create(
            {
                "model": "r2",
                "files": {"m.gguf": digest},
                "renderer": "qwen3-coder",
                "parser": "qwen3-coder",
            }
        )
        create(server, "nostop", families.get("qwen2.5").template)
        rendered, plain = c.show("r2"), c.show("nostop")
    for show, ok in ((rendered, True), (plain, False)):
        report = Report("health", "x")
        health._show_checks(report, show)
        by = {ch.name: ch for ch in report.checks}
        assert by["template"].ok
        assert by["stop parameters"].ok is ok
    report = Report("health", "x")
    health._show_checks(report, rendered)
    by = {ch.name: ch for ch in report.checks}
    assert by["template"].detail == "Ollama's built-in renderer 'qwen3-coder'"
    assert by["stop parameters"].detail == "none: Ollama's built-in parser 'qwen3-coder' does it"


def test_a_deployed_model_that_lost_the_tools_of_its_template_fails(server):
    """The fine-tune's template handles tools; a TEMPLATE without them (chatml on Qwen2.5)
    makes Ollama refuse tool requests: that is a failure, not a skipped probe."""
    create(server, "lost-tools", families.get("chatml").template)
    checks = parity(server, "lost-tools", spec_of(families.get("qwen2.5")))
    by = results(checks)
    assert checks[0].status == "fail"
    tools = [p for p, c in CONVERSATIONS.items() if c.get("tools")]
    assert all(by[p]["result"] == "differs" for p in tools)
    assert "has tools, the deployed model not" in by[tools[0]]["detail"]


def test_thinking_tags_are_inferred_from_the_template_as_ollama_does():
    """thinking.InferTags through the Go helper: the text around a .Thinking inside the
    range over .Messages; none for a TEMPLATE that never prints it."""
    from deploykit.ollama import gotemplate

    binary = gotemplate.build()
    for name in ("qwen3", "qwen3.5"):
        assert gotemplate.think_tags(binary, families.get(name).template) == ("<think>", "</think>")
    for name in ("qwen2.5", "llama3.2"):
        assert gotemplate.think_tags(binary, families.get(name).template) == ("", "")


@pytest.mark.parametrize(
    ("pieces", "want"),
    [
        (["<think>", "\n</think>\n\nanswer"], ("", "answer")),  # the prompt opened the block
        (["  <think> plan </think>\n done"], ("plan ", "done")),
        (["no tags at all"], ("", "no tags at all")),
        (["<think>a</th", "ink>b"], ("a", "b")),  # a closing tag split across chunks
    ],
)
def test_the_test_servers_thinking_parser_splits_as_ollamas(pieces, want):
    from tests.support.ollama_renderers import ThinkingParser

    parser = ThinkingParser("<think>", "</think>")
    got = [parser.add(p) for p in pieces]
    assert ("".join(t for t, _ in got), "".join(c for _, c in got)) == want


def test_a_probe_answer_may_come_back_split_by_the_thinking_parser():
    """Qwen3.5's demo answers after an empty reasoning block: Ollama returns only the content."""
    assert health.replies("\n</think>\n\nIt is 4.") == [
        ("", "\n</think>\n\nIt is 4."),
        ("", "It is 4."),
    ]
    assert health.replies("<think>\nsum\n</think>\n\n4") == [
        ("", "<think>\nsum\n</think>\n\n4"),
        ("sum", "4"),
    ]
    assert health.replies("plain") == [("", "plain")]
