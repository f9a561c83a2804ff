"""Paths read from models.lock stay inside the store (issue 13, item 7), and a corrupt lockfile is
one integrity error (item 12). A real store on disk, real files outside it that must survive."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmctl.errors import IntegrityError, OperationFailed
from llmctl.models import ops
from llmctl.models.resolve import resolve_model
from llmctl.models.store import Store
from llmctl.paths import Paths
from tests.ggufmake import make_gguf
from tests.hubserver import sha256_of


def _store(home: Path) -> Store:
    return Store(Paths("home", home, home, home / "state", home / "cache"))


def _entry(path: str, victim: Path) -> dict:
    return {
        "file": "victim.gguf",
        "path": path,
        "size": victim.stat().st_size,
        "sha256": sha256_of(victim),
        "pulled_at": "2026-01-01T00:00:00Z",
        "repo": None,
        "revision": None,
        "source": "import",
        "chat_format": None,
    }


def _write_lock(home: Path, entries: dict) -> None:
    (home / "models").mkdir(exist_ok=True)
    (home / "models.lock").write_text(json.dumps({"version": 1, "models": entries}))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A valid GGUF outside the store: what a hostile lock entry points at."""
    return make_gguf(tmp_path / "outside" / "victim.gguf", name="victim", payload_bytes=4096)


def _escape_kinds(home: Path, victim: Path) -> dict[str, str]:
    models = home / "models"
    models.mkdir(exist_ok=True)
    (models / "link").mkdir(exist_ok=True)
    if not (models / "link" / "victim.gguf").is_symlink():
        (models / "link" / "victim.gguf").symlink_to(victim)
    if not (models / "dirlink").is_symlink():
        (models / "dirlink").symlink_to(victim.parent, target_is_directory=True)
    return {
        "dotdot": os.path.relpath(victim, models),
        "absolute": str(victim),
        "symlinked file": "link/victim.gguf",
        "symlinked dir": "dirlink/victim.gguf",
        "newline": "evil\n/victim.gguf",
        "empty": "",
        "partial": ".partial/x.part",
    }


