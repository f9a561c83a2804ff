"""`llmctl models pull` end to end: the real CLI in a subprocess, the real huggingface_hub client,
against tests/hubserver.py (a real HTTP server on 127.0.0.1 answering like the Hub) serving real
GGUF files. Every case asserts the exit code, the store and the lockfile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ggufmake import make_gguf
from tests.hubserver import FakeHub, sha256_of

REPO = "acme/Tiny-GGUF"
FILE = "Tiny-Q4_K_M.gguf"
NAME = "tiny-q4_k_m"  # the default name derived from FILE


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    return make_gguf(tmp_path_factory.mktemp("gguf") / FILE, payload_bytes=6 << 20)


@pytest.fixture
def hub(gguf_file: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as hub:
        hub.add(REPO, FILE, gguf_file)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HOME", str(Path(os.environ["LLMCTL_HOME"]) / "hf-home"))  # no stored token
        yield hub


def lock(home: Path) -> dict:
    p = home / "models.lock"
    return json.loads(p.read_text())["models"] if p.exists() else {}


def model_files(home: Path) -> list[str]:
    root = home / "models"
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and ".partial" not in p.parts and not p.name.startswith(".")
    )


def partials(home: Path) -> list[Path]:
    d = home / "models" / ".partial"
    return sorted(p for p in d.glob("*.part")) if d.exists() else []


def assert_nothing_installed(home: Path) -> None:
    assert lock(home) == {}
    assert model_files(home) == []


# -- the good path --------------------------------------------------------------------------------


def test_pull_good_path_installs_exactly_what_the_hub_published(hub, home, llmctl, gguf_file):
    r = llmctl("models", "pull", REPO, FILE, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "models.pull" and doc["schema_version"] == 1
    (res,) = doc["models"]
    sha = sha256_of(gguf_file)
    assert res["status"] == "installed" and res["sha256"] == sha and res["fetched"] == gguf_file.stat().st_size
    entry = lock(home)[NAME]
    assert entry["repo"] == REPO and entry["file"] == FILE
    assert entry["revision"] == hub.commit(REPO)  # the branch resolved to the commit
    assert entry["size"] == gguf_file.stat().st_size and entry["sha256"] == sha
    assert entry["pulled_at"].endswith("Z")
    installed = home / "models" / entry["path"]
    assert installed.read_bytes() == gguf_file.read_bytes()
    assert model_files(home) == [f"{NAME}/{FILE}"]
    assert partials(home) == []
    # the resolve URL was pinned to the commit for the GET
    gets = [q for q in hub.requests if q["method"] == "GET" and q["kind"] == "resolve"]
    assert len(gets) == 1 and f"/resolve/{hub.commit(REPO)}/" in gets[0]["path"]


def test_second_pull_is_a_no_op(hub, home, llmctl):
    assert llmctl("models", "pull", REPO, FILE, "-q").returncode == 0
    before = hub.count("GET", "resolve")
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 0 and "already installed" in r.stderr
    assert hub.count("GET", "resolve") == before  # metadata only, no bytes


def test_quiet_prints_nothing(hub, home, llmctl):
    r = llmctl("models", "pull", REPO, FILE, "--quiet")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert NAME in lock(home)


def test_name_and_pinned_correct_hash(hub, home, llmctl, gguf_file):
    sha = sha256_of(gguf_file)
    r = llmctl("models", "pull", REPO, FILE, "--name", "mine", "--sha256", sha.upper())
    assert r.returncode == 0, r.stderr
    assert lock(home)["mine"]["sha256"] == sha


def test_sha256_from_paths_info_when_no_linked_etag(hub, home, llmctl, gguf_file):
    hub.faults.linked_etag = False  # ETag is a git blob id: the hash must come from paths-info
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 0, r.stderr
    assert lock(home)[NAME]["sha256"] == sha256_of(gguf_file)
    assert hub.count("POST", "paths-info") == 1


@pytest.mark.model
def test_real_smoke_gguf_pulled_and_listed(hub, home, llmctl, smoke_store):
    src = next((smoke_store / "models").rglob("*.gguf"))
    hub.add("google/gemma-3-270m-GGUF", src.name, src)
    r = llmctl("models", "pull", "google/gemma-3-270m-GGUF", src.name, "--name", "gemma")
    assert r.returncode == 0, r.stderr
    assert lock(home)["gemma"]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    r = llmctl("models", "list", "--json")
    (m,) = json.loads(r.stdout)["models"]
    assert (m["architecture"], m["quantization"], m["context_length"]) == ("gemma3", "Q4_K_M", 32768)


def test_dry_run_says_what_a_pull_would_do_and_writes_nothing(hub, home, llmctl, gguf_file, tmp_path):
    sha = sha256_of(gguf_file)
    r = llmctl("models", "pull", REPO, FILE, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["models"]
    assert res["status"] == "would_install" and res["sha256"] == sha and res["size"] == gguf_file.stat().st_size
    assert res["revision"] == hub.commit(REPO) and res["path"] == str(home / "models" / NAME / FILE)
    assert not (home / "models").exists() and not (home / "models.lock").exists()  # not even a directory
    assert hub.count("GET", "resolve") == 0  # metadata only

    assert llmctl("models", "pull", REPO, FILE, "-q").returncode == 0
    lock_before = (home / "models.lock").read_bytes()
    r = llmctl("models", "pull", REPO, FILE, "--dry-run", "--json")
    assert json.loads(r.stdout)["models"][0]["status"] == "present"

    # The branch moves to a commit with the same bytes: a pull would only record the new commit.
    moved = hub.add(REPO, FILE, gguf_file, revision="v2")
    hub.repos[REPO].branches["main"] = moved
    r = llmctl("models", "pull", REPO, FILE, "--dry-run", "--json")
    (res,) = json.loads(r.stdout)["models"]
    assert res["status"] == "would_update" and res["revision"] == moved
    assert (home / "models.lock").read_bytes() == lock_before

    # ... and then to different bytes: a pull would download them.
    other = make_gguf(tmp_path / FILE, payload_bytes=1 << 20)
    newer = hub.add(REPO, FILE, other, revision="v3")
    hub.repos[REPO].branches["main"] = newer
    r = llmctl("models", "pull", REPO, FILE, "--dry-run")
    assert r.returncode == 0 and "would install" in r.stderr
    assert (home / "models.lock").read_bytes() == lock_before and hub.count("GET", "resolve") == 1

    # The same errors as a real pull: a pinned hash that does not match exits 3.
    r = llmctl("models", "pull", REPO, FILE, "--dry-run", "--sha256", "ab" * 32)
    assert r.returncode == 3 and "ab" * 32 in r.stderr


# -- integrity ------------------------------------------------------------------------------------


def test_flipped_byte_exit_3_nothing_installed(hub, home, llmctl, gguf_file):
    hub.faults.flip_byte_at = 123_456
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 3, r.stderr
    sha = sha256_of(gguf_file)
    assert f"does not match the Hub's {sha}" in r.stderr and FILE in r.stderr
    assert_nothing_installed(home)
    assert partials(home) == []  # a bad download is not kept for resuming


def test_wrong_pinned_hash_exit_3_nothing_downloaded(hub, home, llmctl, gguf_file):
    r = llmctl("models", "pull", REPO, FILE, "--sha256", "ab" * 32)
    assert r.returncode == 3
    assert "ab" * 32 in r.stderr and sha256_of(gguf_file) in r.stderr
    assert_nothing_installed(home)
    assert hub.count("GET", "resolve") == 0


def test_malformed_pinned_hash_is_usage_error(hub, home, llmctl):
    r = llmctl("models", "pull", REPO, FILE, "--sha256", "xyz")
    assert r.returncode == 2 and "--sha256" in r.stderr
    assert_nothing_installed(home)


# -- unknown names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo,file,rev,words",
    [
        ("acme/Nope-GGUF", FILE, "main", "repository 'acme/Nope-GGUF' not found"),
        (REPO, "Nope.gguf", "main", "file 'Nope.gguf' not found"),
        (REPO, FILE, "v9.9", "revision 'v9.9' of 'acme/Tiny-GGUF' not found"),
    ],
)
def test_unknown_repo_file_revision_exit_2(hub, home, llmctl, repo, file, rev, words):
    r = llmctl("models", "pull", repo, file, "--revision", rev)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "(404)" in r.stderr
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.stderr
    assert_nothing_installed(home)


def test_unreachable_endpoint_exit_1(home, llmctl, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = llmctl("models", "pull", REPO, FILE, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert r.returncode == 1 and "cannot reach" in r.stderr
    assert_nothing_installed(home)


# -- resume -----------------------------------------------------------------------------------------


def test_connection_cut_then_resumed_on_next_run(hub, home, llmctl, gguf_file):
    hub.faults.cut_after = 2 << 20
    hub.faults.cut_times = 100  # every GET breaks: in-process retries give up
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 1 and "run the same command again" in r.stderr
    assert_nothing_installed(home)
    (part,) = partials(home)
    kept = part.stat().st_size
    assert kept > 0
    hub.faults.cut_after = None
    n_before = len(hub.requests)
    r = llmctl("models", "pull", REPO, FILE, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["models"][0]
    assert res["resumed_from"] == kept and res["fetched"] == res["size"] - kept
    gets = [q for q in hub.requests[n_before:] if q["method"] == "GET"]
    assert gets[0]["range"] == f"bytes={res['resumed_from']}-" and gets[0]["status"] == 206
    assert (home / "models" / lock(home)[NAME]["path"]).read_bytes() == gguf_file.read_bytes()
    assert partials(home) == []


def test_connection_cut_once_resumes_within_the_same_run(hub, home, llmctl, gguf_file):
    hub.faults.cut_after = 1 << 20
    hub.faults.cut_times = 1
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    ranges = [q["range"] for q in hub.requests if q["method"] == "GET"]
    assert ranges == [None, f"bytes={1 << 20}-"]
    assert lock(home)[NAME]["sha256"] == sha256_of(gguf_file)


def test_server_ignoring_range_restarts_from_zero(hub, home, llmctl, gguf_file):
    hub.faults.cut_after = 1 << 20
    hub.faults.cut_times = 1
    hub.faults.ignore_range = True
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 0, r.stderr
    assert "ignored the Range" in r.stderr
    assert lock(home)[NAME]["sha256"] == sha256_of(gguf_file)


def _wait_for(cond, what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_interrupted_or_killed_pull_leaves_no_model_and_resumes(hub, home, gguf_file, sig, code, llmctl):
    stall_at = 3 << 20
    hub.faults.stall_after = stall_at  # the server sends this much, then waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "models", "pull", REPO, FILE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: partials(home) and partials(home)[0].stat().st_size >= stall_at, "the partial file")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.release()
    assert proc.returncode == code, err
    assert_nothing_installed(home)
    (part,) = partials(home)
    assert part.stat().st_size == stall_at
    r = llmctl("models", "pull", REPO, FILE, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["resumed_from"] == stall_at
    assert any(q["range"] == f"bytes={stall_at}-" and q["status"] == 206 for q in hub.requests)
    assert (home / "models" / lock(home)[NAME]["path"]).read_bytes() == gguf_file.read_bytes()


# -- offline and auth -------------------------------------------------------------------------------


def test_offline_not_installed_exit_1_no_network(hub, home, llmctl):
    r = llmctl("models", "pull", REPO, FILE, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "HF_HUB_OFFLINE" in r.stderr
    assert hub.requests == []
    assert_nothing_installed(home)


def test_offline_installed_is_reported_present_no_network(hub, home, llmctl):
    assert llmctl("models", "pull", REPO, FILE, "-q").returncode == 0
    n = len(hub.requests)
    r = llmctl("models", "pull", REPO, FILE, "--json", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["status"] == "present"
    assert len(hub.requests) == n


def test_token_required(hub, home, llmctl):
    hub.faults.require_token = "hf_secret"
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 1 and "HF_TOKEN" in r.stderr and "401" in r.stderr
    assert "hf_secret" not in r.stderr
    assert_nothing_installed(home)
    r = llmctl("models", "pull", REPO, FILE, env={"HF_TOKEN": "hf_secret"})
    assert r.returncode == 0, r.stderr
    assert all(q["auth"] for q in hub.requests if q["status"] in (200, 206))


# -- disk space -------------------------------------------------------------------------------------


def test_full_disk_is_a_clear_error(hub, home, monkeypatch):
    # A fake, and only here: filling a real disk (or mounting a small one) is not possible in a test.
    # The free-space figure is what is faked; the server, client and store are real.
    from typer.testing import CliRunner

    from llmctl.cli.app import app
    from llmctl.models import ops

    monkeypatch.setattr(ops, "free_bytes", lambda path: 1000)
    r = CliRunner().invoke(app, ["models", "pull", REPO, FILE], catch_exceptions=False)
    assert r.exit_code == 1
    assert "not enough disk space" in r.output
    assert_nothing_installed(home)
    assert hub.count("GET", "resolve") == 0


# -- provisioning from the config -------------------------------------------------------------------


def test_pull_without_arguments_provisions_the_config(hub, home, llmctl, write_config, tmp_path, gguf_file):
    other = make_gguf(tmp_path / "local.gguf", arch="qwen2", file_type=7, payload_bytes=4096)
    commit = hub.commit(REPO)
    write_config(f"""version: 1
