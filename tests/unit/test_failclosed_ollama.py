"""Fail-closed corpus for the Ollama layer: Modelfile text that Ollama's parser would read
differently, credentials in server addresses, malformed server answers. Each case is one
`error:` line of its class with a hint, no traceback, and nothing outside deploykit's own
outputs created, changed or deleted; then property tests of the Modelfile parser, the NDJSON
stream reader and the host parser.

In-process (``invoke``, the library) against a loopback server that answers what each case
scripts; HOME, the caches and the working directory all live in the snapshotted temp tree.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploykit.core.errors import InputError, OllamaError
from deploykit.ollama import client as ollama_client
from deploykit.ollama import modelfile
from deploykit.ollama.client import Client
from deploykit.ollama.names import resolve_host
from deploykit.ollama.text import LINE_BREAK, kept
from tests.support import corpus
from tests.support.cli import invoke, one_error_line

PASSWORD = "s3cret-Pw0rd"
INJECTION = 'ok."""\rADAPTER ../evil.gguf\rPARAMETER temperature 2\r#'
#: The characters the issue names: Ollama's parser drops them (Go's strconv.IsPrint is false).
DROPPED = {"NBSP": "\u00a0", "ZWSP": "\u200b", "ZWJ": "\u200d", "ESC": "\x1b", "NUL": "\x00"}
GOOD_TEMPLATE = "{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>"


# --- a loopback server that answers what a case scripts ------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes | str | dict | list = b""
    ctype: str = "application/json"


@dataclass
class Script:
    """``(METHOD, path prefix) -> Answer``; requests are recorded; ``auth`` is required when set."""

    routes: dict[tuple[str, str], Answer] = field(default_factory=dict)
    auth: str | None = None
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        auth = self.headers.get("Authorization")
        self.script.seen.append((self.command, self.path, auth))
        answer = next(
            (
                a
                for (m, p), a in self.script.routes.items()
                if m == self.command and self.path.startswith(p)
            ),
            Answer(404, {"error": "not scripted"}),
        )
        if self.script.auth is not None and auth != self.script.auth:
            answer = Answer(401, {"error": "unauthorized"})
        body = answer.body
        if isinstance(body, dict | list):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer


