"""`make vendor`: the pinned sdist is verified before anything is extracted."""

from __future__ import annotations

import io
import tarfile

import pytest

from deploykit.core.errors import DownloadError
from deploykit.core.paths import cache_dir
from deploykit.llamacpp import vendor


def test_vendored_tree_matches_the_committed_pin(tree):
    pin = vendor.Pin.load()
    stamp = vendor.vendored_stamp(tree.path)
    assert stamp["sha256"] == pin.sha256 and stamp["llama_cpp_commit"] == pin.llama_cpp_commit
    assert tree.commit == pin.llama_cpp_commit
    assert not (tree.path / ".git").exists()  # the submodule link is left out
    for path in (
        "convert_hf_to_gguf.py",
        "conversion",
        "gguf-py/gguf",
        "tools/quantize",
        "models/ggml-vocab-qwen2.gguf.inp",
        "models/templates",
    ):
        assert (tree.path / path).exists(), path


def test_wrong_sdist_is_refused_and_nothing_is_written(tmp_path):
    fake = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('not llama.cpp')\n"
        info = tarfile.TarInfo("llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    fake.write_bytes(buf.getvalue())
    dest = tmp_path / "llama.cpp"
    with pytest.raises(DownloadError, match="sha256"):
        vendor.fetch(dest=dest, sdist=fake)
    assert not dest.exists()


def test_extract_from_the_cached_sdist(tmp_path):
    pin = vendor.Pin.load()
    sdist = cache_dir() / "sdist" / pin.filename
    if not sdist.is_file():
        pytest.skip("no cached sdist (make vendor fills it)")
    dest = tmp_path / "llama.cpp"
    result = vendor.fetch(dest=dest, sdist=sdist)
    assert result["action"] == "extracted"
    assert (dest / "convert_hf_to_gguf.py").is_file()
    assert vendor.vendored_stamp(dest)["sha256"] == pin.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["llama.cpp"]  # no temp dirs left behind
    assert vendor.fetch(dest=dest)["action"] == "up-to-date"


def test_a_tree_deploykit_did_not_extract_is_never_replaced(tmp_path):
    from deploykit.core.errors import InputError
    from deploykit.llamacpp import vendor

    dest = tmp_path / "llama.cpp"
    dest.mkdir()
    (dest / "my-change.txt").write_text("a submodule checkout, say")
    with pytest.raises(InputError, match="was not extracted by deploykit"):
        vendor.fetch(dest=dest, force=True)
    assert (dest / "my-change.txt").read_text() == "a submodule checkout, say"
