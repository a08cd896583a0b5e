"""Fail-closed corpus for the hub layer: hostile listing names, credentials in endpoints and
malformed hub answers, each one `error:` line of the download class (exit 4) with a hint, no
traceback, and nothing outside deploykit's own outputs created, changed or deleted.

In-process (``invoke`` and the backends) against the loopback fake hub; HOME, the caches and
the working directory all live in the snapshotted temp tree.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploykit.core.errors import DownloadError
from deploykit.core.fsutil import sha256_file
from deploykit.hub.backend import backend, checked_name, join, redact, redacted_logs
from tests.support.cli import invoke, one_error_line, run_cli
from tests.support.fakehub import FakeHub, Repo, client_env, in_process

COMMIT = "1" * 40
PASSWORD = "s3cret-Pw0rd"
HUBS = ["hf", "modelscope"]
BASE = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": b"\0" * 64}
#: Where deploykit's pull may write: the hub clients' caches and homes (its own outputs).
OURS = ("hf", "ms", "ms-home", "deploykit")
USER_TEXT = '{"mine": true}\n'


@pytest.fixture(scope="module")
def fake():
    hub = FakeHub({}).start()
    yield hub
    hub.stop()


@dataclass
class Tree:
    """A temp tree holding everything a pull could touch, with user files to be left alone."""

    root: Path
    env: dict[str, str]
    before: dict = field(default_factory=dict)

    def targets(self) -> list[Path]:
        """Where the hostile names below would create a file (they must not exist after)."""
        return [self.root / d / "outside" / "victim.json" for d in ("hf", "ms", "cwd")]

    def changes(self) -> dict[str, tuple]:
        after = state(self.root)
        keys = self.before.keys() | after.keys()
        return {
            k: (self.before.get(k), after.get(k))
            for k in keys
            if self.before.get(k) != after.get(k)
        }


def state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and sha256 (links: their target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.stat().st_size, sha256_file(p))
            else:
                out[rel] = ("dir",)
    return out


@pytest.fixture
def tree(fake, tmp_path) -> Tree:
    fake.status = fake.error_code = fake.listing_hook = None
    fake.redirect = fake.no_commit = False
    fake.truncate.clear()
    fake.requests.clear()
    fake.repos.clear()
    fake.repos["acme/ok"] = Repo({COMMIT: dict(BASE)}, {"main": COMMIT, "master": COMMIT})
    env = client_env(fake, tmp_path) | {"HOME": str(tmp_path / "home")}
    t = Tree(tmp_path, env)
    for d in ("home", "cwd", "outside"):
        (tmp_path / d).mkdir()
    user = tmp_path / "outside" / "victim.json"
    user.write_text(USER_TEXT)  # a user's file that a listing aims at
    t.before = state(tmp_path)
    return t


def pull(t: Tree, *args: str, source: str = "hf"):
    cwd = Path.cwd()
    os.chdir(t.root / "cwd")
    try:
        with in_process(t.env):
            return invoke("pull", "--source", source, *args)
    finally:
        os.chdir(cwd)


def assert_failed_closed(t: Tree, result, *words: str) -> str:
    """Exit 4, one `error:` line with a hint and ``words``, no traceback, no user file touched
    and no byte of the repo written anywhere."""
    line = one_error_line(result, DownloadError.exit_code)
    assert "(hint: " in line, line
    for w in words:
        assert w in line, line
    changed = t.changes()
    for rel, (old, new) in changed.items():
        assert old is None, f"{rel} was changed or deleted: {old} -> {new}"
        assert rel.split("/")[0] in OURS, f"{rel} created outside deploykit's outputs"
        assert new[0] == "dir" or "/snapshots/" not in rel and "/blobs/" not in rel, rel
    assert (t.root / "outside" / "victim.json").read_text() == USER_TEXT
    assert not any(p.exists() for p in t.targets())
    return line


# --- severe 1: names from a listing ----------------------------------------------------------

HOSTILE = {
    "traversal": "../../../../outside/victim.json",
    "absolute": "{root}/outside/victim.json",
    "inner-dotdot": "a/../../b.json",
    "backslash": "..\\..\\outside\\victim.json",
    "dot": "./config.json",
    "empty-part": "sub//victim.json",
    "trailing-slash": "sub/",
    "drive": "C:/outside/victim.json",
    "nul": "victim\x00.json",
    "newline": "a\nerror: fake.json",
    "long-part": "v" * 300 + ".json",
    "long-name": "/".join(["d" * 200] * 6),
}


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_listing_name_is_refused_before_a_byte_is_written(tree, fake, kind, source):
    name = HOSTILE[kind].format(root=tree.root)
    files = {**BASE, name: b'{"evil": 1}'}
    fake.repos["acme/evil"] = Repo({COMMIT: files}, {"main": COMMIT, "master": COMMIT})
    line = assert_failed_closed(tree, pull(tree, "acme/evil", source=source), "acme/evil")
    assert "will not write" in line and repr(name)[:40] in line
    downloads = [p for p in fake.paths() if "/resolve/" in p or "FilePath=" in p]
    assert downloads == [], "a file was requested after the listing named a hostile file"


@pytest.mark.parametrize("source", HUBS)
def test_hostile_name_with_out_dir(tree, fake, source):
    fake.repos["acme/evil"] = Repo(
        {COMMIT: {**BASE, "../victim.json": b"x"}}, {"main": COMMIT, "master": COMMIT}
    )
    out = tree.root / "cwd" / "base"
    assert_failed_closed(tree, pull(tree, "acme/evil", "--out", str(out), source=source))
    assert not out.exists()


def test_hf_clients_own_refusal_is_the_same_clear_error(tree, fake):
    """A hub that lists a hostile name only to the client's second listing: huggingface_hub
    refuses it, and that is deploykit's unsafe-name error, not an internal error."""
    evil = "../../../../outside/victim.json"
    fake.repos["acme/evil"] = Repo({COMMIT: {**BASE, evil: b"x"}}, {"main": COMMIT})
    with in_process(tree.env), pytest.raises(DownloadError) as err:
        backend("hf").download("acme/evil", COMMIT, ["*"], [])
    assert "will not write" in err.value.line() and evil in err.value.line()
    assert not any(v.exists() for v in tree.targets())


