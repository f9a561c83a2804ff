"""Shell completion: commands, configured services and installed models.

The way Typer tests its own completion: the real `llmctl` program with the completion protocol's
environment (`_LLMCTL_COMPLETE=complete_bash` with COMP_WORDS/COMP_CWORD, `complete_zsh` with
_TYPER_COMPLETE_ARGS); then once in a real interactive bash on a pseudo-terminal, where a TAB
completes a model name. zsh is not installed here: its half of the protocol is tested, not a zsh.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

LLMCTL = str(Path(sys.executable).parent / "llmctl")
CONFIG = """\
services:
  chat: {model: smoke, port: 8001}
  embed: {model: smoke, port: 8002}
models:
  llama-1b: {repo: org/repo, file: llama.gguf}
"""


@pytest.fixture
def host(home: Path, write_config) -> Path:
    """A config with two services and one model, and a store whose lock has two models."""
    write_config(CONFIG)
    lock = {"version": 1, "models": {}}
    for name in ("smoke", "qwen-0.5b"):
        lock["models"][name] = {
            "file": f"{name}.gguf",
            "path": f"{name}/{name}.gguf",
            "size": 1,
            "sha256": "0" * 64,
            "pulled_at": "2026-01-01T00:00:00Z",
            "repo": "org/repo",
            "revision": "0" * 40,
        }
    (home / "models.lock").write_text(json.dumps(lock))
    return home


def bash_complete(line: str, **env: str) -> list[str]:
    """What `llmctl` answers the bash completion script for the command line `line` (a trailing
    space: completing a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    proc = subprocess.run(
        [LLMCTL],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "_LLMCTL_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword), **env},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_commands_and_subcommands():
    assert set(bash_complete("llmctl ")) == {
        "models",
        "systemd",
        "monitoring",
        "k8s",
        "health",
        "bench",
        "serve",
        "ps",
        "usage",
        "config",
    }
    assert sorted(bash_complete("llmctl mo")) == ["models", "monitoring"]
    assert "discover" in bash_complete("llmctl models ")


@pytest.mark.parametrize("line", ["llmctl health ", "llmctl systemd render ", "llmctl k8s render "])
def test_configured_services(host, line):
    assert bash_complete(line) == ["chat", "embed"]
    assert bash_complete(line + "e") == ["embed"]
    assert bash_complete(line + "chat ") == ["embed"]  # a service already named is not offered again


@pytest.mark.parametrize("line", ["llmctl models show ", "llmctl models rm ", "llmctl models verify "])
def test_installed_models(host, line):
    assert bash_complete(line) == ["qwen-0.5b", "smoke"]
    assert bash_complete(line + "q") == ["qwen-0.5b"]


def test_models_pull_offers_the_configs_models_and_smoke(host):
    assert bash_complete("llmctl models pull ") == ["llama-1b", "smoke"]


def test_the_config_named_on_the_line_is_the_one_read(host, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("services:\n  gpu: {model: smoke}\n")
    assert bash_complete(f"llmctl --config {other} health ") == ["gpu"]


@pytest.mark.parametrize("bad", ["services: [\n", "services: 3\n", "services:\n  BAD NAME: {}\n  ok: {}\n"])
def test_a_broken_config_completes_nothing_and_says_nothing(home, write_config, bad):
    write_config(bad)
    expected = ["ok"] if "ok" in bad else []
    assert bash_complete("llmctl health ") == expected


def test_zsh_protocol(host):
    proc = subprocess.run(
        [LLMCTL],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "_LLMCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "llmctl models show s"},
    )
    assert proc.returncode == 0, proc.stderr
    assert '"smoke"' in proc.stdout and "qwen" not in proc.stdout


def test_completing_imports_nothing_heavy(host):
    code = (
        "import json, os, sys\n"
        "sys.argv = ['llmctl']\n"
        "from llmctl.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    )
    for line in ("llmctl health ", "llmctl models show "):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "_LLMCTL_COMPLETE": "complete_bash",
                "COMP_WORDS": line,
                "COMP_CWORD": "2" if line.count(" ") == 2 else "3",
            },
        )
        modules = {m.split(".")[0] for m in json.loads(proc.stderr.split("MODULES=")[-1])}
        assert not modules & {"pydantic", "httpx", "rich", "jinja2", "huggingface_hub", "llama_cpp"}, line
        assert proc.stdout.split(), line  # it did complete


def _read_until(fd: int, wanted: bytes, deadline_s: float = 30) -> bytes:
    seen = b""
    end = time.monotonic() + deadline_s
    while wanted not in seen:
        left = end - time.monotonic()
        assert left > 0, f"no {wanted!r} from the shell; it showed: {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the shell is gone
                break
            seen += chunk
    return seen


def test_tab_in_a_real_bash(host, tmp_path):
    """`llmctl models show q<TAB>` in an interactive bash, with the script `--show-completion` prints."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = subprocess.run(
        [LLMCTL, "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert script.returncode == 0 and "_LLMCTL_COMPLETE=complete_bash" in script.stdout, script.stderr
    (tmp_path / "llmctl.bash").write_text(script.stdout)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "INPUTRC": "/dev/null",
        "PS1": "READY> ",
        "TERM": "dumb",
        "PATH": f"{Path(LLMCTL).parent}{os.pathsep}{os.environ['PATH']}",
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive bash without the user's rc files
        os.execve(bash, [bash, "--norc", "--noprofile", "-i"], env)
    try:
        _read_until(fd, b"READY> ")
        os.write(fd, f"source {tmp_path / 'llmctl.bash'}\n".encode())
        _read_until(fd, b"READY> ")
        os.write(fd, b"llmctl models show q")
        os.write(fd, b"\t")  # the one installed model that starts with q: completed in place
        _read_until(fd, b"qwen-0.5b")
        # What the line holds now, printed by echo: Ctrl-A, then `echo LINE=` before it, then Enter.
        # (The line is redrawn, prompt and all, as it is edited: echo's output is what starts a line.)
        os.write(fd, b"\x01echo LINE=\n")
        out = _read_until(fd, b"\nLINE=")
        out += _read_until(fd, b"\n", 10) if not out.split(b"\nLINE=", 1)[1].count(b"\n") else b""
        printed = out.split(b"\nLINE=", 1)[1].split(b"\n", 1)[0].strip()
        assert printed == b"llmctl models show qwen-0.5b", out
    finally:
        os.write(fd, b"exit\n")
        for _ in range(200):  # poll until the shell has gone (it exits on the line above)
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
