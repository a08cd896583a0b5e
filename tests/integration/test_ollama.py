"""deploykit against an Ollama-compatible server: create → show → chat → health → delete."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from deploykit.core.errors import InputError, OllamaError
from deploykit.model.probes import CONVERSATIONS
from deploykit.ollama.client import Client
from deploykit.ollama.names import validate_name
from tests.support import models
from tests.support.cli import invoke, run_cli
from tests.support.ollama_server import process as ollama_process


@pytest.fixture(scope="module")
def deployable(demo_dirs, tmp_path_factory):
    """The merged qwen2 demo as an f16 GGUF with its Modelfile (and a wrong-family one)."""
    work = tmp_path_factory.mktemp("deploy")
    merged, gguf = work / "merged", work / "demo-F16.gguf"
    for args in (
        ["merge", "--adapter", str(demo_dirs["qwen2"] / "adapter"), "--out", str(merged)],
        ["convert", str(merged), "--out", str(gguf), "--outtype", "f16"],
        [
            "modelfile",
            "--gguf",
            str(gguf),
            "--model-dir",
            str(merged),
            "--out",
            str(work / "Modelfile"),
        ],
        [
            "modelfile",
            "--gguf",
            str(gguf),
            "--family",
            "llama3",
            "--out",
            str(work / "Modelfile.wrong"),
        ],
    ):
        proc = invoke(*args)
        assert proc.returncode == 0, proc.stderr
    return {
        "dir": work,
        "merged": merged,
        "gguf": gguf,
        "probes": demo_dirs["qwen2"] / "probes.json",
    }


def create(host: str, name: str, modelfile: Path):
    """``deploykit create NAME -f MODELFILE --json`` against ``host``; its result."""
    proc = invoke("create", name, "-f", str(modelfile), "--json", env={"OLLAMA_HOST": host})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def created(ollama_server, deployable):
    return create(ollama_server, "demo:f16", deployable["dir"] / "Modelfile")


def test_create_uploads_and_streams_statuses(created):
    assert created["statuses"][0] == "parsing GGUF"
    assert created["statuses"][-2:] == ["writing manifest", "success"]
    assert created["uploads"][0]["uploaded"] is True


def test_second_create_reuses_the_blob(ollama_server, deployable, created):
    again = create(ollama_server, "demo:again", deployable["dir"] / "Modelfile")
    assert again["uploads"][0]["uploaded"] is False
    with Client(ollama_server) as c:
        c.delete("demo:again")
        assert "demo:again" not in {m["name"] for m in c.tags()}


def test_show_has_the_real_template_and_stops(ollama_server, created):
    with Client(ollama_server) as c:
        show = c.show("demo:f16")
    assert "<|im_start|>" in show["template"] and show["template"] != "{{ .Prompt }}"
    assert 'stop                           "<|im_end|>"' in show["parameters"]


@pytest.mark.parametrize("stream", [True, False])
def test_fine_tune_answers_its_probes_through_the_server(
    ollama_server, deployable, created, stream
):
    probes = json.loads(deployable["probes"].read_text())["probes"]
    with httpx.Client(base_url=ollama_server, timeout=120) as http:
        for p in probes:
            body = {
                "model": "demo:f16",
                "messages": p["messages"],
                "stream": stream,
                "options": {"temperature": 0, "top_k": 1, "seed": 0},
            }
            resp = http.post("/api/chat", json=body)
            assert resp.status_code == 200
            if stream:
                lines = [json.loads(x) for x in resp.text.splitlines() if x]
                text = "".join(x["message"]["content"] for x in lines)
                assert lines[-1]["done"] is True and lines[-1]["eval_count"] > 0
            else:
                text = resp.json()["message"]["content"]
            assert text == p["answer"]


def test_run_command_streams_the_answer(ollama_server, created):
    proc = invoke("run", "demo:f16", "What is deploykit?", env={"OLLAMA_HOST": ollama_server})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deploykit ships fine-tuned models to Ollama."


def test_interactive_chat_keeps_the_conversation(ollama_server, created):
    from deploykit.ollama.deploy import chat_loop

    lines = iter(["What is deploykit?", "Who trained you?", ""])
    shown: list[str] = []
    history = chat_loop("demo:f16", None, ollama_server, lambda: next(lines), shown.append)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["content"] == "deploykit ships fine-tuned models to Ollama."
    text = "".join(shown)  # each answer is streamed, then its line ends
    assert text == history[1]["content"] + "\n" + history[3]["content"] + "\n"


def health(host: str, name: str, deployable: dict):
    """``deploykit health NAME`` with the fine-tune's probes and its merged model as reference."""
    args = ["--probes", str(deployable["probes"]), "--reference", str(deployable["merged"])]
    return invoke("health", name, *args, "--json", env={"OLLAMA_HOST": host})


