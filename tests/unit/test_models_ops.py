"""Small pieces of llmctl.models.ops and the fake Hub itself (through the real huggingface_hub API)."""

from __future__ import annotations

import pytest

from llmctl.errors import UsageError
from llmctl.models.ops import check_name, default_name, normalize_sha256
from tests.hubserver import FakeHub


@pytest.mark.parametrize(
    "file,name",
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "llama-3.2-1b-instruct-q4_k_m"),
        ("sub/dir/Model F16.gguf", "model-f16"),
        ("___.gguf", "model"),
    ],
)
def test_default_name(file, name):
    assert default_name(file) == name
    check_name(default_name(file))


def test_normalize_sha256():
    assert normalize_sha256("SHA256:" + "AB" * 32) == "ab" * 32
    with pytest.raises(UsageError):
        normalize_sha256("abc")


def test_fake_hub_answers_the_real_client(monkeypatch):
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    with FakeHub() as hub:
        commit = hub.add("o/r", "a.gguf", b"GGUF" + b"\0" * 100)
        api = HfApi(endpoint=hub.url, token=False)
        info = api.model_info("o/r")
        assert info.sha == commit and [s.rfilename for s in info.siblings] == ["a.gguf"]
        (f,) = api.get_paths_info("o/r", ["a.gguf", "missing"], revision=commit)
        assert f.lfs.size == 104 and len(f.lfs.sha256) == 64
        meta = get_hf_file_metadata(hf_hub_url("o/r", "a.gguf", endpoint=hub.url), token=False)
        assert (meta.commit_hash, meta.size, meta.etag) == (commit, 104, f.lfs.sha256)