KINDS = ["dotdot", "absolute", "symlinked file", "symlinked dir", "newline", "empty", "partial"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_a_path_outside_the_store(home: Path, victim: Path, kind: str):
    path = _escape_kinds(home, victim)[kind]
    _write_lock(home, {"evil": _entry(path, victim)})
    store = _store(home)
    entry = store.read_lock().get("evil")

    with pytest.raises(IntegrityError, match="model 'evil': its path .* must stay inside the store") as exc:
        store.model_path(entry)
    assert exc.value.exit_code == 3 and "\n" not in str(exc.value)
    # serve: resolve + the quick verify that writes a .verified stamp beside the file
    with pytest.raises(IntegrityError, match="model 'evil'"):
        r = resolve_model("evil", store)
        store.verify(r.entry, quick=True)
    assert not (victim.parent / ".victim.gguf.verified").exists()
    # list, show, verify: reported as integrity problems, the file is never read
    (info,) = ops.list_models(store)
    assert info.integrity and not info.present and "must stay inside the store" in info.problem
    (res,) = ops.verify_models(store)
    assert not res.ok and res.actual is None and "must stay inside the store" in res.message
    # render: a unit never names that file
    from llmctl.config import validate
    from llmctl.units.render import RenderOptions, render

    with pytest.raises(IntegrityError):
        render(
            validate({"services": {"chat": {"model": "evil"}}}),
            RenderOptions(llmctl="/usr/bin/llmctl", config_path="/etc/llmctl/config.yaml", paths=store.paths),
        )


@pytest.mark.parametrize("kind", KINDS)
def test_rm_drops_the_entry_and_deletes_nothing_outside(home: Path, victim: Path, kind: str):
    path = _escape_kinds(home, victim)[kind]
    _write_lock(home, {"evil": _entry(path, victim)})
    store = _store(home)
    with pytest.raises(IntegrityError, match="removed from the lock, no file was deleted"):
        store.remove("evil")
    assert victim.is_file() and victim.parent.is_dir()
    assert store.read_lock().get("evil") is None


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlinked dir"])
def test_import_over_an_escaping_entry_deletes_nothing_outside(home: Path, victim: Path, tmp_path: Path, kind: str):
    path = _escape_kinds(home, victim)[kind]
    _write_lock(home, {"evil": _entry(path, victim)})
    store = _store(home)
    other = make_gguf(tmp_path / "src" / "other.gguf", name="other", payload_bytes=2048)
    result = ops.import_file(store, other, name="evil")
    assert result.path == home / "models" / "evil" / "other.gguf"
    assert victim.is_file()
    assert store.read_lock().get("evil").path == "evil/other.gguf"


def test_the_same_file_inside_the_store_is_fine(home: Path, tmp_path: Path):
    src = make_gguf(tmp_path / "src" / "tiny.gguf", payload_bytes=2048)
    store = _store(home)
    ops.import_file(store, src, name="tiny")
    entry = store.read_lock().get("tiny")
    assert store.model_path(entry) == home / "models" / "tiny" / "tiny.gguf"
    assert store.verify(entry, quick=True)
    removed = store.remove("tiny")
    assert removed.name == "tiny" and not (home / "models" / "tiny").exists()  # the stamp went too


def test_rm_of_an_entry_that_is_a_directory_changes_nothing(home: Path, victim: Path):
    """Before: the lock entry was dropped, then unlink() raised IsADirectoryError (a traceback)."""
    _write_lock(home, {"d": _entry("d/model.gguf", victim)})
    (home / "models" / "d" / "model.gguf").mkdir(parents=True)
    store = _store(home)
    with pytest.raises(IntegrityError, match="is not a regular file; nothing removed"):
        store.remove("d")
    assert store.read_lock().get("d") is not None
    assert (home / "models" / "d" / "model.gguf").is_dir()


@pytest.mark.parametrize(
    "raw, why",
    [
        (b'{"version": 1, "models": {"\xff": {}}}', "utf-8"),
        (
            json.dumps(
                {
                    "version": 1,
                    "models": {"m": {"file": 5, "path": ["a"], "size": "big", "sha256": None, "pulled_at": 1}},
                }
            ).encode(),
            "must be a string",
        ),
        (
            json.dumps(
                {
                    "version": 1,
                    "models": {"m": {"file": "f", "path": "m/f", "size": True, "sha256": "a" * 64, "pulled_at": "t"}},
                }
            ).encode(),
            "'size' must be an integer",
        ),
        (
            json.dumps(
                {
                    "version": 1,
                    "models": {
                        "m": {"file": "f", "path": "m/f", "size": 1, "sha256": "a" * 64, "pulled_at": "t", "extra": 1}
                    },
                }
            ).encode(),
            "unknown field",
        ),
        (json.dumps({"version": 1, "models": {"m": {"path": "m/f"}}}).encode(), "is missing"),
        (json.dumps({"version": 1, "models": {"Evil\n": {}}}).encode(), "not a model name"),
        (b'{"version": 1, "models": [1]}', "'models' is not an object"),
        (b"[1, 2]", "unsupported version"),
        (b'{"version": 1, "models": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"not json", "Expecting value"),
    ],
)
def test_a_corrupt_lockfile_is_one_integrity_error(home: Path, raw: bytes, why: str):
    (home / "models.lock").write_bytes(raw)
    with pytest.raises(IntegrityError) as exc:
        _store(home).read_lock()
    assert why in str(exc.value) and "is corrupt" in str(exc.value) and "\n" not in str(exc.value)


def test_a_malformed_hub_hash_never_names_a_partial_file(home: Path, tmp_path: Path):
    """The paths-info sha256 names `.partial/<sha256>.part`: a hostile Hub (HF_ENDPOINT) could send
    '../../x' and have the pull write, resume from or delete a file outside the store."""
    from llmctl.models import hub as hubmod
    from tests.hubserver import FakeHub

    with FakeHub() as hub:
        hub.faults.linked_etag = False  # the hash comes from paths-info only
        hub.add("o/r", "f.gguf", b"GGUF" + b"\0" * 64, sha256="../../../outside/x")
        with pytest.raises(OperationFailed, match="malformed LFS sha256"):
            ops.pull(_store(home), "o/r", "f.gguf", settings=hubmod.HubSettings(hub.url, None, False))
    assert not (home / "models" / ".partial").exists() or not any((home / "models" / ".partial").iterdir())
    assert not (home.parent / "outside").exists()