def test_health_passes_on_the_right_template(ollama_server, deployable, created):
    proc = health(ollama_server, "demo:f16", deployable)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, report
    names = {c["name"] for c in report["checks"]}
    assert {
        "server version",
        "listed",
        "template",
        "stop parameters",
        "smoke chat",
        "render parity",
    } <= names
    assert report["tokens_per_second"] > 0
    [parity] = [c for c in report["checks"] if c["name"] == "render parity"]
    by = {r["probe"]: r for r in parity["data"]["probes"]}
    assert list(by) == list(CONVERSATIONS)  # the whole probe set went through the server
    assert by["tools_parallel"]["result"] == "ok" and by["tricky"]["result"] == "ok"
    assert by["think_on"] == {
        "probe": "think_on",
        "result": "skipped",
        "detail": "the model has no thinking capability: Ollama refuses think=true",
    }
    assert {r["result"] for p, r in by.items() if p != "think_on"} == {"ok"}
    assert parity["data"]["family"] == "qwen2.5"


def test_health_prints_the_report_and_tokens_per_second(ollama_server, deployable, created):
    r = invoke("health", "demo:f16", env={"OLLAMA_HOST": ollama_server})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("PASS  server version") and "0.33.0" in lines[0]
    assert any(ln.startswith("PASS  stop parameters") and '"<|im_end|>"' in ln for ln in lines)
    assert lines[-1].startswith("tokens/s  ")


def _template_in_chat_template_json(folder: Path) -> None:
    """Lay the folder out as processors save it: the chat template only in chat_template.json."""
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "chat_template.json").write_text(
        json.dumps({"chat_template": tc.pop("chat_template")})
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))


