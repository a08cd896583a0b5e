"""``deploykit push``: a verified bundle published with the real ``huggingface_hub`` client to
the loopback fake hub's upload side, and through the Ollama test server's ``/api/push``.

Bundles are written by ``bundle.write`` itself (tiny GGUFs with a real chat template, no
llama.cpp build), so their manifests are the ones ``ship`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deploykit.core.errors import PublishError
from deploykit.ollama import modelfile
from tests.support.cli import invoke, one_error_line
from tests.support.fakehub import Repo, client_env, in_process, sha256
from tests.support.fakehub_upload import UploadHub

BASE = "Qwen/Qwen2.5-0.5B-Instruct"
WRITE, READ = "hf_write_token_for_tests", "hf_read_token_for_tests"


def _gguf(path: Path, n: int) -> Path:
    import gguf
    import numpy as np

    from deploykit.ollama import families

    fam = families.get("qwen2.5")
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_string("tokenizer.chat_template", fam.reference_path(fam.reference_names[0]).read_text())
    w.add_tensor("t", np.arange(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_bundle(root: Path, *, n: int = 1000, edit=None) -> Path:
    """A two-quant bundle (Q4_K_M, Q8_0) as ``ship --target none`` writes it; ``edit``
    changes its manifest afterwards (the manifest is not one of the files it lists)."""
    from deploykit.core.fsutil import Sha256Memo
    from deploykit.pipeline import bundle
    from deploykit.pipeline.options import ShipOptions

    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    quants = {"Q4_K_M": _gguf(src / "m-Q4_K_M.gguf", n), "Q8_0": _gguf(src / "m-Q8_0.gguf", 2 * n)}
    kld = {"name": "quant_quality", "ok": True, "data": {"kld_mean": 0.0123}}
    probes = {"name": "probes", "ok": True, "data": {"exact": 3, "total": 3}}
    out = root / "dist"
    bundle.write(
        out,
        name="m",
        params=[],
        failed_allowed={},
        quant_files=quants,
        model_dir=None,
        opts=ShipOptions(target="none", quant="q4_k_m,q8_0", host="http://u:secret@10.0.0.5:1"),
        tree=SimpleNamespace(release="b1", commit="abc123", origin="https://github.com/x/y"),
        inputs={
            "adapters": [{"path": str(root / "adapter"), "files": []}],
            "base": {"path": str(root / "base"), "files": []},
        },
        reports={
            "Q4_K_M": {"ok": True, "failed": [], "checks": [kld, probes]},
            "Q8_0": {"ok": True, "failed": [], "checks": [kld]},
        },
        steps=[],
        digest=Sha256Memo(None),
    )
    if edit is not None:
        m = json.loads((out / "manifest.json").read_text())
        edit(m)
        (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.fixture
def hub(tmp_path):
    fake = UploadHub(repos={}, tokens={WRITE: "write", READ: "read"}).start()
    env = {**client_env(fake, tmp_path), "HF_TOKEN": WRITE, "HF_HUB_DISABLE_XET": "1"}
    with in_process(env):
        yield fake, env
    fake.stop()


def push(*args: str, env: dict):
    return invoke("push", *args, env=env)


def _listed(bundle: Path) -> list[str]:
    return [f["path"] for f in json.loads((bundle / "manifest.json").read_text())["files"]]


# --- the bundle and the card ------------------------------------------------------------------


def test_dry_run_checks_the_bundle_and_shows_the_card_offline(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    r = push(
        str(bundle),
        "--to",
        "hf:me/demo",
        "--to",
        "ollama:me/demo",
        "--dry-run",
        "--json",
        "--base-model",
        BASE,
        env={**env, "HF_TOKEN": ""},
    )
    assert r.returncode == 0, r.stderr
    assert fake.requests == []  # no network call, no token needed
    result = json.loads(r.stdout)
    hf, ollama = result["targets"]
    names = {f["path"]: f["size"] for f in hf["files"]}
    assert set(names) == {*_listed(bundle), "manifest.json", "template", "system", "params"}
    assert names["m-Q4_K_M.gguf"] == (bundle / "m-Q4_K_M.gguf").stat().st_size
    meta = yaml.safe_load(hf["card"].split("---\n")[1])
    assert meta["base_model"] == BASE and meta["base_model_relation"] == "finetune"
    assert {"gguf", "ollama", "qwen2.5"} <= set(meta["tags"])
    assert "ollama run hf.co/me/demo:Q4_K_M" in hf["card"]
    assert "llama-server -hf me/demo:Q4_K_M" in hf["card"]
    assert "deploykit create m -f Modelfile" in hf["card"]
    assert "0.0123" in hf["card"] and "3/3" in hf["card"]  # KLD and probes from the manifest
    assert "Not health-checked on an Ollama server" in hf["card"]
    assert [m["remote"] for m in ollama["models"]] == [
        "me/demo:q4_k_m",
        "me/demo:q8_0",
        "me/demo:latest",
    ]
    human = push(str(bundle), "--to", "hf:me/demo", "--dry-run", env=env)
    assert "--- README.md ---" in human.stdout and "m-Q8_0.gguf" in human.stdout


def test_the_published_manifest_has_no_local_paths_urls_or_secrets(tmp_path, hub):
    from deploykit.pipeline import push as pipeline

    bundle = make_bundle(tmp_path)
    release = pipeline.load(bundle)
    uploads, _ = pipeline.repo_files(
        release, pipeline.parse_target("hf:me/demo"), base_model=None, license=None, split=False
    )
    text = next(u.source for u in uploads if u.path == "manifest.json").decode()
    for bad in (str(tmp_path), "/tmp", "secret", "10.0.0.5", "http://", "https://", WRITE):
        assert bad not in text
    public = json.loads(text)
    assert public["outputs"][0]["path"] == "m-Q4_K_M.gguf"
    assert "host" not in public["options"]


@pytest.mark.parametrize(
    ("edit", "code", "match"),
    [
        (lambda m: m.pop("files"), 3, "does not record every file"),
        (lambda m: m.update(incomplete=True), 3, "interrupted"),
        (lambda m: m["verification"]["Q8_0"].update(ok=False, failed=["probes"]), 7, "Q8_0 failed"),
        (
            lambda m: m.update(shipped_despite_failures={"Q8_0": ["quant_quality"]}),
            7,
            "--allow-failed",
        ),
        (
            lambda m: m.update(ollama={"target": "ollama", "health": {"m:q8_0": {"ok": False}}}),
            9,
            "health",
        ),
    ],
)
def test_a_bundle_that_is_not_verified_is_refused(tmp_path, hub, edit, code, match):
    fake, env = hub
    bundle = make_bundle(tmp_path, edit=edit)
    line = one_error_line(push(str(bundle), "--to", "hf:me/demo", env=env), code)
    assert match in line
    assert fake.requests == []


def test_a_quant_shipped_despite_failures_needs_push_allow_failed_and_the_card_says_so(
    tmp_path, hub
):
    _, env = hub

    def failed(m):
        m["verification"]["Q8_0"].update(ok=False, failed=["quant_quality"])
        m["shipped_despite_failures"] = {"Q8_0": ["quant_quality"]}

    bundle = make_bundle(tmp_path, edit=failed)
    r = push(str(bundle), "--to", "hf:me/demo", "--dry-run", "--json", "--allow-failed", env=env)
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)["targets"][0]["card"]
    assert "Q8_0 failed verification (quant_quality) and was shipped anyway" in card


@pytest.mark.parametrize(
    "target",
    [
        "hf:me",
        "hf:me/a/b",
        "hf:me/..x",
        "github:me/x",
        "ollama:demo",
        "ollama:me/x:bad tag",
        "hf:-me/x",
    ],
)
def test_a_bad_target_is_one_error_line(tmp_path, hub, target):
    _, env = hub
    bundle = make_bundle(tmp_path)
    assert "error:" in one_error_line(push(str(bundle), "--to", target, "--dry-run", env=env), 3)


# --- Hugging Face -----------------------------------------------------------------------------


def test_push_uploads_the_verified_files_card_and_ollama_files_once(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    args = (str(bundle), "--to", "hf:me/demo", "--base-model", BASE, "--license", "apache-2.0")
    r = push(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert WRITE not in r.stdout + r.stderr
    files = fake.files("me/demo")
    for name in _listed(bundle):
        if name != "README.md":
            assert files[name] == (bundle / name).read_bytes(), name  # byte-identical
    gguf = (bundle / "m-Q4_K_M.gguf").read_bytes()
    assert sha256(gguf) in fake.uploaded  # through LFS
    assert any(r.method == "PUT" for r in fake.requests)
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    assert (meta["base_model"], meta["base_model_relation"], meta["license"]) == (
        BASE,
        "finetune",  # adapters were merged: a fine-tune of the base, then quantized
        "apache-2.0",
    )
    assert {"gguf", "ollama", "qwen2.5"} <= set(meta["tags"])
    want = modelfile.create_request(modelfile.parse((bundle / "Modelfile").read_text()))
    assert files["template"].decode() == want["template"]
    assert files["system"].decode() == want["system"]
    assert json.loads(files["params"]) == want["parameters"]
    assert len(fake.commits) == 1

    before = len(fake.requests)
    again = push(*args, "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["targets"][0]["commit"] is None
    assert WRITE not in again.stdout + again.stderr
    assert "no commit" in again.stderr
    new = fake.requests[before:]
    assert not [r for r in new if r.method in ("POST", "PUT")]  # nothing uploaded, no commit
    assert len(fake.commits) == 1


def test_a_file_changed_after_the_manifest_is_refused_before_anything_is_sent(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    path = bundle / "m-Q8_0.gguf"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other bytes
    path.write_bytes(bytes(data))
    line = one_error_line(push(str(bundle), "--to", "hf:me/demo", env=env), PublishError.exit_code)
    assert "m-Q8_0.gguf changed since the manifest was written" in line
    assert fake.requests == []


@pytest.mark.parametrize(
    ("token", "refuse", "match"),
    [
        ("", {}, "not logged in to Hugging Face"),
        ("hf_unknown", {}, "refused the token (HTTP 401)"),
        (READ, {}, "no write access to me/demo on Hugging Face (HTTP 403)"),
        (WRITE, {"create": 429}, "rate-limited the push (HTTP 429)"),
    ],
)
def test_hub_refusals_are_one_line_in_the_publish_class(tmp_path, hub, token, refuse, match):
    fake, env = hub
    fake.refuse = refuse
    bundle = make_bundle(tmp_path)
    r = push(str(bundle), "--to", "hf:me/demo", env={**env, "HF_TOKEN": token})
    assert match in one_error_line(r, PublishError.exit_code)
    assert token == "" or token not in r.stderr
    assert fake.commits == [] and fake.uploaded == []


def test_the_network_down_is_one_line(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    fake.stop()
    r = push(str(bundle), "--to", "hf:me/demo", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert "cannot reach Hugging Face" in one_error_line(r, PublishError.exit_code)
    fake.start()


def test_a_repo_for_another_base_model_is_refused_without_force(tmp_path, hub):
    fake, env = hub
    card = b"---\nbase_model: someone/else\n---\n# theirs\n"
    fake.repos["me/demo"] = Repo(commits={"a" * 40: {"README.md": card}}, refs={"main": "a" * 40})
    bundle = make_bundle(tmp_path)
    args = (str(bundle), "--to", "hf:me/demo", "--base-model", BASE)
    line = one_error_line(push(*args, env=env), PublishError.exit_code)
    assert "another model" in line and "someone/else" in line and "--force" in line
    assert fake.commits == []
    assert push(*args, "--force", env=env).returncode == 0
    assert len(fake.commits) == 1


def test_revision_creates_the_branch_and_commits_there(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    r = push(str(bundle), "--to", "hf:me/demo", "--revision", "v1", "--private", env=env)
    assert r.returncode == 0, r.stderr
    repo = fake.repos["me/demo"]
    assert "me/demo" in fake.private
    assert set(fake.files("me/demo", "v1")) > {"m-Q4_K_M.gguf", "README.md"}
    assert set(repo.commits[repo.refs["main"]]) == {".gitattributes"}
    assert [c["revision"] for c in fake.commits] == ["v1"]


def test_a_new_branch_of_another_models_repo_is_refused_without_force(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    first = push(str(bundle), "--to", "hf:me/demo", "--base-model", "other/model", env=env)
    assert first.returncode == 0, first.stderr
    args = (str(bundle), "--to", "hf:me/demo", "--revision", "v2", "--base-model", BASE)
    line = one_error_line(push(*args, env=env), PublishError.exit_code)
    assert "the repo of another model" in line and "other/model" in line
    assert len(fake.commits) == 1
    assert push(*args, "--force", env=env).returncode == 0


def test_a_gguf_over_the_file_limit_is_split_or_refused_before_upload(tmp_path, hub):
    from deploykit.core.errors import ToolchainError
    from deploykit.llamacpp import tools

    fake, env = hub
    bundle = make_bundle(tmp_path, n=400_000)  # 1.6 MB and 3.2 MB GGUFs
    env = {**env, "DEPLOYKIT_HF_MAX_FILE_MB": "2"}
    dry = push(str(bundle), "--to", "hf:me/demo", "--dry-run", env=env)
    assert "m-Q8_0.gguf would be split" in dry.stdout
    r = push(str(bundle), "--to", "hf:me/demo", env=env)
    try:
        tools.tool("llama-gguf-split")
    except ToolchainError:
        assert "llama-gguf-split is not built" in one_error_line(r, ToolchainError.exit_code)
        assert fake.requests == []
        return
    assert r.returncode == 0, r.stderr
    files = fake.files("me/demo")
    parts = ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    assert "m-Q8_0.gguf" not in files and all(files[p][:4] == b"GGUF" for p in parts)
    assert all(len(files[p]) <= 2 * 1000**2 for p in parts)
    assert json.loads(files["manifest.json"])["split"] == {"m-Q8_0.gguf": parts}


# --- Ollama registry --------------------------------------------------------------------------


@pytest.fixture
def ollama():
    from tests.support.ollama_server import start, stop

    httpd, state, url = start()
    yield state, url
    stop(httpd, state)


def test_ollama_push_creates_checks_copies_and_pushes_each_quant(tmp_path, ollama):
    state, url = ollama
    bundle = make_bundle(tmp_path)
    r = invoke("push", str(bundle), "--to", "ollama:me/demo", "--host", url, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["targets"][0]
    assert result["created"] == ["m:q4_k_m", "m:q8_0"]
    pushed = [p["model"] for p in state.pushed]
    assert pushed == [
        "registry.ollama.ai/me/demo:q4_k_m",
        "registry.ollama.ai/me/demo:q8_0",
        "registry.ollama.ai/me/demo:latest",
    ]
    manifest = json.loads((bundle / "manifest.json").read_text())
    digests = {o["type"]: "sha256:" + o["sha256"] for o in manifest["outputs"]}
    assert [p["digest"] for p in state.pushed] == [
        digests["Q4_K_M"],
        digests["Q8_0"],
        digests["Q4_K_M"],
    ]
    assert "me/demo:q8_0: pushing manifest" in r.stderr  # the streamed status as progress
    assert result["pushed"][0]["statuses"][-1] == "success"

    again = invoke("push", str(bundle), "--to", "ollama:me/demo", "--host", url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["targets"][0]["created"] == []


def test_ollama_push_refuses_a_model_that_is_not_the_bundles(tmp_path, ollama):
    state, url = ollama
    bundle = make_bundle(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _gguf(other / "x.gguf", 10)
    (other / "Modelfile").write_text(
        modelfile.format(from_path="./x.gguf", template="{{ .Prompt }}")
    )
    from deploykit.ollama import deploy

    deploy.create("m:q4_k_m", other / "Modelfile", url, allow_gguf_template=True)
    r = invoke("push", str(bundle), "--to", "ollama:me/demo", "--host", url)
    line = one_error_line(r, PublishError.exit_code)
    assert "m:q4_k_m" in line and "not the bundle's model" in line and "GGUF" in line
    assert state.pushed == []


def test_an_error_line_in_the_push_stream_fails_the_command(tmp_path, ollama):
    state, url = ollama
    state.refused_namespaces.add("someone")
    bundle = make_bundle(tmp_path)
    r = invoke("push", str(bundle), "--to", "ollama:someone/demo", "--host", url)
    line = one_error_line(r, PublishError.exit_code)
    assert "pushing someone/demo:q4_k_m failed" in line and "not authorized" in line
    assert state.pushed == []


def test_the_test_servers_push_refuses_an_unknown_model_in_the_stream(ollama):
    """As Ollama's PushHandler: the name is resolved in the stream, so 200 and an error line."""
    import httpx

    from deploykit.core.errors import OllamaError
    from deploykit.ollama.client import Client

    _, url = ollama
    with Client(url) as c, pytest.raises(OllamaError, match=r"push me/nothing:latest: open "):
        c.push("me/nothing:latest")
    resp = httpx.post(f"{url}/api/push", json={"model": "me/nothing:latest"})
    assert resp.status_code == 200 and "no such file or directory" in resp.json()["error"]