@pytest.mark.parametrize("source", HUBS)
def test_a_second_listing_with_more_names_gets_nothing_more(tree, fake, source):
    """The client downloads exactly the names deploykit checked, whatever it lists itself."""
    listings = []

    def grow(entries):  # the second listing (the client's own) adds a hostile name
        listings.append(1)
        if len(listings) < 2:
            return entries
        path_key = "path" if source == "hf" else "Path"
        extra = {**entries[0], path_key: "../../../../outside/victim.json"}
        return [*entries, extra]

    fake.listing_hook = grow
    result = pull(tree, "acme/ok", "--json", source=source)
    assert result.returncode == 0, result.stderr
    assert len(listings) >= 2, "the client did not list again: the case proves nothing"
    assert {f["path"] for f in json.loads(result.stdout)["files"]} == set(BASE)
    assert not any(v.exists() for v in tree.targets())


def test_hf_cache_symlinks_into_blobs_keep_working(tree):
    result = pull(tree, "acme/ok", "--json")
    assert result.returncode == 0, result.stderr
    path = Path(json.loads(result.stdout)["path"])
    link = path / "model.safetensors"
    assert link.is_symlink() and "blobs" in os.readlink(link)
    assert link.read_bytes() == BASE["model.safetensors"]


# --- 2: credentials in endpoints --------------------------------------------------------------


def with_password(t: Tree, url: str) -> dict[str, str]:
    creds = url.replace("http://", f"http://deployer:{PASSWORD}@")
    return {**t.env, "HF_ENDPOINT": creds, "MODELSCOPE_ENDPOINT": creds}


