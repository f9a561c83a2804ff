"""llmctl.models.discover on stand-in Ollama stores, HF caches and plain directories (tiny real GGUFs).

Every hostile entry must end up as one warning line (discover) or one CorruptEntry, exit 3 (lookup),
never a traceback, and must not hide the healthy entries beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmctl.errors import ExitCode, NotFound, UsageError
from llmctl.models import discover as d
from tests._stores import add_hf_file, add_ollama_model, ollama_manifest
from tests.ggufmake import make_gguf
from tests.hubserver import sha256_of

C1, C2 = "1" * 40, "2" * 40


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return make_gguf(tmp_path / "src" / "tiny.gguf", arch="qwen2", file_type=7, payload_bytes=32 << 10)


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return make_gguf(tmp_path / "src" / "other.gguf", arch="llama", file_type=15, payload_bytes=16 << 10, seed=1)


@pytest.fixture
def stores(tmp_path: Path) -> dict:
    """The environment that points discover at this test's stores (and nowhere else)."""
    return {"OLLAMA_MODELS": str(tmp_path / "ollama"), "HF_HUB_CACHE": str(tmp_path / "hf")}


def run(env: dict, paths=()) -> d.Discovery:
    return d.discover([Path(p) for p in paths], env=env)


def by_source(result: d.Discovery) -> dict[str, d.Found]:
    return {f.source: f for f in result.models}


def assert_one_line(warnings) -> None:
    for w in warnings:
        assert "\n" not in w and "\r" not in w and "Traceback" not in w, w


# -- where the stores are -------------------------------------------------------------------------


