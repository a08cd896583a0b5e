"""`deploykit modelfile --gguf` detects the family from a converted GGUF's own chat template."""

from __future__ import annotations

import json

import pytest

from deploykit.ollama import families, modelfile
from tests.support.cli import invoke


@pytest.mark.parametrize(("arch", "family"), [("qwen2", "qwen2.5"), ("llama", "llama3")])
def test_cli_modelfile_auto_detects_from_gguf(f16, tmp_path, arch, family):
    out = tmp_path / "release" / "Modelfile"
    r = invoke("modelfile", "--gguf", str(f16[arch]), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (result["family"], result["detected"]) == (family, True)
    req = modelfile.create_request(modelfile.parse(out.read_text()))
    assert (out.parent / req["from"]).resolve() == f16[arch].resolve()
    fam = families.get(family)
    assert req["template"] == fam.template
    assert req["parameters"]["stop"][: len(fam.stop)] == list(fam.stop)
    eos = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>"}[arch]
    assert eos in req["parameters"]["stop"]
