"""`deploykit pull` and hub base resolution, against loopback fake hubs (HF and ModelScope
protocols) driven through the real huggingface_hub and modelscope clients in subprocesses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config

from deploykit.core.errors import DownloadError, InputError
from deploykit.core.fsutil import sha256_file
from deploykit.hub import pull as hub_mod
from deploykit.model.base import resolve as resolve_base
from tests.support.cli import run_cli
from tests.support.fakehub import FakeHub, Repo, client_env, sha256
from tests.support.models import TINY

REPO = "acme/tiny-qwen"
C_OLD, C_NEW = "1" * 40, "2" * 40
DOWN = "http://127.0.0.1:9"  # nothing listens there: "hub unreachable"
TOKEN = "hf_sEcReT0123456789abcdef"
DEPLOY_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "chat_template.jinja",
    "LICENSE",
}
HUBS = ["hf", "modelscope"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, bytes]:
    """A tiny Qwen2 repo: deployment files plus things pull must leave behind."""
    d = tmp_path_factory.mktemp("tiny-qwen")
    torch.manual_seed(0)
    cfg = Qwen2Config(**TINY, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(d)
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    files |= {
        "tokenizer_config.json": b'{"model_max_length": 128}',
        "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
        "LICENSE": b"Apache-2.0\n",
        "README.md": b"# tiny\n",
        "pytorch_model.bin": b"pickle" * 100,
        "original/consolidated.00.pth": b"pickle" * 100,
    }
    return files


@pytest.fixture(scope="module")
def fake(model) -> FakeHub:
    old = dict(model, **{"config.json": model["config.json"].replace(b"{", b'{"_old": 1,', 1)})
    repos = {
        REPO: Repo({C_OLD: old, C_NEW: model}, {"main": C_NEW, "master": C_NEW, "v1": C_OLD}),
        "acme/pickled": Repo(
            {C_OLD: {"config.json": b"{}", "pytorch_model.bin": b"x" * 64}},
            {"main": C_OLD, "master": C_OLD},
        ),
        "acme/gated": Repo({C_NEW: model}, {"main": C_NEW, "master": C_NEW}, gated_token=TOKEN),
    }
    hub = FakeHub(repos).start()
    yield hub
    hub.stop()


@pytest.fixture
def env(fake, tmp_path) -> dict[str, str]:
    """Both clients pointed at the fake, with fresh caches; retries bounded to keep tests fast."""
    fake.status = fake.error_code = fake.listing_hook = None
    fake.redirect = fake.no_commit = False
    fake.truncate.clear()
    fake.bad_sha.clear()
    fake.requests.clear()
    return client_env(fake, tmp_path)


def pull(env: dict, *args: str, source: str = "hf"):
    return run_cli("pull", "--source", source, *args, env=env)


def pull_json(env: dict, *args: str, source: str = "hf") -> dict:
    r = pull(env, *args, "--json", source=source)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def down(env: dict) -> dict:
    return {**env, "HF_ENDPOINT": DOWN, "MODELSCOPE_ENDPOINT": DOWN}


# --- downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", HUBS)
def test_full_download_fetches_what_deployment_needs(env, fake, model, source):
    rec = pull_json(env, REPO, source=source)
    names = {f["path"] for f in rec["files"]}
    assert names == DEPLOY_FILES  # no README, no pickles
    path = Path(rec["path"])
    for f in rec["files"]:
        assert (path / f["path"]).read_bytes() == model[f["path"]]
        assert f["size"] == len(model[f["path"]]) and f["sha256"] == sha256(model[f["path"]])
    assert not (path / "pytorch_model.bin").exists() and not (path / "README.md").exists()
    assert rec["source"] == source and rec["id"] == REPO and rec["commit"] == C_NEW
    assert json.loads((path / "deploykit_pull.json").read_text()) == rec
    cache = env["HF_HOME"] if source == "hf" else env["MODELSCOPE_CACHE"]
    assert path.is_relative_to(cache)
    got = [p for p in fake.paths() if "pytorch_model" in p or "README" in p]
    assert not got, "files outside the filters were requested"


@pytest.mark.parametrize(
    "extra", [{"DEPLOYKIT_HUB": "modelscope"}, {"USE_MODELSCOPE_HUB": "1"}, {}]
)
def test_source_auto_follows_the_environment(env, fake, extra):
    rec = pull_json({**env, **extra}, REPO, "--include", "config.json", source="auto")
    assert rec["source"] == ("modelscope" if extra else "hf")
    on_ms = any(p.startswith("/api/v1/") for p in fake.paths())
    assert on_ms == bool(extra)


@pytest.mark.parametrize("source", HUBS)
def test_include_and_exclude(env, fake, source):
    rec = pull_json(env, REPO, "--include", "*.json", "--exclude", "generation_*", source=source)
    assert {f["path"] for f in rec["files"]} == {"config.json", "tokenizer_config.json"}
    assert not any("safetensors" in p for p in fake.paths())


@pytest.mark.parametrize("source", HUBS)
def test_revision_pin_and_cache_hit_with_hub_down(env, fake, model, source):
    rec = pull_json(env, REPO, "--revision", "v1", source=source)
    assert rec["commit"] == C_OLD and rec["revision"] == "v1"
    config = json.loads((Path(rec["path"]) / "config.json").read_text())
    assert config["_old"] == 1
    fake.requests.clear()
    again = pull_json(down(env), REPO, "--revision", "v1", source=source)
    assert again["from_cache_offline"] is True
    assert again["commit"] == C_OLD and again["files"] == rec["files"]
    assert fake.requests == []


def test_hf_commit_pin_is_served_from_cache(env, fake):
    rec = pull_json(env, REPO, "--revision", C_OLD)
    assert rec["commit"] == C_OLD
    again = pull_json({**env, "HF_HUB_OFFLINE": "1"}, REPO, "--revision", C_OLD)
    assert again["files"] == rec["files"] and again["path"] == rec["path"]
    r = pull({**env, "HF_HUB_OFFLINE": "1"}, REPO)  # main was never pulled
    assert r.returncode == 4 and "HF_HUB_OFFLINE=1" in r.stderr


@pytest.mark.parametrize("source", HUBS)
def test_out_is_a_plain_directory_and_is_not_overwritten(env, model, tmp_path, source):
    out = tmp_path / "base"
    rec = pull_json(env, REPO, "--out", str(out), source=source)
    assert rec["path"] == str(out)
    assert {p.name for p in out.iterdir()} == DEPLOY_FILES | {"deploykit_pull.json"}
    assert not any(p.is_symlink() for p in out.iterdir())
    assert sha256_file(out / "model.safetensors") == sha256(model["model.safetensors"])
    r = pull(env, REPO, "--out", str(out), "--include", "config.json", source=source)
    assert r.returncode == 3 and "already exists" in r.stderr
    rec = pull_json(env, REPO, "--out", str(out), "--include", "config.json", "--force")
    assert {p.name for p in out.iterdir()} == {"config.json", "deploykit_pull.json"}


@pytest.mark.parametrize("source", HUBS)
def test_pickled_only_repo_is_refused(env, source):
    r = pull(env, "acme/pickled", source=source)
    assert r.returncode == 3
    assert "only pickled weights" in r.stderr and "--allow-pickle" in r.stderr
    rec = pull_json(env, "acme/pickled", "--allow-pickle", source=source)
    assert {f["path"] for f in rec["files"]} == {"config.json", "pytorch_model.bin"}


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", HUBS)
def test_repo_and_revision_not_found(env, source):
    r = pull(env, "acme/missing", source=source)
    assert r.returncode == 4 and "repo acme/missing not found" in r.stderr
    r = pull(env, REPO, "--revision", "nope", source=source)
    assert r.returncode == 4 and "revision nope not found" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize("token", ["", "wrong-token-abcdef"])
def test_gated_repo_without_access(env, source, token):
    var = "HF_TOKEN" if source == "hf" else "MODELSCOPE_API_TOKEN"
    r = pull({**env, var: token}, "acme/gated", source=source)
    assert r.returncode == 4
    assert "denied" in r.stderr and var in r.stderr
    assert "401" in r.stderr if not token else "403" in r.stderr
    if token:
        assert token not in r.stderr + r.stdout


@pytest.mark.parametrize("source", HUBS)
def test_token_never_leaks(env, tmp_path, source):
    var = "HF_TOKEN" if source == "hf" else "MODELSCOPE_API_TOKEN"
    out = tmp_path / "out"
    rec = pull_json({**env, var: TOKEN}, "acme/gated", "--out", str(out), source=source)
    assert rec["files"]
    r = pull({**env, var: TOKEN, "DEPLOYKIT_DEBUG": "1"}, "acme/missing", source=source)
    assert r.returncode == 4
    assert TOKEN not in r.stdout + r.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize(
    ("status", "words"), [(429, "rate-limiting"), (500, "server error"), (503, "server error")]
)
def test_rate_limit_and_server_errors(env, fake, source, status, words):
    fake.status = status
    r = pull(env, REPO, source=source)
    assert r.returncode == 4 and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 300


@pytest.mark.parametrize("source", HUBS)
def test_unreachable_hub_names_the_other(env, source):
    r = pull(down(env), REPO, source=source)
    assert r.returncode == 4
    other = "--source modelscope" if source == "hf" else "--source hf"
    assert "cannot reach" in r.stderr and other in r.stderr


def test_hf_truncated_file_is_an_integrity_failure(env, fake, model):
    fake.truncate["model.safetensors"] = len(model["model.safetensors"]) // 2
    r = pull(env, REPO)
    assert r.returncode == 4 and "integrity check failed" in r.stderr, r.stderr


def test_modelscope_truncated_file_is_resumed(env, fake, model):
    cut = len(model["model.safetensors"]) // 2
    fake.truncate["model.safetensors"] = cut
    rec = pull_json(env, REPO, source="modelscope")
    assert {f["path"] for f in rec["files"]} == DEPLOY_FILES
    ranges = [r.headers.get("Range") for r in fake.requests if "safetensors" in r.path]
    assert f"bytes={cut}-" in ranges


@pytest.mark.parametrize("source", HUBS)
def test_wrong_sha256_is_an_integrity_failure(env, fake, source):
    fake.bad_sha.add("model.safetensors")
    r = pull(env, REPO, source=source)
    assert r.returncode == 4
    assert "integrity check failed" in r.stderr and "model.safetensors" in r.stderr
    fake.bad_sha.clear()  # the bad copy was not kept: the next pull fetches it again
    rec = pull_json(env, REPO, source=source)
    assert "model.safetensors" in {f["path"] for f in rec["files"]}


def test_modelscope_resumes_an_interrupted_download(env, fake, model):
    data = model["model.safetensors"]
    cut = len(data) // 2
    fake.truncate["model.safetensors"] = cut
    r = pull({**env, "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "0"}, REPO, source="modelscope")
    assert r.returncode == 4 and "model.safetensors" in r.stderr, r.stderr
    partial = list(Path(env["MODELSCOPE_CACHE"]).rglob("model.safetensors.incomplete"))
    assert partial and partial[0].stat().st_size == cut
    fake.truncate.clear()
    fake.requests.clear()
    rec = pull_json(env, REPO, source="modelscope")
    assert {f["path"] for f in rec["files"]} == DEPLOY_FILES
    ranges = [r.headers.get("Range") for r in fake.requests if "safetensors" in r.path]
    assert ranges == [f"bytes={cut}-"]
    path = Path(rec["path"]) / "model.safetensors"
    assert sha256_file(path) == sha256(data)


def test_not_enough_disk_space_fails_before_downloading(env, fake, monkeypatch, tmp_path):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(hub_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1))
    with pytest.raises(DownloadError, match="disk full"):
        hub_mod.pull(REPO, source="modelscope", out=tmp_path / "out")
    assert not any(p.endswith("safetensors") for p in fake.paths())


def test_disk_full_while_writing_is_one_line():
    import errno

    from deploykit.hub.backend import as_disk_full

    err = RuntimeError("download failed")
    err.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    mapped = as_disk_full(err, Path("/cache"))
    assert mapped is not None and mapped.exit_code == 4
    assert mapped.line().startswith("error: disk full while writing under /cache")


def test_bad_model_id_and_source(env):
    r = pull(env, "not a model")
    assert r.returncode == 3 and "OWNER/NAME" in r.stderr
    r = pull({**env, "DEPLOYKIT_HUB": "gitlab"}, REPO, source="auto")
    assert r.returncode == 3 and "DEPLOYKIT_HUB" in r.stderr


# --- references to hub models ---------------------------------------------------------------


def test_hub_ref_recognises_ids_and_stale_cache_paths(tmp_path):
    ref = hub_mod.hub_ref
    assert ref("Qwen/Qwen2.5-7B-Instruct") == hub_mod.HubRef("Qwen/Qwen2.5-7B-Instruct")
    sha = "a" * 40
    stale = f"/home/u/.cache/huggingface/hub/models--Qwen--Qwen2.5-7B/snapshots/{sha}"
    assert ref(stale) == hub_mod.HubRef("Qwen/Qwen2.5-7B", "hf", sha)
    legacy = "/root/.cache/modelscope/hub/models/Qwen/Qwen2___5-7B-Instruct"
    assert ref(legacy) == hub_mod.HubRef("Qwen/Qwen2.5-7B-Instruct", "modelscope")
    assert ref("/data/models/qwen") is None and ref("../x/y") is None
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not hub_mod.looks_like_hub_id(str(tmp_path / "a" / "b"))
    with pytest.raises(InputError, match="does not exist here"):
        resolve_base("/data/models/qwen")


# --- acceptance: merge takes pulled bases and hub ids ----------------------------------------


@pytest.fixture(scope="module")
def adapter(model, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny model, naming the hub id as its base."""
    root = tmp_path_factory.mktemp("adapter")
    base = root / "base"
    base.mkdir()
    for name, data in model.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype="auto"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(root / "adapter")
    cfg_path = root / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = REPO
    cfg_path.write_text(json.dumps(cfg))
    return root / "adapter"