models:
  tiny:
    repo: {REPO}
    file: {FILE}
  tiny-pinned:
    repo: {REPO}
    file: {FILE}
    revision: {commit}
    sha256: {sha256_of(gguf_file)}
  local:
    path: {other}
""")
    r = llmctl("models", "pull", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(m["name"] for m in doc["models"]) == ["local", "tiny", "tiny-pinned"]
    assert set(lock(home)) == {"local", "tiny", "tiny-pinned"}
    assert lock(home)["local"]["source"] == "import"
    n = len(hub.requests)
    r = llmctl("models", "pull", "--json")
    assert r.returncode == 0
    assert {m["status"] for m in json.loads(r.stdout)["models"]} == {"present"}
    assert hub.count("GET", "resolve") == 2  # nothing downloaded again
    assert all(q["method"] == "HEAD" for q in hub.requests[n:])  # "main" re-resolved; the pinned commit not


def test_pull_config_continues_past_a_failure(hub, home, llmctl, write_config):
    write_config(f"""version: 1
models:
  missing:
    repo: acme/Nope
    file: x.gguf
  tiny:
    repo: {REPO}
    file: {FILE}
""")
    r = llmctl("models", "pull")
    assert r.returncode == 2
    assert "missing:" in r.stderr and "not found" in r.stderr
    assert set(lock(home)) == {"tiny"}


def test_pull_one_configured_name(hub, home, llmctl, write_config):
    write_config(f"version: 1\nmodels:\n  tiny:\n    repo: {REPO}\n    file: {FILE}\n    chat_format: chatml\n")
    r = llmctl("models", "pull", "tiny")
    assert r.returncode == 0, r.stderr
    assert lock(home)["tiny"]["chat_format"] == "chatml"
    r = llmctl("models", "pull", "nothing-like-that")
    assert r.returncode == 2


def test_second_pull_of_the_same_file_waits_its_turn(hub, home, gguf_file, llmctl):
    hub.faults.stall_after = 1 << 20
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "models", "pull", REPO, FILE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: partials(home) and partials(home)[0].stat().st_size >= 1 << 20, "the partial file")
        r = llmctl("models", "pull", REPO, FILE, "--name", "again")
        assert r.returncode == 1 and "another llmctl process is downloading" in r.stderr
        assert lock(home) == {}
    finally:
        hub.release()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert set(lock(home)) == {NAME}
    assert (home / "models" / lock(home)[NAME]["path"]).read_bytes() == gguf_file.read_bytes()


def test_lfs_redirect_to_a_cdn_with_resume(hub, home, llmctl, gguf_file):
    hub.faults.redirect = True  # as the Hub does for LFS files: 302 from resolve to the storage host
    hub.faults.cut_after = 1 << 20
    hub.faults.cut_times = 1
    hub.faults.require_token = "hf_secret"
    r = llmctl("models", "pull", REPO, FILE, env={"HF_TOKEN": "hf_secret"})
    assert r.returncode == 0, r.stderr
    cdn = [(q["range"], q["status"], q["auth"]) for q in hub.requests if q["kind"] == "cdn"]
    # resumed on the CDN; the token never left the Hub's origin
    assert cdn == [(None, 200, False), (f"bytes={1 << 20}-", 206, False)]
    assert (home / "models" / lock(home)[NAME]["path"]).read_bytes() == gguf_file.read_bytes()


def test_mismatched_content_range_is_refused(hub, home, llmctl):
    hub.faults.cut_after = 1 << 20
    hub.faults.cut_times = 1
    hub.faults.bad_content_range = True
    r = llmctl("models", "pull", REPO, FILE)
    assert r.returncode == 1
    assert f"Content-Range 'bytes {(1 << 20) - 1}-" in r.stderr and "partial download kept" in r.stderr
    assert_nothing_installed(home)
    (part,) = partials(home)
    assert part.stat().st_size == 1 << 20


def test_moved_branch_with_same_bytes_updates_the_commit_only(hub, home, llmctl):
    assert llmctl("models", "pull", REPO, FILE, "-q").returncode == 0
    old = lock(home)[NAME]
    repo = hub.repos[REPO]
    new_commit = "f" * 40
    repo.files[new_commit] = dict(repo.files[old["revision"]])
    repo.branches["main"] = new_commit
    r = llmctl("models", "pull", REPO, FILE, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["status"] == "present"
    assert hub.count("GET", "resolve") == 1
    assert lock(home)[NAME] == {**old, "revision": new_commit}
