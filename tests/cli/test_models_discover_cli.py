"""`llmctl models discover` and `llmctl models import SOURCE` through the real CLI, on a stand-in
Ollama store and a stand-in Hugging Face cache built from the smoke model under their real layouts.

The smoke model goes into those stores as hard links to the session's copy: no test here writes to a
blob built from it. Tests that rewrite a blob use a tiny GGUF of their own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from llmctl.models.smoke import SMOKE_FILE, SMOKE_SHA256
from tests._stores import add_hf_file, add_ollama_model, ollama_manifest
from tests.ggufmake import make_gguf
from tests.hubserver import sha256_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_REPO = "ggml-org/gemma-3-270m-GGUF"


def lock(home: Path) -> dict:
    p = home / "models.lock"
    return json.loads(p.read_text())["models"] if p.exists() else {}


def store_files(home: Path) -> list[Path]:
    """Every file under the store (models/ and models/.partial/)."""
    return [p for p in (home / "models").rglob("*") if p.is_file()] if (home / "models").exists() else []


@pytest.fixture
def smoke_file(smoke_store: Path) -> Path:
    return smoke_store / "models" / "smoke" / SMOKE_FILE


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point discover at this test's stores only (never at the host's real ones)."""
    paths = {"ollama": tmp_path / "ollama", "hf": tmp_path / "hf"}
    monkeypatch.setenv("OLLAMA_MODELS", str(paths["ollama"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(paths["hf"]))
    return paths


@pytest.fixture
def smoke_stores(stores, smoke_file) -> dict[str, Path]:
    """The smoke model as Ollama's gemma3:270m and as the HF cache's ggml-org/gemma-3-270m-GGUF."""
    add_ollama_model(stores["ollama"], smoke_file, "gemma3", "270m")
    add_hf_file(stores["hf"], smoke_file, HF_REPO, "gemma-3-270m-Q4_K_M.gguf", COMMIT)
    return stores


@pytest.mark.model
def test_discover_lists_both_stores_text_and_json(home, llmctl, smoke_stores, write_config, tmp_path):
    plain = tmp_path / "plain"
    make_gguf(plain / "Tiny-Q8_0.gguf", file_type=7, payload_bytes=4096)
    write_config(f"version: 1\ndiscover:\n  paths: [{plain}]\n")

    r = llmctl("models", "discover")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["source", "size", "quant", "arch", "sha256"]
    ollama = next(ln for ln in lines if ln.startswith("ollama:gemma3:270m "))
    hf = next(ln for ln in lines if ln.startswith(f"hf-cache:{HF_REPO}/gemma-3-270m-Q4_K_M.gguf "))
    for line in (ollama, hf):
        assert "Q4_K_M" in line and "gemma3" in line and SMOKE_SHA256[:12] in line
    assert any(ln.startswith(str(plain / "Tiny-Q8_0.gguf")) and " none " in ln for ln in lines)

    r = llmctl("models", "discover", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "models.discover" and doc["schema_version"] == 1 and doc["warnings"] == []
    models = {m["source"]: m for m in doc["models"]}
    assert list(models) == [
        "ollama:gemma3:270m",
        f"hf-cache:{HF_REPO}/gemma-3-270m-Q4_K_M.gguf",
        str(plain / "Tiny-Q8_0.gguf"),
    ]
    o = models["ollama:gemma3:270m"]
    assert (o["kind"], o["sha256"], o["architecture"], o["quantization"], o["name"]) == (
        "ollama",
        SMOKE_SHA256,
        "gemma3",
        "Q4_K_M",
        "gemma3-270m",
    )
    assert o["size"] == os.path.getsize(smoke_stores["ollama"] / "blobs" / f"sha256-{SMOKE_SHA256}")
    h = models[f"hf-cache:{HF_REPO}/gemma-3-270m-Q4_K_M.gguf"]
    assert (h["sha256"], h["repo"], h["revision"], h["architecture"]) == (SMOKE_SHA256, HF_REPO, COMMIT, "gemma3")
    assert models[str(plain / "Tiny-Q8_0.gguf")]["sha256"] is None
    assert [s["kind"] for s in doc["searched"]] == ["ollama", "hf-cache", "path"]


@pytest.mark.model
def test_import_ollama_verifies_hard_links_and_records(home, llmctl, smoke_stores):
    blob = smoke_stores["ollama"] / "blobs" / f"sha256-{SMOKE_SHA256}"
    r = llmctl("models", "import", "ollama:gemma3:270m", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["models"]
    assert (res["name"], res["status"], res["sha256"], res["source"], res["linked"]) == (
        "gemma3-270m",
        "installed",
        SMOKE_SHA256,
        "ollama:gemma3:270m",
        True,
    )
    entry = lock(home)["gemma3-270m"]
    assert (entry["sha256"], entry["source"], entry["size"]) == (
        SMOKE_SHA256,
        "ollama:gemma3:270m",
        blob.stat().st_size,
    )
    stored = home / "models" / entry["path"]
    assert stored.name == "gemma3-270m.gguf" and os.path.samefile(stored, blob)
    assert [p.name for p in store_files(home) if ".partial" in p.parts] == []

    r = llmctl("models", "discover")
    assert "gemma3-270m" in next(ln for ln in r.stdout.splitlines() if ln.startswith("ollama:"))
    r = llmctl("models", "import", "ollama:gemma3:270m")  # again: nothing to do, nothing read
    assert r.returncode == 0 and "already installed" in r.stderr
    r = llmctl("models", "verify", "gemma3-270m")
    assert r.returncode == 0 and f"sha256 {SMOKE_SHA256}" in r.stdout
    r = llmctl("models", "rm", "gemma3-270m")
    assert r.returncode == 0 and blob.is_file()  # removing ours leaves Ollama's


@pytest.mark.model
def test_import_hf_cache_copy_and_name(home, llmctl, smoke_stores):
    src = f"hf-cache:{HF_REPO}/gemma-3-270m-Q4_K_M.gguf"
    r = llmctl("models", "import", src, "--name", "g270", "--copy")
    assert r.returncode == 0, r.stderr
    assert "g270: installed, copied" in r.stderr
    entry = lock(home)["g270"]
    assert (entry["repo"], entry["revision"], entry["file"], entry["source"], entry["sha256"]) == (
        HF_REPO,
        COMMIT,
        "gemma-3-270m-Q4_K_M.gguf",
        src,
        SMOKE_SHA256,
    )
    stored = home / "models" / entry["path"]
    blob = smoke_stores["hf"] / f"models--{HF_REPO.replace('/', '--')}" / "blobs" / SMOKE_SHA256
    assert not os.path.samefile(stored, blob) and sha256_of(stored) == SMOKE_SHA256
    assert oct(stored.stat().st_mode & 0o777) == "0o644"


@pytest.mark.model
@pytest.mark.parametrize("copy", [False, True], ids=["link", "copy"])
def test_blob_not_matching_its_digest_exits_3_and_leaves_nothing(home, llmctl, stores, smoke_file, copy):
    # The smoke model's bytes, filed under another model's digest.
    wrong = "ab" * 32
    add_ollama_model(stores["ollama"], smoke_file, "liar", digest=wrong)
    add_hf_file(stores["hf"], smoke_file, "org/liar", "liar.gguf", COMMIT, blob=wrong)
    for source in ("ollama:liar", "hf-cache:org/liar/liar.gguf"):
        r = llmctl("models", "import", source, *(["--copy"] if copy else []))
        assert r.returncode == 3, r.stderr
        assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1
        assert wrong in r.stderr and SMOKE_SHA256 in r.stderr and "nothing imported" in r.stderr
        assert lock(home) == {}
        assert store_files(home) == []


@pytest.mark.model
def test_import_pinned_sha256_must_agree_with_the_store(home, llmctl, smoke_stores):
    r = llmctl("models", "import", "ollama:gemma3:270m", "--sha256", "0" * 64)
    assert r.returncode == 3 and "pinned" in r.stderr
    assert lock(home) == {} and store_files(home) == []
    r = llmctl("models", "import", "ollama:gemma3:270m", "--sha256", SMOKE_SHA256.upper())
    assert r.returncode == 0, r.stderr


def test_hostile_stores_warn_in_one_line_and_import_exits_3(home, llmctl, stores, tmp_path):
    tiny = make_gguf(tmp_path / "src" / "tiny.gguf", payload_bytes=4096)
    add_ollama_model(stores["ollama"], tiny, "good")
    man = stores["ollama"] / "manifests" / "registry.ollama.ai" / "library"
    size = tiny.stat().st_size
    for model, text in [
        ("badjson", "{"),
        ("nothex", json.dumps(ollama_manifest("sha256:" + "x" * 64, size))),
        ("escape", json.dumps(ollama_manifest("sha256:../../../../etc/shadow", size))),
    ]:
        (man / model).mkdir()
        (man / model / "latest").write_text(text)
    outside = make_gguf(tmp_path / "elsewhere" / "secret.gguf", payload_bytes=1024)
    (stores["ollama"] / "blobs" / ("sha256-" + "9" * 64)).symlink_to(outside)
    (man / "linkout").mkdir()
    (man / "linkout" / "latest").write_text(json.dumps(ollama_manifest("sha256:" + "9" * 64, outside.stat().st_size)))
    snap = stores["hf"] / "models--org--out" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "out.gguf").symlink_to(outside)

    r = llmctl("models", "discover")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warnings = r.stderr.splitlines()
    assert len(warnings) == 5 and all(w.startswith("Warning: ") for w in warnings)
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ["ollama:good:latest"]
    r = llmctl("models", "discover", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["warnings"]) == 5

    for source, words in [
        ("ollama:badjson", "not JSON"),
        ("ollama:nothex", "not sha256:<64 hex digits>"),
        ("ollama:escape", "not sha256:<64 hex digits>"),
        ("ollama:linkout", "points outside its store"),
        ("hf-cache:org/out/out.gguf", "points outside its store"),
    ]:
        r = llmctl("models", "import", source)
        assert r.returncode == 3, (source, r.stderr)
        assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1 and words in r.stderr
        assert "Traceback" not in r.stderr
    assert lock(home) == {} and store_files(home) == []
    assert llmctl("models", "import", "ollama:good").returncode == 0


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["models", "import", "ollama:"], 2, "not an Ollama model name"),
        (["models", "import", "ollama:../../etc/passwd"], 2, "not an Ollama model name"),
        (["models", "import", "hf-cache:nope"], 2, "not a Hugging Face cache file"),
        (["models", "import", "ollama:absent"], 2, "not found in"),
        (["models", "import", "hf-cache:org/repo/absent.gguf"], 2, "not found in"),
        (["models", "import", "ollama:x", "--name", "Bad Name"], 2, "--name"),
        (["models", "import", "ollama:x", "--sha256", "nothex"], 2, "--sha256"),
    ],
)
def test_bad_sources_one_line_and_exit_code(home, llmctl, stores, args, code, words):
    r = llmctl(*args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert lock(home) == {}


def test_bad_discover_paths_config_names_the_key(home, llmctl, stores, write_config):
    write_config("version: 1\ndiscover:\n  paths: [relative/dir]\n")
    r = llmctl("models", "discover")
    assert r.returncode == 2 and "discover.paths" in r.stderr and "absolute" in r.stderr


def test_nothing_found_says_where_it_looked(home, llmctl, stores):
    r = llmctl("models", "discover")
    assert r.returncode == 0 and r.stdout == ""
    assert "no GGUF models found" in r.stderr and str(stores["ollama"]) in r.stderr


def test_linked_file_rewritten_in_place_fails_verify(home, llmctl, stores, tmp_path):
    """What a hard link means later: another program rewriting its blob in place changes ours too,
    and `models verify` (and serve's check) see it: exit 3 naming the file and both hashes."""
    tiny = make_gguf(tmp_path / "src" / "tiny.gguf", payload_bytes=8192)
    add_ollama_model(stores["ollama"], tiny, "tiny", link=False)
    assert llmctl("models", "import", "ollama:tiny").returncode == 0
    blob = stores["ollama"] / "blobs" / f"sha256-{sha256_of(tiny)}"
    stored = home / "models" / lock(home)["tiny"]["path"]
    assert os.path.samefile(blob, stored)
    with open(blob, "r+b") as fh:  # in place, as a careless tool would
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    r = llmctl("models", "verify", "tiny")
    assert r.returncode == 3
    assert str(stored) in r.stderr and sha256_of(tiny) in r.stderr and sha256_of(blob) in r.stderr


def test_other_file_system_is_copied(home, llmctl, monkeypatch, tmp_path):
    """A store on another file system cannot be hard-linked: the import copies (a real EXDEV)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(home).st_dev:
        pytest.skip("needs /dev/shm on a file system other than the test's store")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        root = Path(other) / "ollama"
        tiny = make_gguf(tmp_path / "src" / "tiny.gguf", payload_bytes=8192)
        add_ollama_model(root, tiny, "tiny", link=False)
        monkeypatch.setenv("OLLAMA_MODELS", str(root))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        r = llmctl("models", "import", "ollama:tiny", "--json")
        assert r.returncode == 0, r.stderr
        (res,) = json.loads(r.stdout)["models"]
        assert res["linked"] is False and res["sha256"] == sha256_of(tiny)
        assert (root / "blobs" / f"sha256-{sha256_of(tiny)}").stat().st_nlink == 1


@pytest.mark.parametrize("change", ["other_owner", "group_writable", "private"])
def test_a_link_that_would_widen_powers_is_a_copy(home, llmctl, stores, tmp_path, change):
    """Linked only when it changes nothing: a blob of another user (Ollama's service user) would stay
    writable by that user through the link, a group-writable one by the group, and a private one
    would have to be made readable. Those are copied, and the other store's file is left as it was."""
    tiny = make_gguf(tmp_path / "src" / "tiny.gguf", payload_bytes=8192)
    add_ollama_model(stores["ollama"], tiny, "tiny", link=False)
    blob = stores["ollama"] / "blobs" / f"sha256-{sha256_of(tiny)}"
    if change == "other_owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the blob to another user")
        os.chown(blob, 65534, 65534)
    else:
        blob.chmod({"group_writable": 0o664, "private": 0o600}[change])
    before = blob.stat()
    r = llmctl("models", "import", "ollama:tiny", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["linked"] is False
    after = blob.stat()
    assert after.st_nlink == 1 and (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    stored = home / "models" / lock(home)["tiny"]["path"]
    assert stored.stat().st_uid == os.geteuid() and stored.stat().st_mode & 0o777 == 0o644