def weights(merged: Path) -> str:
    """sha256 of a merged model's (single) weights shard."""
    (shard,) = merged.glob("model-*.safetensors")
    return sha256_file(shard)


@pytest.fixture(scope="module")
def reference_merge(adapter, tmp_path_factory) -> str:
    """sha256 of the merged weights with the local base (what every hub route must give)."""
    out = tmp_path_factory.mktemp("ref") / "merged"
    r = run_cli("merge", "--adapter", str(adapter), "--base", str(adapter.parent / "base"),
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return weights(out)


@pytest.mark.parametrize("source", HUBS)
def test_pulled_directory_is_a_merge_base(env, adapter, reference_merge, tmp_path, source):
    base = tmp_path / "base"
    pull_json(env, REPO, "--out", str(base), source=source)
    r = run_cli("merge", "--adapter", str(adapter), "--base", str(base),
                "--out", str(tmp_path / "m"), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert weights(tmp_path / "m") == reference_merge


@pytest.mark.parametrize("source", HUBS)
def test_merge_downloads_an_adapters_hub_base(env, fake, adapter, reference_merge, tmp_path,
                                              source):  # fmt: skip
    r = run_cli("merge", "--adapter", str(adapter), "--out", str(tmp_path / "m"),
                env={**env, "DEPLOYKIT_HUB": source})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert weights(tmp_path / "m") == reference_merge
    assert any(("/api/v1/" in p) == (source == "modelscope") for p in fake.paths())
    # --base accepts a hub id too, and the second time the cache answers with the hub down
    r = run_cli("merge", "--adapter", str(adapter), "--base", REPO, "--out",
                str(tmp_path / "m2"), env={**down(env), "DEPLOYKIT_HUB": source})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert weights(tmp_path / "m2") == reference_merge


def test_merge_with_a_stale_base_path(env, adapter, reference_merge, tmp_path):
    stale = tmp_path / "adapter"
    shutil.copytree(adapter, stale)
    cfg = json.loads((stale / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = f"/gone/hub/models--acme--tiny-qwen/snapshots/{C_NEW}"
    (stale / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_cli("merge", "--adapter", str(stale), "--out", str(tmp_path / "m"), env=env)
    assert r.returncode == 0, r.stderr
    assert weights(tmp_path / "m") == reference_merge
    cfg["base_model_name_or_path"] = "/gone/models/qwen-base"
    (stale / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_cli("merge", "--adapter", str(stale), "--out", str(tmp_path / "m3"), env=env)
    assert r.returncode == 3
    assert "/gone/models/qwen-base" in r.stderr and "--base" in r.stderr