def assert_no_password(t: Tree, *texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text
    for p in t.root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert PASSWORD.encode() not in p.read_bytes(), p


@pytest.mark.parametrize(
    ("case", "source"),
    # modelscope_hub's retry counts are fixed at import (in-process: its slow defaults), so
    # its unreachable and bad-hash paths, which show no client text with a URL, stay out
    [*((c, s) for c in ("ok", "missing") for s in HUBS), ("unreachable", "hf"), ("bad-sha", "hf")],
)
def test_endpoint_password_is_never_shown_or_recorded(tree, fake, source, case):
    tree.env = with_password(tree, "http://127.0.0.1:9" if case == "unreachable" else fake.url)
    if case == "bad-sha":
        fake.bad_sha.add("model.safetensors")
    repo = "acme/missing" if case == "missing" else "acme/ok"
    result = pull(tree, repo, "--json", source=source)
    assert_no_password(tree, result.stdout, result.stderr)
    if case == "ok":
        record = json.loads(result.stdout)
        assert record["endpoint"] == fake.url.replace("http://", "http://***@")
        assert "***@" in result.stderr  # shown, redacted
    else:
        line = one_error_line(result, DownloadError.exit_code)
        assert case == "bad-sha" or "***@" in line, line
    fake.bad_sha.clear()


def test_client_retry_warnings_do_not_show_the_password(tree, fake):
    """huggingface_hub logs the download URL when a transfer breaks; that reaches the real
    stderr, so this one runs as a user would, in a subprocess."""
    fake.truncate["model.safetensors"] = 10
    env = with_password(tree, fake.url)
    result = run_cli("pull", "--source", "hf", "acme/ok", env=env, cwd=tree.root / "cwd")
    assert "Error while downloading" in result.stderr  # the warning is there, redacted
    one_error_line(result, DownloadError.exit_code)
    assert_no_password(tree, result.stdout, result.stderr)


def test_redact():
    assert redact("http://u:p%40ss@host:1/x and https://a:b@c@d/e") == (
        "http://***@host:1/x and https://***@d/e"
    )
    assert redact("Authorization: Bearer hf_abc123 or Basic dXNlcjpwYXNz") == (
        "Authorization: Bearer *** or Basic ***"
    )
    assert redact("http://host/a@b") == "http://host/a@b"  # an @ in the path is not a login


def test_redacted_logs_cover_client_loggers(capsys):
    import logging

    logger = logging.getLogger("huggingface_hub.file_download")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with redacted_logs():
            logger.warning("Error while downloading from %s", f"http://u:{PASSWORD}@h/x")
        logger.warning("after: %s", "http://u:v@h/")  # only inside the context
    finally:
        logger.removeHandler(handler)
    assert seen == ["Error while downloading from http://***@h/x", "after: http://u:v@h/"]


# --- 3: malformed hub answers ---------------------------------------------------------------


def _field(source: str, hf: str, ms: str) -> str:
    return hf if source == "hf" else ms


MALFORMED = {
    "not-a-list": lambda s: lambda entries: {"files": entries},
    "entry-not-an-object": lambda s: lambda entries: ["config.json"],
    "size-not-an-int": lambda s: lambda e: [{**x, _field(s, "size", "Size"): "big"} for x in e],
    "size-negative": lambda s: lambda e: [{**x, _field(s, "size", "Size"): -5} for x in e],
    "name-not-a-string": lambda s: lambda e: [{**x, _field(s, "path", "Path"): 7} for x in e],
    "missing-sha": lambda s: (
        lambda e: [{k: v for k, v in x.items() if k not in ("oid", "lfs", "Sha256")} for x in e]
    ),
    "sha-not-hex": lambda s: (
        lambda e: [{**x, **({"oid": "zz"} if s == "hf" else {"Sha256": "zz"})} for x in e]
    ),
}


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_listing_is_a_download_error(tree, fake, kind, source):
    fake.listing_hook = MALFORMED[kind](source)
    line = assert_failed_closed(tree, pull(tree, "acme/ok", source=source), "acme/ok")
    assert "malformed answer" in line or "will not write" in line, line


def test_redirect_without_x_repo_commit_is_a_download_error(tree, fake):
    fake.redirect = fake.no_commit = True
    line = assert_failed_closed(tree, pull(tree, "acme/ok"), "malformed answer", "X-Repo-Commit")
    assert "HF_ENDPOINT" in line


# --- 4: properties --------------------------------------------------------------------------

PARTS = st.one_of(
    st.sampled_from(["..", ".", "", "C:", "\\", "..\\..", "/", "\x00", "a\nb", "~", "\u202e"]),
    st.text(min_size=1, max_size=12),
    st.text(alphabet="a", min_size=250, max_size=260),
)
NAMES = st.one_of(
    st.text(max_size=40),
    st.lists(PARTS, min_size=1, max_size=6).map("/".join),
    st.lists(PARTS, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.integers(),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_listing_names_stay_inside_or_are_refused(name):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dest"
        root.mkdir()
        try:
            dest = join(root, "acme/x", name)
        except DownloadError as exc:
            assert "acme/x" in exc.line() and "\n" not in exc.line()
            return
        assert checked_name("acme/x", name) == name
        assert Path(os.path.normpath(dest)).is_relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"x")  # the name is also one the file system takes
        assert dest.resolve().is_relative_to(root.resolve())
        assert [p.name for p in Path(tmp).iterdir()] == ["dest"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ENTRY_KEYS = {
    "hf": st.fixed_dictionaries(
        {"type": st.just("file"), "path": NAMES | JSON, "size": JSON, "oid": JSON},
        optional={"lfs": JSON},
    ),
    "modelscope": st.fixed_dictionaries(
        {"Path": NAMES | JSON, "Type": st.just("blob") | JSON, "Size": JSON, "Sha256": JSON}
    ),
}


@pytest.mark.parametrize("source", HUBS)
def test_any_listing_answer_is_a_listing_or_a_download_error(fake, tmp_path, source):
    """Whatever a hub's listing holds, the backend returns checked files or a DownloadError."""
    fake.repos.clear()
    fake.repos["acme/ok"] = Repo({COMMIT: dict(BASE)}, {"main": COMMIT, "master": COMMIT})
    fake.status = None
    hub = backend(source)
    answers = st.one_of(JSON, st.lists(ENTRY_KEYS[source], max_size=4))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(answer=answers)
    def check(answer):
        fake.listing_hook = lambda entries: answer
        try:
            listing = hub.listing("acme/ok", hub.default_revision)
        except DownloadError:
            return
        for f in listing.files:
            assert checked_name("acme/ok", f.path) == f.path
            assert f.size is None or (type(f.size) is int and f.size >= 0)
            assert f.sha256 or f.git_oid

    try:
        with in_process(client_env(fake, tmp_path)):
            check()
    finally:
        fake.listing_hook = None