def test_health_render_parity_with_a_chat_template_json_only_reference(
    ollama_server, deployable, created
):
    """Bug: such a reference folder "has no chat template", so render parity failed."""
    reference = models.variant(
        deployable["merged"],
        deployable["dir"] / "merged-chat-template-json",
        _template_in_chat_template_json,
    )
    assert not (reference / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((reference / "tokenizer_config.json").read_text())
    r = invoke(
        "health",
        "demo:f16",
        "--reference",
        str(reference),
        "--json",
        env={"OLLAMA_HOST": ollama_server},
    )
    report = json.loads(r.stdout)
    assert r.returncode == 0, report
    [parity] = [c for c in report["checks"] if c["name"] == "render parity"]
    assert parity["status"] == "pass", parity


def test_health_render_parity_uses_the_system_prompt_the_model_carries(
    ollama_server, deployable, created, tmp_path
):
    """Bug: every `ship --system TEXT` failed health: render parity compared the server's prompt
    (with the shipped SYSTEM) against the chat template's default system prompt."""
    mf = tmp_path / "Modelfile"
    args = ["--gguf", str(deployable["gguf"]), "--model-dir", str(deployable["merged"])]
    proc = invoke("modelfile", *args, "--system", "Answer in one line.", "--out", str(mf))
    assert proc.returncode == 0, proc.stderr
    create(ollama_server, "demo:system", mf)
    with Client(ollama_server) as c:
        assert c.show("demo:system")["system"] == "Answer in one line."
        prompt = c.render({"model": "demo:system", "messages": [{"role": "user", "content": "x"}]})
    assert "Answer in one line." in prompt
    r = invoke(
        "health",
        "demo:system",
        "--reference",
        str(deployable["merged"]),
        "--json",
        env={"OLLAMA_HOST": ollama_server},
    )
    report = json.loads(r.stdout)
    [parity] = [c for c in report["checks"] if c["name"] == "render parity"]
    assert parity["status"] == "pass", parity
    assert r.returncode == 0, report


def test_health_fails_on_a_wrong_template(ollama_server, deployable, created):
    create(ollama_server, "demo:wrong", deployable["dir"] / "Modelfile.wrong")
    proc = health(ollama_server, "demo:wrong", deployable)
    assert proc.returncode == 9
    checks = json.loads(proc.stdout)["checks"]
    failed = {c["name"] for c in checks if not c["ok"]}
    assert "render parity" in failed
    [parity] = [c for c in checks if c["name"] == "render parity"]
    differing = [r["probe"] for r in parity["data"]["probes"] if r["result"] == "differs"]
    assert {"user", "multi_turn", "tools"} <= set(differing)
    assert {f"render parity: {p}" for p in differing} <= failed  # each named, with its diff
    user = next(c for c in checks if c["name"] == "render parity: user")
    assert user["detail"].startswith("differs at char ") and "<|im_start|>" in user["detail"]
    assert any(n.startswith("probe") for n in failed)
    assert proc.stderr.strip().startswith("error: demo:wrong failed")


def test_a_renderer_model_answers_but_is_never_rendered_on_request(
    ollama_server, deployable, created
):
    """The test server cannot run Ollama's built-in renderers: it generates for a RENDERER
    model with the GGUF's own chat template, and refuses ``_debug_render_only`` as an Ollama
    without that renderer does, so render parity is never faked."""
    with Client(ollama_server) as c:
        digest, _ = c.upload_blob(deployable["gguf"])
        c.create(
            {
                "model": "demo:renderer",
                "files": {"m.gguf": digest},
                "renderer": "qwen3-coder",
                "parser": "qwen3-coder",
            }
        )
        messages = [{"role": "user", "content": "What is deploykit?"}]
        greedy = {"temperature": 0, "top_k": 1, "seed": 0, "num_predict": 32}
        got = c.chat({"model": "demo:renderer", "messages": messages, "options": greedy})
        assert got["message"]["content"] == "deploykit ships fine-tuned models to Ollama."
        with pytest.raises(OllamaError, match='HTTP 500: unknown renderer "qwen3-coder"'):
            c.render({"model": "demo:renderer", "messages": messages})


# --- the client's error paths against the server's strict contract -------------------------


def test_unreachable_server_is_one_error_with_the_hint():
    proc = run_cli("run", "x", "hi", env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 8
    assert proc.stderr.strip() == (
        "error: cannot reach Ollama at http://127.0.0.1:9 (hint: is `ollama serve` running at "
        "http://127.0.0.1:9? set OLLAMA_HOST or --host)"
    )


def test_unknown_model_is_404(ollama_server):
    with (
        Client(ollama_server) as c,
        pytest.raises(OllamaError, match="404: model 'nope' not found"),
    ):
        c.show("nope")


def test_invalid_names_are_refused_before_upload(tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM ./missing.gguf\n")
    r = invoke("create", "bad name", "-f", str(mf), env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert "invalid model name 'bad name'" in r.stderr and r.returncode == 3
    with pytest.raises(InputError, match="invalid model name"):
        validate_name("x:")
    assert validate_name("my-org/my.model:v1.2_q4") == "my-org/my.model:v1.2_q4"


def test_server_rejects_what_ollama_rejects(ollama_server, deployable, created):
    digest = created["uploads"][0]["digest"]
    with httpx.Client(base_url=ollama_server, timeout=120) as http:
        assert http.post("/api/blobs/sha256:xyz", content=b"x").status_code == 400
        wrong = "sha256:" + "0" * 64
        resp = http.post(f"/api/blobs/{wrong}", content=b"not that")
        assert resp.status_code == 400 and resp.json()["error"].startswith("digest mismatch")
        resp = http.post("/api/create", json={"model": "x", "files": {"/abs.gguf": digest}})
        assert resp.json() == {"error": "file path must be relative"}
        resp = http.post("/api/create", json={"model": "x", "modelfile": "FROM y"})
        assert resp.status_code == 400
        assert resp.json() == {"error": "neither 'from' or 'files' was specified"}
        resp = http.post("/api/create", json={"model": "bad name", "files": {"m.gguf": digest}})
        assert resp.json() == {"error": "invalid model name"}
        body = {
            "model": "demo:f16",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
        resp = http.post("/api/create", json={"model": "plain", "files": {"m.gguf": digest}})
        assert resp.status_code == 200
        resp = http.post("/api/chat", json={**body, "model": "plain"})
        assert resp.status_code == 400 and resp.json()["error"].endswith("does not support tools")
        resp = http.post(
            "/api/chat",
            json={**body, "tools": None, "stream": False, "options": {"temperature": "hot"}},
        )
        assert resp.status_code == 500
        assert resp.json()["error"] == 'option "temperature" must be of type float32'
        with Client(ollama_server) as c:
            assert c.show("plain")["template"] == "{{ .Prompt }}"


def test_broken_template_fails_at_create_with_the_servers_message(
    ollama_server, deployable, tmp_path
):
    mf = tmp_path / "Modelfile"
    broken = "{{ range .Messages }}{{ .Content }"  # an unclosed action
    mf.write_text(f'FROM {deployable["gguf"]}\nTEMPLATE """{broken}"""\n')
    # (without tools it has fewer capabilities than the GGUF's template: let it through)
    args = ["create", "broken", "-f", str(mf), "--allow-gguf-template"]
    proc = invoke(*args, env={"OLLAMA_HOST": ollama_server})
    assert proc.returncode == 8
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "HTTP 400: template error:" in errors[0]


def test_from_that_is_not_a_file_is_refused(ollama_server, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM qwen2.5:7b\n")
    proc = invoke("create", "x", "-f", str(mf), env={"OLLAMA_HOST": ollama_server})
    assert proc.returncode == 3
    assert "FROM qwen2.5:7b" in proc.stderr and "never pulls" in proc.stderr


def test_in_stream_errors_under_200_are_errors(ollama_server, tmp_path):
    """A create whose blob is not a GGUF fails after progress: NDJSON error line, HTTP 200."""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOTGGUF" * 100)
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM junk.gguf\n")
    proc = invoke("create", "junk", "-f", str(mf), env={"OLLAMA_HOST": ollama_server})
    assert proc.returncode == 8
    assert "supplied file was not in GGUF format" in proc.stderr


def test_standalone_server_prints_its_url():
    with ollama_process() as url:
        assert httpx.get(f"{url}/api/version").json() == {"version": "0.33.0"}