@pytest.fixture(scope="module")
def server():
    """``(script, url)``: set ``script.routes`` (and ``auth``) before each request."""
    script = Script()
    handler = type("Scripted", (_Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield script, f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def ndjson(*lines: dict | str) -> Answer:
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    return Answer(200, text, "application/x-ndjson")


VERSION = {("GET", "/api/version"): Answer(200, {"version": "0.33.0"})}
BLOB = {("HEAD", "/api/blobs/"): Answer(200)}
SHOW = {
    ("GET", "/api/tags"): Answer(200, {"models": [{"name": "m:latest"}]}),
    ("POST", "/api/show"): Answer(
        200, {"template": GOOD_TEMPLATE, "parameters": 'stop                           "</s>"'}
    ),
}
CHAT = {("POST", "/api/chat"): ndjson({"message": {"content": "hi"}, "done": True})}


# --- the inputs the cases read ----------------------------------------------------------------


def _inputs(root: Path) -> None:
    """``root/in``: a GGUF, license and template files, Modelfiles (all must stay unchanged)."""
    inputs = root / "in"
    inputs.mkdir(exist_ok=True)
    (inputs / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (inputs / "LICENSE.injected").write_text(f"MIT\n{INJECTION}\n", newline="")
    (inputs / "LICENSE.zwsp").write_text("MIT\u200b licence\n")
    (inputs / "t.gotmpl").write_text(GOOD_TEMPLATE.replace("<assistant>", "<assist\u200dant>"))
    modelfiles = {
        "latest": "FROM ./model.gguf\nREQUIRES latest\n",
        "unterminated": 'FROM ./model.gguf\nPARAMETER stop """""\n',
        "plain": "FROM ./model.gguf\n",
    }
    for name, text in modelfiles.items():
        (inputs / f"Modelfile.{name}").write_text(text)
    (inputs / "Modelfile.latin1").write_bytes(
        "FROM ./model.gguf\nSYSTEM caf\xe9\n".encode("latin-1")
    )


@pytest.fixture(scope="module")
def base(demo_dirs) -> Path:
    return demo_dirs["qwen2"] / "base"


@pytest.fixture
def sandbox(tmp_path, monkeypatch, base):
    """For the tests outside the table: the inputs, HOME and caches in ``tmp_path``."""
    _inputs(tmp_path)
    (tmp_path / corpus.CWD).mkdir()
    monkeypatch.chdir(tmp_path / corpus.CWD)
    env = {
        "HOME": str(tmp_path / corpus.HOME),
        "DEPLOYKIT_CACHE": str(tmp_path / corpus.CACHE),
        "OLLAMA_HOST": "127.0.0.1:9",
    }
    return {"root": tmp_path, "in": tmp_path / "in", "env": env, "base": base}


# --- the corpus -------------------------------------------------------------------------------


@dataclass
class Row:
    """A corpus row whose arguments need the temp tree and whose server answers ``routes``."""

    name: str
    args: Callable[[dict], list[str]]
    code: int
    match: str
    routes: dict = field(default_factory=dict)
    host: str | None = None  # OLLAMA_HOST; {url} is the scripted server's address
    out: str = ""  # also on stdout (a report's failed check)
    auth: bool = False  # the server wants user:PASSWORD


def modelfile_cmd(*extra: str) -> Callable[[dict], list[str]]:
    def args(t: dict) -> list[str]:
        base = ["modelfile", "--gguf", str(t["in"] / "model.gguf"), "--model-dir", str(t["base"])]
        return [
            *base,
            "--out",
            "Modelfile",
            *[a.format(**{k: str(v) for k, v in t.items()}) for a in extra],
        ]

    return args


def create_cmd(which: str = "plain") -> Callable[[dict], list[str]]:
    return lambda t: ["create", "m", "-f", str(t["in"] / f"Modelfile.{which}")]


CASES = [
    # 1. Modelfile text: Ollama's line rules (\r ends a line) and the characters it drops
    Row("system with a \\r injection", modelfile_cmd("--system", INJECTION), 3, 'ends with """'),
    *[
        Row(f"system with {label}", modelfile_cmd("--system", f"Be{ch}nice."), 3, "drops")
        for label, ch in DROPPED.items()
    ],
    Row(
        "license file with a \\r injection (universal newlines)",
        modelfile_cmd("--license", "{in}/LICENSE.injected"),
        3,
        'ends with """',
    ),
    Row("license with a ZWSP", modelfile_cmd("--license", "{in}/LICENSE.zwsp"), 3, "U+200B"),
    Row(
        "template file with a ZWJ",
        modelfile_cmd("--template-file", "{in}/t.gotmpl"),
        3,
        "U+200D (ZERO WIDTH JOINER)",
    ),
    Row("stop string with ESC", modelfile_cmd("--param", "stop=\x1b[0m"), 3, "U+001B"),
    # 2. what Ollama's parser cannot read back
    Row(
        'stop=""" (was "unexpected EOF")',
        modelfile_cmd("--param", 'stop="""'),
        3,
        "cannot be written",
    ),
    Row("REQUIRES latest", create_cmd("latest"), 3, "not a semantic version"),
    Row("unterminated value", create_cmd("unterminated"), 3, "unexpected EOF"),
    Row("Modelfile not UTF-8", create_cmd("latin1"), 3, "not UTF-8"),
    # 3. credentials in the host: parsed, never shown
    Row(
        "unreachable host with a password",
        create_cmd(),
        8,
        "user:***@127.0.0.1:9",
        host=f"http://user:{PASSWORD}@127.0.0.1:9",
    ),
    Row(
        "wrong password",
        create_cmd(),
        8,
        "HTTP 401",
        routes=VERSION,
        host="http://user:wrong@{url}",
        auth=True,
    ),
    Row(
        "host no client can use",
        create_cmd(),
        3,
        "invalid Ollama host",
        host=f"http://user:{PASSWORD}@h:1/\x01",
    ),
    # 4. malformed answers are Ollama errors, never "internal error"
    Row(
        "version not JSON",
        lambda t: ["health", "m"],
        8,
        "is not JSON",
        {("GET", "/api/version"): Answer(200, "<html>", "text/html")},
    ),
    Row(
        "version a JSON list",
        lambda t: ["health", "m"],
        8,
        "not an object",
        {("GET", "/api/version"): Answer(200, [1])},
    ),
    Row(
        "version not a string",
        lambda t: ["health", "m"],
        8,
        "'version' is not a string",
        {("GET", "/api/version"): Answer(200, {"version": [0, 33]})},
    ),
    Row(
        "tags not a list",
        lambda t: ["health", "m"],
        8,
        "'models' is not a list",
        {**VERSION, ("GET", "/api/tags"): Answer(200, {"models": "m"})},
    ),
    Row(
        "show a list",  # a failed check of the health report: exit 9, the reason on stdout
        lambda t: ["health", "m"],
        9,
        "failed 1 check(s): show",
        {**VERSION, **SHOW, ("POST", "/api/show"): Answer(200, ["m"])},
        out="not an object",
    ),
    Row(
        "show template not a string",
        lambda t: ["health", "m"],
        9,
        "failed 1 check(s): show",
        {**VERSION, **SHOW, ("POST", "/api/show"): Answer(200, {"template": 1})},
        out="'template' is not a string",
    ),
    Row(
        "error body a list",
        create_cmd(),
        8,
        "HTTP 400",
        {**VERSION, **BLOB, ("POST", "/api/create"): Answer(400, ["bad", "request"])},
    ),
    Row(
        "error body HTML over lines",
        create_cmd(),
        8,
        "HTTP 502: <html> <body>bad gateway",
        {
            **VERSION,
            **BLOB,
            ("POST", "/api/create"): Answer(502, "<html>\n<body>bad gateway\n</body>", "text/html"),
        },
    ),
    Row(
        "stream line not JSON",
        create_cmd(),
        8,
        "streamed line is not JSON",
        {**VERSION, **BLOB, ("POST", "/api/create"): ndjson({"status": "parsing GGUF"}, "{oops")},
    ),
    Row(
        "stream line a list",
        create_cmd(),
        8,
        "not an object",
        {**VERSION, **BLOB, ("POST", "/api/create"): ndjson({"status": "parsing GGUF"}, "[1, 2]")},
    ),
    Row(
        "stream nested too deep",
        lambda t: ["run", "m", "hi"],
        8,
        "not JSON",
        {("POST", "/api/chat"): ndjson("[" * 100_000)},
    ),
    Row(
        "chat message a string",
        lambda t: ["run", "m", "hi"],
        8,
        "'message' is not an object",
        {("POST", "/api/chat"): ndjson({"message": "hi"})},
    ),
    Row(
        "chat content a number",
        lambda t: ["run", "m", "hi"],
        8,
        "'content' is not a string",
        {("POST", "/api/chat"): ndjson({"message": {"content": 1}})},
    ),
    Row(
        "chat tool_calls not a list",
        lambda t: ["run", "m", "hi"],
        8,
        "'tool_calls' is not a list",
        {("POST", "/api/chat"): ndjson({"message": {"tool_calls": "f"}})},
    ),
    Row(
        "stream error an object",
        lambda t: ["run", "m", "hi"],
        8,
        "{'deep': [1]}",
        {("POST", "/api/chat"): ndjson({"error": {"deep": [1]}})},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_and_faults_fail_closed(case, tmp_path, server, base):
    script, url = server
    script.routes, script.seen[:] = case.routes, []
    script.auth = basic("user", PASSWORD) if case.auth else None
    host = (case.host or (url if case.routes else "127.0.0.1:9")).replace("{url}", url)
    args = case.args({"in": tmp_path / "in", "base": base})
    row = corpus.Case(case.name, args, case.code, case.match, _inputs, {"OLLAMA_HOST": host})
    r = corpus.run(row, tmp_path)
    assert case.out in r.stdout, r.stdout
    assert PASSWORD not in r.stdout + r.stderr


def test_the_injection_is_refused_before_anything_is_written(sandbox):
    """The issue's case: refused by `render` and by `modelfile`, nothing written."""
    tree = sandbox
    from deploykit.ollama.render import render

    with pytest.raises(InputError, match='ends with """'):
        render(tree["in"] / "model.gguf", model_dir=tree["base"], system=INJECTION)
    r = invoke(*modelfile_cmd("--system", INJECTION, "--force")(tree), env=tree["env"])
    assert "carriage return ends a line" in one_error_line(r, 3)
    assert not (tree["root"] / "cwd" / "Modelfile").exists()


# --- credentials: used as httpx uses them, shown redacted -------------------------------------


def test_credentials_in_the_host_authenticate_and_are_redacted(sandbox, server):
    """Bug: OLLAMA_HOST=http://user:pass@host:port crashed create/health/doctor (InvalidURL)."""
    script, url = server
    script.routes = {
        **VERSION,
        **BLOB,
        **SHOW,
        **CHAT,
        ("POST", "/api/create"): ndjson({"status": "parsing GGUF"}, {"status": "success"}),
    }
    script.auth, script.seen[:] = basic("user", "p@ss:" + PASSWORD), []
    tree = sandbox
    env = {**tree["env"], "OLLAMA_HOST": f"http://user:p%40ss%3A{PASSWORD}@{url}"}
    shown = f"http://user:***@{url}"
    created = invoke("create", "m", "-f", str(tree["in"] / "Modelfile.plain"), "--json", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["host"] == shown
    health = invoke("health", "m", "--json", env=env)
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["host"] == shown
    doctor = invoke("doctor", "--json", env=env)  # its toolchain checks fail here: not ours
    [check] = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "ollama"]
    assert (check["status"], check["data"]["path"]) == ("pass", shown)
    for r in (created, health, doctor):
        assert PASSWORD not in r.stdout + r.stderr
    assert script.seen and all(auth == script.auth for _, _, auth in script.seen)


# --- property tests ---------------------------------------------------------------------------

#: Every character Ollama's parser drops that the properties use.
DROPS = [*DROPPED.values(), "\u2028", "\u00ad", "\ufeff"]
#: Pieces hostile Modelfile text is made of: quotes, both line breaks, instructions, comments,
#: characters Ollama drops, and ordinary text.
PIECES = [
    *'aZ \t\r\n"#é🙂',
    *["\r\n", '"""', "{{ .Prompt }}", "FROM ./m.gguf", "SYSTEM ", "ADAPTER x", "PARAMETER "],
    *["stop", "temperature 2", "MESSAGE user ", "REQUIRES 0.14.0", "LICENSE ", "\ufeff"],
    *DROPPED.values(),
]
hostile = st.lists(st.sampled_from(PIECES), max_size=24).map("".join)
#: Modelfiles that mostly parse: instructions with hostile values, any line breaks, and the
#: characters Ollama drops sprinkled anywhere.
instruction = st.one_of(
    st.builds("SYSTEM {}".format, hostile),
    st.builds('TEMPLATE """{}"""'.format, hostile),
    st.builds('PARAMETER stop "{}"'.format, hostile),
    st.builds("MESSAGE user {}".format, hostile),
    st.builds("# {}".format, hostile),
    st.sampled_from(["FROM ./other.gguf", "PARAMETER temperature 0.5", "LICENSE MIT", ""]),
)


@st.composite
def modelfiles(draw) -> str:
    lines = ["FROM ./m.gguf", *draw(st.lists(instruction, max_size=5))]
    breaks = draw(st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=len(lines)))
    text = "".join(line + end for line, end in zip(lines, breaks, strict=False))
    for at, ch in draw(st.lists(st.tuples(st.integers(0), st.sampled_from(DROPS)))):
        at %= len(text) + 1
        text = text[:at] + ch + text[at:]
    return text


anything = st.one_of(modelfiles(), hostile, st.text(max_size=60))
PROPERTY = settings(max_examples=300, deadline=None)


def _rule_broken(text: str) -> bool:
    """Ollama's rules refuse ``text`` inside a \"\"\" value: a dropped character, or a line
    (``\\r`` ends one too) that ends with \"\"\"."""
    return not all(kept(ch) for ch in text) or any(
        line.rstrip(" \t").endswith('"""') for line in LINE_BREAK.split(text)
    )


def _stop_broken(stop: str) -> bool:
    return (
        not stop
        or "\r" in stop
        or "\n" in stop
        or not all(kept(ch) for ch in stop)
        or f'"{stop}"'.startswith('"""')
    )


@PROPERTY
@given(system=anything, license=anything, stop=anything)
def test_format_then_parse_gives_back_exactly_what_was_accepted(system, license, stop):
    kwargs = {"system": system, "licenses": [license], "parameters": [("stop", stop)]}
    try:
        text = modelfile.format(from_path="./m.gguf", template="{{ .Prompt }}", **kwargs)
    except InputError:
        assert _rule_broken(system) or _rule_broken(license) or _stop_broken(stop)
        return
    assert not (_rule_broken(system) or _rule_broken(license) or _stop_broken(stop))
    req = modelfile.create_request(modelfile.parse(text))
    assert (req["system"], req["license"], req["parameters"]) == (
        system,
        [license],
        {"stop": [stop]},
    )


def _outcome(text: str):
    try:
        return modelfile.parse(text)
    except modelfile.ModelfileParseError:
        return "refused"


@PROPERTY
@given(text=anything)
def test_any_text_parses_or_is_refused_as_a_modelfile_error(text):
    result = _outcome(text)
    if result != "refused":
        with contextlib.suppress(InputError):  # a PARAMETER value Ollama cannot type
            modelfile.create_request(result)


@PROPERTY
@given(text=anything)
def test_a_carriage_return_ends_a_line_as_a_newline_does(text):
    """Ollama's isNewline is \\r or \\n: swapping one for the other changes only the values'
    own line breaks."""
    got, swapped = _outcome(text), _outcome(text.replace("\n", "\r"))
    if got == "refused":
        assert swapped == "refused"
    else:
        assert swapped == [(c, v.replace("\n", "\r")) for c, v in got]


@PROPERTY
@given(text=anything)
def test_characters_ollama_drops_change_nothing_that_parses(text):
    """Where a Modelfile parses, removing every character Ollama's parser drops gives the same
    commands: they are dropped, never kept and never a line break."""
    got = _outcome(text)
    if got != "refused":
        assert _outcome("".join(ch for ch in text if kept(ch))) == got


@PROPERTY
@given(
    line=st.one_of(
        st.text(max_size=80), st.sampled_from(["[" * 5000, '{"error": 1}', "null", "{}", " "])
    )
)
def test_any_stream_line_is_a_record_or_an_ollama_error(line):
    try:
        record = ollama_client.parse_line(line, "chat")
    except OllamaError as exc:
        assert exc.hint and "\n" not in exc.line()
        return
    assert record is None or isinstance(record, dict)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(st.binary(max_size=200), hostile.map(str.encode)))
def test_any_chat_stream_is_an_answer_or_an_ollama_error(server, body):
    """Arbitrary bytes as an /api/chat stream, through httpx and the client."""
    script, url = server
    script.routes, script.auth = (
        {("POST", "/api/chat"): Answer(200, body, "application/x-ndjson")},
        None,
    )
    with Client(url, timeout=10) as client:
        try:
            final = client.chat({"model": "m", "messages": []})
        except OllamaError as exc:
            assert exc.hint
            return
    assert isinstance(final["message"]["content"], str)


#: Text without the characters that end a URL's authority (there a password is no password).
authority_text = st.text(alphabet=st.characters(exclude_characters="/?#@"), max_size=12)


@PROPERTY
@given(value=st.text(max_size=40))
def test_any_host_is_an_address_or_bad_input(value):
    try:
        host = resolve_host(value)
    except InputError as exc:
        assert exc.hint and "\n" not in exc.line()
        return
    assert host.startswith(host.url.partition("://")[0] + "://")


@PROPERTY
@given(
    scheme=st.sampled_from(["", "http://", "https://"]),
    user=authority_text,
    host=authority_text,
    rest=st.sampled_from(["", ":8080", "/ollama", ":1/x"]),
)
def test_a_password_in_the_host_is_never_shown(scheme, user, host, rest):
    value = f"{scheme}{user}:{PASSWORD}@{host}{rest}"
    try:
        shown = resolve_host(value)
    except InputError as exc:
        assert PASSWORD not in exc.line()
        return
    assert PASSWORD not in shown and PASSWORD not in json.dumps({"host": shown})
    if shown.auth is not None:  # the password is what httpx would send
        assert PASSWORD in shown.auth[1] and PASSWORD not in shown.url
