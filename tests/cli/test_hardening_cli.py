"""The CLI under hostile or broken input (issue 13, items 5, 6, 7, 12 and 13): the real `llmctl` in a
subprocess, a one-line error and the documented exit code, never a traceback; and the one error path
every command shares for unexpected exceptions."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmctl.cli.app import app
from tests.ggufmake import make_gguf
from tests.hubserver import sha256_of

runner = CliRunner()


def one_error_line(proc, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("Hint: ", "{"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def _lock(home: Path, entries: dict) -> None:
    (home / "models").mkdir(exist_ok=True)
    (home / "models.lock").write_text(json.dumps({"version": 1, "models": entries}))


def _entry(path: str, f: Path) -> dict:
    return {
        "file": f.name,
        "path": path,
        "size": f.stat().st_size,
        "sha256": sha256_of(f),
        "pulled_at": "2026-01-01T00:00:00Z",
        "source": "import",
    }


# -- item 5 and 6 through the CLI ------------------------------------------------------------------------


def test_the_issue_injection_is_refused_by_config_check_and_render(write_config, llmctl):
    path = write_config(
        json.dumps(
            {"services": {"chat": {"model": "/srv/m.gguf\n[Service]\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'"}}}
        )
    )
    line = one_error_line(llmctl("config", "check", str(path)), 2)
    assert line.startswith("Error: services.chat.model: ") and "control character" in line
    proc = llmctl("systemd", "render", "--llmctl", "/usr/bin/true")
    one_error_line(proc, 2)
    assert "ExecStartPre" not in proc.stdout


def test_a_name_with_a_newline_creates_no_store_dir(home, llmctl, tmp_path):
    src = make_gguf(tmp_path / "t.gguf", payload_bytes=1024)
    line = one_error_line(llmctl("models", "import", str(src), "--name", "evil\n"), 2)
    assert "--name 'evil\\n'" in line
    assert not (home / "models").exists() or [p.name for p in (home / "models").iterdir()] in ([], [".partial"])


# -- item 7 ----------------------------------------------------------------------------------------------


def test_lock_paths_outside_the_store_exit_3_and_rm_deletes_nothing(home, llmctl, tmp_path):
    victim = make_gguf(tmp_path / "outside" / "victim.gguf", payload_bytes=1024)
    _lock(home, {"evil": _entry(os.path.relpath(victim, home / "models"), victim)})
    for args in (
        ["models", "list"],
        ["models", "ls"],
        ["models", "show", "evil"],
        ["models", "verify"],
        ["models", "list", "--json"],
    ):
        proc = llmctl(*args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert "model 'evil'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (victim.parent / ".victim.gguf.verified").exists()
    line = one_error_line(llmctl("models", "rm", "evil"), 3)
    assert "no file was deleted" in line
    assert victim.is_file() and "evil" not in json.loads((home / "models.lock").read_text())["models"]


# -- item 12: tracebacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["alias bomb", "deep", "long int"])
def test_hostile_yaml_in_config_show_and_health(write_config, llmctl, kind):
    from tests.unit.test_config_hostile import _bomb

    text = {
        "alias bomb": _bomb(),
        "deep": "health: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "long int": "services: {chat: {model: smoke, port: 1" + "0" * 5000 + "}}\n",
    }[kind]
    write_config(text)
    one_error_line(llmctl("config", "show"), 2)
    proc = llmctl("health")
    one_error_line(proc, 3)
    assert proc.stdout.startswith("UNKNOWN - ")


def _gguf_header(kind: str) -> bytes:
    def s(t: bytes) -> bytes:
        return struct.pack("<Q", len(t)) + t

    head = b"GGUF" + struct.pack("<IQ", 3, 0)
    key = s(b"tokenizer.x")
    if kind == "kv count 2^63":
        return head + struct.pack("<Q", 1 << 63) + (s(b"k") + struct.pack("<II", 4, 1)) * 100
    if kind == "2^62 strings":
        return head + struct.pack("<Q", 1) + key + struct.pack("<IIQ", 9, 8, 1 << 62) + s(b"") * 1000
    if kind == "u32 array of 2^63":
        return head + struct.pack("<Q", 1) + key + struct.pack("<IIQ", 9, 4, (1 << 63) - 1)
    if kind == "tensor count 2^64-1":
        return b"GGUF" + struct.pack("<IQQ", 3, (1 << 64) - 1, 0)
    return head + struct.pack("<Q", 1) + key + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100_000


@pytest.mark.parametrize(
    "kind", ["kv count 2^63", "2^62 strings", "u32 array of 2^63", "tensor count 2^64-1", "arrays nested 100000 deep"]
)
def test_absurd_gguf_headers_are_one_line(llmctl, tmp_path, kind):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_gguf_header(kind))
    line = one_error_line(llmctl("models", "import", str(bad), "--name", "bad"), 2)
    assert str(bad) in line


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version": 1, "models": {"\xff": {}}}',
        b'{"version": 1, "models": {"m": {"file": 5, "path": ["a"], "size": "x"}}}',
    ],
)
@pytest.mark.parametrize("cmd", [["models", "list"], ["models", "ls"], ["models", "verify"], ["models", "rm", "m"]])
def test_a_corrupt_lockfile_is_one_line_exit_3(home, llmctl, raw, cmd):
    (home / "models.lock").write_bytes(raw)
    assert "is corrupt" in one_error_line(llmctl(*cmd), 3)


def test_rm_of_an_entry_that_is_a_directory(home, llmctl, tmp_path):
    f = make_gguf(tmp_path / "m.gguf", payload_bytes=1024)
    _lock(home, {"d": _entry("d/m.gguf", f)})
    (home / "models" / "d" / "m.gguf").mkdir(parents=True)
    assert "not a regular file" in one_error_line(llmctl("models", "rm", "d"), 3)
    assert "d" in json.loads((home / "models.lock").read_text())["models"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_store_the_user_cannot_read(home, llmctl, tmp_path):
    """EACCES on the store: one line, exit 1. As root, the command runs as nobody (setpriv)."""
    src = make_gguf(tmp_path / "src" / "t.gguf", payload_bytes=1024)
    os.chmod(tmp_path, 0o755)
    os.chmod(src.parent, 0o755)
    (home / "models").mkdir()
    (home / "models.lock").write_text('{"version": 1, "models": {}}')
    os.chmod(home / "models", 0o700)
    os.chmod(home / "models.lock", 0o600)
    for p in (home.parent, home):
        os.chmod(p, 0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        import shutil

        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop privileges")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    import subprocess
    import sys

    for args in (
        ["models", "list"],
        ["models", "import", str(src), "--name", "t"],
        ["models", "rm", "t"],
        ["models", "pull", "smoke"],
    ):
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "llmctl", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LLMCTL_DEBUG": ""},
        )
        line = one_error_line(proc, 1)
        assert "Permission denied" in line or "cannot access" in line, (args, line)


def test_a_ledger_with_wrong_column_types_is_reported_without_them(home, llmctl):
    from llmctl.usage.ledger import SCHEMA

    (home / "state").mkdir(exist_ok=True)
    conn = sqlite3.connect(home / "state" / "usage.db")
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT INTO requests (ts, route, status, prompt_tokens, completion_tokens, latency_ms, cost) "
        "VALUES (strftime('%s','now'), 'local', 'ok', 'many', 3, 'slow', 'free')"
    )
    conn.execute(
        "INSERT INTO requests (ts, route, status, prompt_tokens, completion_tokens, latency_ms, cost) "
        "VALUES (strftime('%s','now'), 'local', 200, 10, 3, 12.5, 0)"
    )
    conn.commit()
    conn.close()
    proc = llmctl("usage", "--since", "all", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["total"]["requests"] == 1 and doc["skipped_rows"] == 1
    assert "1 rows" in proc.stderr


def test_verify_mismatch_under_debug_is_not_a_crash(home, llmctl, tmp_path):
    """Before: render_error() got a str under LLMCTL_DEBUG=1 and raised TypeError."""
    src = make_gguf(tmp_path / "t.gguf", payload_bytes=4096)
    assert llmctl("models", "import", str(src), "--name", "t").returncode == 0
    with open(home / "models" / "t" / "t.gguf", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    proc = llmctl("models", "verify", env={"LLMCTL_DEBUG": "1"})
    assert proc.returncode == 3 and "does not match the lock" in proc.stderr and "TypeError" not in proc.stderr


# -- item 13: what is printed ----------------------------------------------------------------------------


def test_control_characters_from_a_gguf_header_are_shown_escaped(home, llmctl, tmp_path):
    src = make_gguf(tmp_path / "t.gguf", name="evil\x1b[31mRED\x07\rname", payload_bytes=1024)
    assert llmctl("models", "import", str(src), "--name", "t").returncode == 0
    for args in (["models", "show", "t"], ["models", "list"]):
        proc = llmctl(*args)
        assert proc.returncode == 0
        assert "\x1b" not in proc.stdout and "\r" not in proc.stdout and "\x07" not in proc.stdout
    assert "evil\\x1b[31mRED\\x07\\rname" in llmctl("models", "show", "t").stdout


# -- the one error path ----------------------------------------------------------------------------------


def _walk(group: typer.Typer, prefix: str = ""):
    for cmd in group.registered_commands:
        yield f"{prefix}{cmd.name or cmd.callback.__name__}", cmd.callback
    for sub in group.registered_groups:
        yield from _walk(sub.typer_instance, f"{prefix}{sub.name} ")


def test_every_command_goes_through_the_error_path():
    """By construction: a command registered without the guard (as `models ls` was) fails here."""
    commands = dict(_walk(app))
    assert "models ls" in commands and len(commands) > 15
    unguarded = [name for name, cb in commands.items() if not getattr(cb, "__llmctl_guarded__", False)]
    assert unguarded == []


@pytest.fixture
def broken_list(monkeypatch):
    from llmctl.models import ops

    def boom(store):
        raise RuntimeError("boom\x1b[2J")

    monkeypatch.setattr(ops, "list_models", boom)


@pytest.mark.parametrize("cmd", [["models", "list"], ["models", "ls"]])
def test_an_unexpected_exception_is_one_line_with_a_hint(broken_list, monkeypatch, cmd):
    monkeypatch.delenv("LLMCTL_DEBUG")
    result = runner.invoke(app, cmd, catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: internal error: RuntimeError: boom\\x1b[2J",
        ("Hint: this is a bug in llmctl; please report it with the output of the same command run with LLMCTL_DEBUG=1"),
    ]


def test_the_traceback_only_under_debug(broken_list, monkeypatch):
    monkeypatch.setenv("LLMCTL_DEBUG", "1")
    result = runner.invoke(app, ["models", "list"], catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    monkeypatch.setenv("LLMCTL_DEBUG", "raise")  # what the test suite runs with: bugs fail tests
    with pytest.raises(RuntimeError, match="boom"):
        runner.invoke(app, ["models", "list"], catch_exceptions=False)


def test_an_os_error_is_one_line_without_the_bug_hint(monkeypatch):
    from llmctl.models import ops

    def denied(store):
        raise PermissionError(13, "Permission denied", "/var/lib/llmctl/models")

    monkeypatch.setattr(ops, "list_models", denied)
    monkeypatch.delenv("LLMCTL_DEBUG")
    result = runner.invoke(app, ["models", "list"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["Error: Permission denied: /var/lib/llmctl/models"]


def test_an_unexpected_exception_in_health_is_unknown(monkeypatch, write_config, tmp_path):
    """Item 10: any exception in health exits 3 (UNKNOWN) with one line, never 1 (which the health
    unit counts as success), and the textfile says UNKNOWN too."""
    from llmctl.health import run

    def boom(*a, **k):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(run, "run_health", boom)
    monkeypatch.delenv("LLMCTL_DEBUG")
    write_config("services: {chat: {model: smoke}}\n")
    textfile = tmp_path / "h.prom"
    result = runner.invoke(app, ["health", "--textfile", str(textfile)], catch_exceptions=False)
    assert result.exit_code == 3
    assert result.stdout == "UNKNOWN - internal error: OverflowError: cannot convert float infinity to integer\n"
    assert result.stderr.startswith("Error: internal error: OverflowError")
    assert "llmctl_health_run_status 3.0" in textfile.read_text()


def test_a_flag_value_the_schema_refuses_is_a_usage_error(llmctl):
    """serve builds a ServiceSpec from --model: the schema's refusal is exit 2, not an internal error."""
    line = one_error_line(llmctl("serve", "--model", "a\nb"), 2)
    assert line.startswith("Error: model: 'a\\nb' contains a control character")