def test_store_locations_follow_each_programs_own_rules(tmp_path):
    home = Path.home()
    assert d.ollama_roots({}) == [home / ".ollama/models", Path("/usr/share/ollama/.ollama/models")]
    assert d.ollama_roots({"OLLAMA_MODELS": "/data/ollama"}) == [Path("/data/ollama")]
    assert d.ollama_roots({"OLLAMA_MODELS": ""})[0] == home / ".ollama/models"  # empty = unset, as in Ollama
    assert d.hf_cache_root({}) == home / ".cache/huggingface/hub"
    assert d.hf_cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert d.hf_cache_root({"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h/hub")
    assert d.hf_cache_root({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}) == Path("/c")


# -- what it finds --------------------------------------------------------------------------------


def test_ollama_names_as_ollama_shows_them(stores, gguf, other):
    root = Path(stores["OLLAMA_MODELS"])
    add_ollama_model(root, gguf, "tiny", "7b")
    add_ollama_model(root, gguf, "tiny")  # :latest, same blob
    add_ollama_model(root, other, "coder", "q4", namespace="someone")
    add_ollama_model(root, other, "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M", namespace="bartowski", host="hf.co")
    found = by_source(run(stores))
    assert set(found) == {
        "ollama:tiny:7b",
        "ollama:tiny:latest",
        "ollama:someone/coder:q4",
        "ollama:hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    }
    f = found["ollama:tiny:7b"]
    assert (f.kind, f.sha256, f.size, f.name, f.file) == (
        "ollama",
        sha256_of(gguf),
        gguf.stat().st_size,
        "tiny-7b",
        "tiny-7b.gguf",
    )
    assert (f.gguf.architecture, f.gguf.quantization) == ("qwen2", "Q8_0")
    assert found["ollama:tiny:latest"].name == "tiny"
    assert found["ollama:someone/coder:q4"].gguf.quantization == "Q4_K_M"


def test_ollama_skips_manifests_without_a_gguf_layer(stores, gguf):
    root = Path(stores["OLLAMA_MODELS"])
    manifest = add_ollama_model(root, gguf, "tiny")
    manifest.write_text(
        json.dumps(
            ollama_manifest(
                "sha256:" + sha256_of(gguf), gguf.stat().st_size, media_type="application/vnd.ollama.image.adapter"
            )
        )
    )
    result = run(stores)
    assert result.models == () and result.warnings == ()


def test_hf_cache_main_first_other_bytes_by_commit_git_blobs_have_no_digest(stores, gguf, other):
    cache = Path(stores["HF_HUB_CACHE"])
    add_hf_file(cache, other, "org/Tiny-GGUF", "tiny-Q8_0.gguf", C1, main=False)  # an older snapshot
    add_hf_file(cache, gguf, "org/Tiny-GGUF", "tiny-Q8_0.gguf", C2)  # refs/main
    add_hf_file(cache, gguf, "org/Tiny-GGUF", "sub/dir/same.gguf", C1, main=False)
    add_hf_file(cache, other, "org/Plain", "git.gguf", C1, blob="e" * 40)  # a non-LFS file
    (cache / "models--org--Tiny-GGUF" / "snapshots" / C2 / "README.md").write_text("not a model")
    found = by_source(run(stores))
    assert set(found) == {
        "hf-cache:org/Tiny-GGUF/tiny-Q8_0.gguf",
        f"hf-cache:org/Tiny-GGUF/tiny-Q8_0.gguf@{C1}",
        "hf-cache:org/Tiny-GGUF/sub/dir/same.gguf",
        "hf-cache:org/Plain/git.gguf",
    }
    main = found["hf-cache:org/Tiny-GGUF/tiny-Q8_0.gguf"]
    assert (main.sha256, main.revision, main.repo, main.file) == (
        sha256_of(gguf),
        C2,
        "org/Tiny-GGUF",
        "tiny-Q8_0.gguf",
    )
    assert found[f"hf-cache:org/Tiny-GGUF/tiny-Q8_0.gguf@{C1}"].sha256 == sha256_of(other)
    assert found["hf-cache:org/Plain/git.gguf"].sha256 is None
    assert "git SHA-1" in found["hf-cache:org/Plain/git.gguf"].digest_note
    assert d.lookup(f"hf-cache:org/Tiny-GGUF/tiny-Q8_0.gguf@{C2}", env=stores).sha256 == sha256_of(gguf)


def test_plain_directories_recursive_no_digest(tmp_path, stores, gguf):
    plain = tmp_path / "plain"
    (plain / "a" / "b").mkdir(parents=True)
    (plain / "a" / "b" / "deep.GGUF").write_bytes(gguf.read_bytes())
    (plain / "notes.txt").write_text("x")
    (plain / "link.gguf").symlink_to(plain / "a" / "b" / "deep.GGUF")
    result = run(stores, [plain, tmp_path / "absent"])
    found = by_source(result)
    assert set(found) == {str(plain / "a/b/deep.GGUF"), str(plain / "link.gguf")}
    assert all(f.sha256 is None and f.kind == "path" for f in found.values())
    assert [(s.kind, s.exists) for s in result.searched][-2:] == [("path", True), ("path", False)]


def test_a_second_ollama_store_with_other_bytes_is_named(tmp_path, gguf, other):
    """Two Ollama stores (a user's and the service's) may both hold tiny:latest: the first wins."""
    first, second = tmp_path / "user-ollama", tmp_path / "service-ollama"
    add_ollama_model(first, gguf, "tiny")
    add_ollama_model(second, other, "tiny")
    add_ollama_model(second, gguf, "same")
    add_ollama_model(first, gguf, "same")
    result = d.discover(stores=[("ollama", first), ("ollama", second)])
    found = by_source(result)
    assert set(found) == {"ollama:tiny:latest", "ollama:same:latest"}
    assert found["ollama:tiny:latest"].store == first and found["ollama:tiny:latest"].sha256 == sha256_of(gguf)
    (w,) = result.warnings  # the same bytes twice are not worth a line
    assert "ollama:tiny:latest" in w and str(second) in w and "import takes the first" in w


# -- hostile and corrupt entries --------------------------------------------------------------------


def test_hostile_ollama_manifests_are_one_line_warnings(tmp_path, stores, gguf):
    root = Path(stores["OLLAMA_MODELS"])
    add_ollama_model(root, gguf, "good")
    man = root / "manifests" / "registry.ollama.ai" / "library"
    size = gguf.stat().st_size

    def manifest(model: str, text: str) -> None:
        (man / model).mkdir(parents=True)
        (man / model / "latest").write_text(text)

    manifest("badjson", "{not json")
    manifest("notdict", "[1, 2]")
    manifest("nolayers", json.dumps({"layers": "x"}))
    manifest("nothex", json.dumps(ollama_manifest("sha256:" + "z" * 64, size)))
    manifest("escape", json.dumps(ollama_manifest("sha256:../../../../etc/passwd", size)))
    manifest("newline", json.dumps(ollama_manifest("sha256:" + sha256_of(gguf) + "\n", size)))
    manifest("badsize", json.dumps(ollama_manifest("sha256:" + sha256_of(gguf), size + 1)))
    manifest("nosize", json.dumps(ollama_manifest("sha256:" + sha256_of(gguf), True)))
    manifest("missing", json.dumps(ollama_manifest("sha256:" + "a" * 64, size)))
    manifest("twomodels", json.dumps({"layers": ollama_manifest("sha256:" + sha256_of(gguf), size)["layers"] * 2}))
    manifest("huge", " " * (d.MANIFEST_MAX_BYTES + 1))
    # a blob that is a symlink pointing out of the store
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(gguf.read_bytes())
    (root / "blobs" / ("sha256-" + "b" * 64)).symlink_to(outside)
    manifest("blobout", json.dumps(ollama_manifest("sha256:" + "b" * 64, size)))
    # a manifest that is a symlink pointing out of the store
    evil = tmp_path / "evil-manifest"
    evil.write_text(json.dumps(ollama_manifest("sha256:" + sha256_of(gguf), size)))
    (man / "linkout").mkdir()
    (man / "linkout" / "latest").symlink_to(evil)
    # a symlink loop, a name Ollama would never write, a blob that is not GGUF
    (man / "loop").mkdir()
    (man / "loop" / "latest").symlink_to(man / "loop" / "latest")
    (man / "bad name").mkdir()
    (man / "bad name" / "latest").write_text("{}")
    junk = root / "blobs" / ("sha256-" + "f" * 64)
    junk.write_bytes(b"NOTGGUF" * 10)
    manifest("notgguf", json.dumps(ollama_manifest("sha256:" + "f" * 64, 70)))

    result = run(stores)
    assert [f.source for f in result.models] == ["ollama:good:latest"]
    assert_one_line(result.warnings)
    text = "\n".join(result.warnings)
    for model, words in [
        ("badjson", "not JSON"),
        ("notdict", "no list of layers"),
        ("nolayers", "no list of layers"),
        ("nothex", "is not sha256:<64 hex digits>"),
        ("escape", "is not sha256:<64 hex digits>"),
        ("newline", "is not sha256:<64 hex digits>"),
        ("badsize", "the manifest says"),
        ("nosize", "not a number of bytes"),
        ("missing", "the model blob is missing"),
        ("twomodels", "more than one model layer"),
        ("huge", "larger than"),
        ("blobout", "points outside its store"),
        ("linkout", "points outside its store"),
        ("loop", "cannot be resolved"),
        ("notgguf", "not a GGUF file"),
    ]:
        prefixes = (f"ollama:{model}:latest ", f"ollama:{model}:latest: ")
        line = next((w for w in result.warnings if w.startswith(prefixes)), None)
        assert line is not None and words in line, (model, text)
    assert any("bad name" in w and "not an Ollama model name" in w for w in result.warnings)
    assert len(result.warnings) == 16
    # import of one of them: a CorruptEntry, exit 3, with the same line
    with pytest.raises(d.CorruptEntry) as exc:
        d.lookup("ollama:blobout", env=stores)
    assert exc.value.exit_code == ExitCode.INTEGRITY and "points outside its store" in exc.value.message


def test_hostile_hf_cache_entries_are_one_line_warnings(tmp_path, stores, gguf):
    cache = Path(stores["HF_HUB_CACHE"])
    add_hf_file(cache, gguf, "org/good", "good.gguf", C1)
    # a snapshot file pointing out of the cache
    outside = tmp_path / "secret.gguf"
    outside.write_bytes(gguf.read_bytes())
    snap = cache / "models--org--out" / "snapshots" / C1
    snap.mkdir(parents=True)
    (snap / "x.gguf").symlink_to(outside)
    # pointing into another repository's blobs instead of its own
    snap = cache / "models--org--cross" / "snapshots" / C1
    snap.mkdir(parents=True)
    (cache / "models--org--cross" / "blobs").mkdir()
    (snap / "y.gguf").symlink_to(f"../../../models--org--good/blobs/{sha256_of(gguf)}")
    # a broken symlink (the scanner's own warning), a blob name that is not a hash, control characters
    add_hf_file(cache, gguf, "org/broken", "b.gguf", C1)
    (cache / "models--org--broken" / "blobs" / sha256_of(gguf)).unlink()
    add_hf_file(cache, gguf, "org/odd", "o.gguf", C1, blob="not-a-hash")
    add_hf_file(cache, gguf, "org/ctl", "evil\nname.gguf", C1)
    add_hf_file(cache, gguf, "org/notcommit", "n.gguf", "main")
    # a dataset's corruption is not reported
    (cache / "datasets--org--data").mkdir()

    result = run(stores)
    assert [f.source for f in result.models] == ["hf-cache:org/good/good.gguf"]
    assert_one_line(result.warnings)
    for words in [
        "hf-cache:org/out/x.gguf",
        "hf-cache:org/cross/y.gguf",
        "models--org--broken",
        "hf-cache:org/odd/o.gguf",
        "evil\\nname.gguf",
        "hf-cache:org/notcommit/n.gguf",
    ]:
        assert any(words in w for w in result.warnings), (words, result.warnings)
    assert not any("datasets--" in w for w in result.warnings)
    assert len(result.warnings) == 6
    with pytest.raises(d.CorruptEntry, match="points outside its store"):
        d.lookup("hf-cache:org/out/x.gguf", env=stores)


def test_plain_directory_symlink_out_is_refused(tmp_path, stores, gguf):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "out.gguf").symlink_to(gguf)
    (plain / "sub").symlink_to(gguf.parent, target_is_directory=True)  # not followed
    result = run(stores, [plain])
    assert result.models == ()
    (w,) = result.warnings
    assert "out.gguf" in w and "points outside its store" in w


# -- lookup ---------------------------------------------------------------------------------------


def test_lookup_ollama_default_tag_and_case(stores, gguf):
    add_ollama_model(Path(stores["OLLAMA_MODELS"]), gguf, "Tiny")
    assert d.lookup("ollama:tiny", env=stores).source == "ollama:Tiny:latest"
    assert d.lookup("ollama:TINY:LATEST", env=stores).sha256 == sha256_of(gguf)


@pytest.mark.parametrize(
    "source,error,words",
    [
        ("ollama:", UsageError, "not an Ollama model name"),
        ("ollama:../../etc/passwd", UsageError, "not an Ollama model name"),
        ("ollama:/abs", UsageError, "not an Ollama model name"),
        ("ollama:a\nb", UsageError, "not an Ollama model name"),
        ("hf-cache:org", UsageError, "not a Hugging Face cache file"),
        ("ollama:nope", NotFound, "not found in"),
        ("hf-cache:org/repo/none.gguf", NotFound, "not found in"),
    ],
)
def test_lookup_bad_ids(stores, source, error, words):
    with pytest.raises(error, match=words) as exc:
        d.lookup(source, env=stores)
    assert exc.value.exit_code == ExitCode.USAGE
    assert "\n" not in exc.value.message


def test_lookup_never_follows_names_out_of_the_store(tmp_path, stores, gguf):
    """A manifest dir named '..' cannot be made; a source id with '..' is refused before any path is built."""
    os.makedirs(Path(stores["OLLAMA_MODELS"]) / "manifests")
    with pytest.raises(UsageError):
        d.lookup("ollama:registry.ollama.ai/../../x", env=stores)


def test_hf_shared_blob_store_layout(stores, gguf):
    """huggingface_hub 2.x may keep a repository's blob as a link into the cache-wide store
    (<cache>/blobs/<2 hex>/<xet hash>): the digest is still the repository blob's name (the LFS
    sha256), and the bytes stay inside the cache."""
    cache = Path(stores["HF_HUB_CACHE"])
    add_hf_file(cache, gguf, "org/shared", "s.gguf", C1)
    xet = "7" * 64
    shared = cache / "blobs" / xet[:2] / xet
    shared.parent.mkdir(parents=True)
    repo_blob = cache / "models--org--shared" / "blobs" / sha256_of(gguf)
    repo_blob.rename(shared)
    repo_blob.symlink_to(os.path.relpath(shared, repo_blob.parent))
    (cache / "blobs" / ".huggingface-shared-blobs").write_text("1\n")
    result = run(stores)
    assert result.warnings == ()
    (f,) = result.models
    assert (f.source, f.sha256, f.real_path) == ("hf-cache:org/shared/s.gguf", sha256_of(gguf), shared.resolve())
