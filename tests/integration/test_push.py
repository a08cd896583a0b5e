"""`ship --push`: the demo fine-tune shipped, verified and published at the end of the ship,
to the loopback fake hub (the real huggingface_hub client) and through the Ollama test
server's /api/push."""

from __future__ import annotations

import json

import yaml

from tests.support.cli import run_cli
from tests.support.fakehub import client_env
from tests.support.fakehub_upload import UploadHub

TOKEN = "hf_write_token_for_tests"


def test_ship_push_publishes_the_verified_bundle(demo_dirs, ollama_server, tmp_path):
    d = demo_dirs["qwen2"]
    hub = UploadHub(repos={}, tokens={TOKEN: "write"}).start()
    try:
        env = {**client_env(hub, tmp_path), "HF_TOKEN": TOKEN}
        del env["DEPLOYKIT_CACHE"]  # the built llama.cpp tools are in the user's cache
        out = tmp_path / "dist"
        args = [
            "ship", "--adapter", str(d / "adapter"), "--quant", "q8_0", "--name", "demo",
            "--probes", str(d / "probes.json"), "--target", "none", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--host", ollama_server,
            "--push", "hf:me/demo", "--push", "ollama:me/demo", "--json",
        ]  # fmt: skip
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert TOKEN not in proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        hf, ollama = result["push"]
        assert hf["commit"] and hf["target"] == "hf:me/demo"
        assert [p["model"] for p in ollama["pushed"]] == ["me/demo:q8_0", "me/demo:latest"]
        files = hub.files("me/demo")
        gguf = out / "demo-Q8_0.gguf"
        assert files[gguf.name] == gguf.read_bytes()
        card = files["README.md"].decode()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert {"gguf", "ollama", "qwen2.5"} <= set(meta["tags"])
        assert "Not health-checked on an Ollama server" in card
        assert "| Q8_0 |" in card and "passed" in card
        assert str(tmp_path) not in files["manifest.json"].decode()
    finally:
        hub.stop()