def test_ship_push_checks_its_targets_before_any_work(tmp_path):
    work = tmp_path / "work"
    r = invoke("ship", "--model", str(tmp_path), "--work-dir", str(work), "--push", "hf:not a repo")
    assert "push target" in one_error_line(r, 3)
    assert not work.exists()


def test_a_moved_bundle_still_checks(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path / "built")
    moved = tmp_path / "artifact" / "dist"
    moved.parent.mkdir()
    bundle.rename(moved)  # a CI artifact: the manifest's absolute output paths are gone
    r = push(str(moved), "--to", "hf:me/demo", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert fake.files("me/demo")["m-Q4_K_M.gguf"] == (moved / "m-Q4_K_M.gguf").read_bytes()


def test_a_gguf_rewritten_after_the_check_is_never_committed(tmp_path, hub):
    """What the client sent is hashed (by the client; Xet while sending) and the file again
    after it: bytes that are not the manifest's are never committed."""
    from deploykit.publish import hf

    fake, _ = hub
    path = _gguf(tmp_path / "m-Q4_K_M.gguf", 100)
    checked = sha256(path.read_bytes())
    path.write_bytes(path.read_bytes()[:-1] + b"\1")  # rewritten after the check
    upload = hf.Upload(path.name, path, path.stat().st_size, checked)
    with pytest.raises(PublishError, match="changed since the manifest was written"):
        hf.push("me/demo", [upload], base_model=None, message="m")
    assert fake.commits == []


def test_a_gguf_rewritten_while_it_is_sent_is_never_committed(tmp_path, hub, monkeypatch):
    """The file is right when the client hashes it and is rewritten before the commit: the
    hash of the file after the upload catches it."""
    from huggingface_hub import HfApi

    from deploykit.publish import hf

    fake, _ = hub
    path = _gguf(tmp_path / "m-Q4_K_M.gguf", 100)
    upload = hf.Upload(path.name, path, path.stat().st_size, sha256(path.read_bytes()))
    real = HfApi.preupload_lfs_files

    def then_rewrite(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the real client hashes and sends the right bytes
        path.write_bytes(path.read_bytes()[:-1] + b"\1")

    monkeypatch.setattr(HfApi, "preupload_lfs_files", then_rewrite)
    with pytest.raises(PublishError, match="changed since the manifest was written"):
        hf.push("me/demo", [upload], base_model=None, message="m")
    assert fake.commits == []


def test_files_an_earlier_push_wrote_are_deleted_when_this_one_does_not(tmp_path, hub):
    """A quant the remote manifest (deploykit's) lists but this bundle has not is removed in
    the same commit; a file deploykit did not write stays."""
    fake, env = hub
    bundle = make_bundle(tmp_path)
    args = (str(bundle), "--to", "hf:me/demo", "--base-model", BASE, "--json")
    assert push(*args, env=env).returncode == 0
    repo = fake.repos["me/demo"]
    head = repo.commits[repo.refs["main"]]
    old = json.loads(head["manifest.json"])
    old["files"].append({"path": "m-Q5_K_M.gguf", "size": 9, "sha256": sha256(b"old quant")})
    head["manifest.json"] = json.dumps(old).encode()
    head["m-Q5_K_M.gguf"], head["notes.txt"] = b"old quant", b"the user's"
    r = push(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["targets"][0]["deleted"] == ["m-Q5_K_M.gguf"]
    files = fake.files("me/demo")
    assert "m-Q5_K_M.gguf" not in files and files["notes.txt"] == b"the user's"
    assert (
        files["manifest.json"] == (fake.files("me/demo")["manifest.json"])
        and "m-Q5_K_M.gguf" not in files["manifest.json"].decode()
    )


def test_a_remote_base_model_is_read_bounded():
    from deploykit.publish.card import base_model_text

    assert base_model_text("a/b") == "a/b"
    assert base_model_text(["a/b", "c/d"]) == "a/b, c/d"
    assert base_model_text({"x": [1] * 10}) == "(a base_model that is not a repo id)"
    assert base_model_text(["a/b"] * 9) == "(a base_model that is not a repo id)"
    assert len(base_model_text("x" * 10_000)) == 200


# --- ModelScope -------------------------------------------------------------------------------

MS_WRITE = "ms_write_token_for_tests"


@pytest.fixture
def mshub(tmp_path):
    fake = UploadHub(repos={}, tokens={MS_WRITE: "write", READ: "read"}).start()
    env = {**client_env(fake, tmp_path), "MODELSCOPE_API_TOKEN": MS_WRITE}
    with in_process(env):
        yield fake, env
    fake.stop()


def test_modelscope_push_uploads_the_same_files_once(tmp_path, mshub):
    fake, env = mshub
    bundle = make_bundle(tmp_path, n=20_000)  # GGUFs over the client's 64 KiB LFS threshold
    args = (str(bundle), "--to", "modelscope:me/demo", "--base-model", BASE, "--private")
    r = invoke("push", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert MS_WRITE not in r.stdout + r.stderr
    files = fake.files("me/demo", "master")
    for name in _listed(bundle):
        if name != "README.md":
            assert files[name] == (bundle / name).read_bytes(), name
    assert sha256((bundle / "m-Q8_0.gguf").read_bytes()) in fake.uploaded  # through LFS
    card = files["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == BASE
    assert "ollama run modelscope.cn/me/demo:Q4_K_M" in card
    want = modelfile.create_request(modelfile.parse((bundle / "Modelfile").read_text()))
    assert files["template"].decode() == want["template"]
    assert "me/demo" in fake.private and len(fake.commits) == 1

    before = len(fake.requests)
    again = invoke("push", *args, env=env)
    assert again.returncode == 0 and "no commit" in again.stderr
    assert not [q for q in fake.requests[before:] if q.method in ("POST", "PUT")]
    assert len(fake.commits) == 1


@pytest.mark.parametrize(
    ("token", "refuse", "match"),
    [
        ("", {}, "not logged in to ModelScope"),
        ("ms_unknown", {}, "ModelScope refused the token (HTTP 401)"),
        (READ, {}, "no write access to me/demo on ModelScope (HTTP 403)"),
        (MS_WRITE, {"commit": 429}, "ModelScope rate-limited the push (HTTP 429)"),
    ],
)
def test_modelscope_refusals_are_one_line(tmp_path, mshub, token, refuse, match):
    fake, env = mshub
    fake.refuse = refuse
    fake.repos["me/demo"] = Repo(commits={"c" * 40: {}}, refs={"master": "c" * 40})
    bundle = make_bundle(tmp_path)
    r = invoke(
        "push",
        str(bundle),
        "--to",
        "modelscope:me/demo",
        env={**env, "MODELSCOPE_API_TOKEN": token},
    )
    assert match in one_error_line(r, PublishError.exit_code)
    assert fake.commits == []


def test_modelscope_unreachable_is_one_line(tmp_path, mshub):
    fake, env = mshub
    bundle = make_bundle(tmp_path)
    fake.stop()
    r = invoke("push", str(bundle), "--to", "modelscope:me/demo", env=env)
    assert "cannot reach ModelScope" in one_error_line(r, PublishError.exit_code)
    fake.start()


def test_every_target_is_checked_before_anything_is_sent(tmp_path, hub):
    fake, env = hub
    bundle = make_bundle(tmp_path)
    r = push(
        str(bundle),
        "--to",
        "hf:me/demo",
        "--to",
        "modelscope:me/demo",
        env={**env, "MODELSCOPE_API_TOKEN": ""},
    )
    assert "not logged in to ModelScope" in one_error_line(r, PublishError.exit_code)
    assert fake.requests == []


def test_a_registry_name_holding_another_model_is_replaced_only_with_force(tmp_path, ollama):
    state, url = ollama
    bundle = make_bundle(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _gguf(other / "x.gguf", 10)
    (other / "Modelfile").write_text(
        modelfile.format(from_path="./x.gguf", template="{{ .Prompt }}")
    )
    from deploykit.ollama import deploy

    deploy.create("me/demo:q8_0", other / "Modelfile", url, allow_gguf_template=True)
    r = invoke("push", str(bundle), "--to", "ollama:me/demo", "--host", url)
    line = one_error_line(r, PublishError.exit_code)
    assert "me/demo:q8_0" in line and "is another model" in line and "--force" in line
    assert state.pushed == []
    r = invoke("push", str(bundle), "--to", "ollama:me/demo", "--host", url, "--force")
    assert r.returncode == 0, r.stderr
    assert len(state.pushed) == 3


def test_a_later_target_that_fails_names_the_targets_already_published(tmp_path, hub):
    from deploykit.core.errors import OllamaError

    fake, env = hub
    bundle = make_bundle(tmp_path)
    r = push(
        str(bundle), "--to", "hf:me/demo", "--to", "ollama:me/demo", "--host",
        "http://127.0.0.1:9", env=env,
    )  # fmt: skip
    line = one_error_line(r, OllamaError.exit_code)
    assert "cannot reach Ollama" in line and "(already published: hf:me/demo)" in line
    assert len(fake.commits) == 1
