"""The llmctl.fleet Ansible collection end to end: built with `ansible-galaxy collection build`,
installed into a temp collections path, run with the real ansible-playbook and ansible.

The fleet is three hosts on this machine (`ansible_connection=local`), each with its own LLMCTL_HOME
and XDG_CONFIG_HOME, in user mode, with `llmctl_install: false` (this venv's llmctl) and
`llmctl_systemctl: false`: there is no SSH server here and systemd is not PID 1 (README, "Ansible").
The one fake is the systemctl of the units module's enable test, for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._serve import free_port, start_server, stop_server, wait_healthy
from tests._wheel import build_wheel
from tests.ggufmake import make_gguf
from tests.hubserver import FakeHub, sha256_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMOKE_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
ADHOC = re.compile(r"^(\S+) \| (SUCCESS|CHANGED|FAILED!) => (\{.*?^\})", re.M | re.S)


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: pip install -e '.[test]' (ansible-core is in the test extra)"
    return str(path)


def ansible_env(root: Path, collections: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "ANSIBLE_"))}
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "ANSIBLE_HOME": str(root / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(root / "ansible-remote-tmp"),
            "ANSIBLE_CONFIG": str(root / "ansible.cfg"),  # does not exist: no ansible.cfg from elsewhere
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "NO_COLOR": "1",
            "LC_ALL": "C.UTF-8",  # ansible-core refuses to start without a UTF-8 locale (CI may set none)
        }
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """The collection built from ansible/ and installed into a temp collections path."""
    out = tmp_path_factory.mktemp("galaxy")
    path = out / "collections"
    build = subprocess.run(
        [tool("ansible-galaxy"), "collection", "build", str(REPO / "ansible"), "--output-path", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ansible_env(out, path),
    )  # ANSIBLE_HOME in the temp dir, not ~/.ansible
    assert build.returncode == 0, build.stdout + build.stderr
    (tarball,) = out.glob("llmctl-fleet-*.tar.gz")
    inst = subprocess.run(
        [tool("ansible-galaxy"), "collection", "install", str(tarball), "-p", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ansible_env(out, path),
    )
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert (path / "ansible_collections/llmctl/fleet/plugins/modules/model.py").is_file()
    return path


@dataclass
class Fleet:
    root: Path
    collections: Path
    hosts: dict[str, dict] = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yml"

    def home(self, host: str) -> Path:
        return Path(self.hosts[host]["llmctl_home"])

    def write_inventory(self) -> None:
        doc = {
            "all": {
                "children": {
                    "llm": {
                        "hosts": self.hosts,
                        "vars": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            "llmctl_mode": "user",
                            "llmctl_install": False,
                            "llmctl_executable": str(BIN / "llmctl"),
                            "llmctl_systemctl": False,
                            "llmctl_models": ["smoke"],
                            "llmctl_results_dir": str(self.root / "results"),
                        },
                    }
                }
            }
        }
        self.inventory.write_text(json.dumps(doc, indent=2))  # JSON is YAML

    def playbook(self, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("ansible-playbook"), "-i", str(self.inventory), f"llmctl.fleet.{name}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=ansible_env(self.root, self.collections),
        )


def make_fleet(root: Path, collections: Path, n: int = 3) -> Fleet:
    root.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(root, collections)
    for i in range(1, n + 1):
        home = root / f"host{i}"
        fleet.hosts[f"host{i}"] = {
            "llmctl_home": str(home),
            "llmctl_environment": {"XDG_CONFIG_HOME": str(home / "xdg")},  # where user units go
            "llmctl_config": {"services": {"chat": {"model": "smoke", "port": free_port()}}},
        }
    fleet.write_inventory()
    return fleet


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    rows = {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in RECAP.findall(proc.stdout)
    }
    assert rows, proc.stdout + proc.stderr
    return rows


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-8000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def lock(home: Path) -> dict:
    return json.loads((home / "models.lock").read_text())["models"]


@pytest.fixture(scope="module")
def fleet(collections, tmp_path_factory):
    """Three hosts, provisioned once by site.yml (the first run is checked by the first test)."""
    f = make_fleet(tmp_path_factory.mktemp("fleet"), collections)
    f.first_run = f.playbook("site")
    return f


def test_first_run_provisions_all_three_hosts(fleet):
    proc = fleet.first_run
    assert proc.returncode == 0, show(proc)
    rows = recap(proc)
    assert sorted(rows) == ["host1", "host2", "host3"]
    for host, row in rows.items():
        assert row["failed"] == 0 and row["changed"] == 4, (host, row)  # config dir, config, model, units
        home = fleet.home(host)
        assert lock(home)["smoke"]["sha256"] == SMOKE_SHA256
        assert (home / "models" / lock(home)["smoke"]["path"]).stat().st_size == 253113024
        units = home / "xdg/systemd/user"
        assert sorted(p.name for p in units.iterdir()) == [
            "llmctl-chat.service",
            "llmctl-health.service",
            "llmctl-health.timer",
        ]
        chat = (units / "llmctl-chat.service").read_text()
        assert f"--config {home / 'config.yaml'} serve chat" in chat  # this host's config, absolute
        assert f"{BIN / 'llmctl'} " in chat  # this venv's llmctl
        port = fleet.hosts[host]["llmctl_config"]["services"]["chat"]["port"]
        assert f"port: {port}" in (home / "config.yaml").read_text()


def test_second_run_and_check_run_change_nothing(fleet):
    assert fleet.first_run.returncode == 0, show(fleet.first_run)
    before = {h: (fleet.home(h) / "models.lock").read_bytes() for h in fleet.hosts}
    for args in ((), ("--check", "--diff")):
        proc = fleet.playbook("site", *args)
        assert proc.returncode == 0, show(proc)
        assert {h: r["changed"] for h, r in recap(proc).items()} == {"host1": 0, "host2": 0, "host3": 0}, show(proc)
    assert {h: (fleet.home(h) / "models.lock").read_bytes() for h in fleet.hosts} == before


def test_an_invalid_config_never_replaces_the_old_one(fleet):
    assert fleet.first_run.returncode == 0, show(fleet.first_run)
    config = fleet.home("host1") / "config.yaml"
    before = config.read_bytes()
    bad = {"llmctl_config": {"services": {"chat": {"model": "smoke", "prot": 8000}}}}
    proc = fleet.playbook("site", "--limit", "host1", "-e", json.dumps(bad))
    assert proc.returncode == 2 and recap(proc)["host1"]["failed"] == 1, show(proc)
    assert "services.chat.prot: unknown key (did you mean 'port'?)" in proc.stdout, show(proc)
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_check_mode_on_fresh_hosts_reports_changes_and_writes_nothing(collections, tmp_path):
    fresh = make_fleet(tmp_path / "fresh", collections, n=2)
    proc = fresh.playbook("site", "--check", "--diff")
    assert proc.returncode == 0, show(proc)
    assert {h: r["changed"] for h, r in recap(proc).items()} == {"host1": 4, "host2": 4}, show(proc)
    assert "+ExecStart=" in proc.stdout  # the diff of the units that would be written
    for host in fresh.hosts:
        assert not fresh.home(host).exists()  # no config, no store, no unit, not even the directory
    # The config was checked in check mode too: an invalid one fails before anything else runs.
    fresh.hosts["host2"]["llmctl_config"] = {"services": {"chat": {"model": "smoke", "port": 70000}}}
    fresh.write_inventory()
    proc = fresh.playbook("site", "--check")
    rows = recap(proc)
    assert rows["host1"]["failed"] == 0 and rows["host2"]["failed"] == 1, show(proc)
    assert "services.chat.port" in proc.stdout, show(proc)


def test_role_installs_llmctl_into_a_venv_from_a_wheel(collections, tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    one = make_fleet(tmp_path / "install", collections, n=1)
    venv = tmp_path / "venv"
    one.hosts["host1"].update(
        {
            "llmctl_install": True,
            "llmctl_venv": str(venv),
            "llmctl_pip_spec": str(wheel),
            "llmctl_python": sys.executable,
            "llmctl_models": [],
            "llmctl_executable": f"{venv}/bin/llmctl",
        }
    )  # the group's is this venv's
    one.write_inventory()

    proc = one.playbook("site", "--check")  # llmctl is not there yet: pip would install it, the host ends
    assert proc.returncode == 0 and recap(proc)["host1"]["changed"] == 1, show(proc)
    assert "llmctl would be installed first" in proc.stdout and not venv.exists()

    proc = one.playbook("site")
    assert proc.returncode == 0 and recap(proc)["host1"]["failed"] == 0, show(proc)
    chat = (one.home("host1") / "xdg/systemd/user/llmctl-chat.service").read_text()
    assert f"ExecStart={venv}/bin/llmctl " in chat  # the units run the venv's llmctl
    version = subprocess.run([str(venv / "bin/llmctl"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("llmctl "), version.stderr
    proc = one.playbook("site")
    assert proc.returncode == 0 and recap(proc)["host1"]["changed"] == 0, show(proc)


def test_a_tampered_model_fails_verify_on_that_host_only(fleet):
    assert fleet.first_run.returncode == 0, show(fleet.first_run)
    model = fleet.home("host2") / "models" / lock(fleet.home("host2"))["smoke"]["path"]
    with open(model, "r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))  # same size: only a re-hash can tell
    try:
        proc = fleet.playbook("verify")
        rows = recap(proc)
        assert proc.returncode == 2, show(proc)
        assert {h: r["failed"] for h, r in rows.items()} == {"host1": 0, "host2": 1, "host3": 0}, show(proc)
        assert f"{model}: sha256 " in proc.stdout and f"does not match the lock's {SMOKE_SHA256}" in proc.stdout
    finally:
        with open(model, "r+b") as fh:
            fh.seek(1_000_000)
            fh.write(byte)
    assert sha256_of(model) == SMOKE_SHA256


@pytest.mark.model
def test_bench_gathers_one_json_file_per_host_on_the_controller(fleet):
    assert fleet.first_run.returncode == 0, show(fleet.first_run)
    extra = {
        "llmctl_bench_model": "smoke",
        "llmctl_bench_args": ["-p", "8", "-n", "4", "-r", "1", "-t", "1"],
        "llmctl_compare_executable": str(BIN / "llmctl"),
    }
    proc = fleet.playbook("bench", "-e", json.dumps(extra), "--forks", "1")
    assert proc.returncode == 0, show(proc)
    # The report step: llmctl bench compare on the controller, one row per host.
    report = proc.stdout[proc.stdout.index("Show the table") :]
    assert all(host in report for host in fleet.hosts) and "pp8" in report and "tg4" in report, show(proc)
    results = fleet.root / "results"
    assert sorted(p.name for p in results.iterdir()) == ["host1.json", "host2.json", "host3.json"]
    for host in fleet.hosts:
        doc = json.loads((results / f"{host}.json").read_text())
        assert doc["kind"] == "bench" and doc["host"]  # llmctl's document (json-full), with the host record
        rows = doc["results"]
        assert sorted(r["test"] for r in rows) == ["pp8", "tg4"]
        assert all(r["avg_ts"] > 0 and r["n_threads"] == 1 for r in rows)
        assert all(str(fleet.home(host)) in r["model_filename"] for r in rows)  # each host's own store


@pytest.mark.model
def test_health_fails_the_hosts_whose_service_is_down(fleet):
    assert fleet.first_run.returncode == 0, show(fleet.first_run)
    home = fleet.home("host1")
    server = start_server(home, (home / "config.yaml").read_text(), "chat")  # the same bytes the role wrote
    try:
        wait_healthy(server)
        proc = fleet.playbook("health", "-e", "llmctl_health_restart=false")
    finally:
        stop_server(server)
    rows = recap(proc)
    assert {h: r["failed"] for h, r in rows.items()} == {"host1": 0, "host2": 1, "host3": 1}, show(proc)
    assert "CRITICAL - chat tcp: connection refused" in proc.stdout, show(proc)


def test_ansible_lint_passes_on_the_collection(tmp_path):
    # ansible-lint resolves the collection's own role and modules only in an ansible_collections/ tree.
    tree = tmp_path / "ansible_collections" / "llmctl"
    tree.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(REPO / "ansible"), str(tree / "fleet")], check=True)
    env = ansible_env(tmp_path, tmp_path, {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    proc = subprocess.run(
        [tool("ansible-lint"), "--offline", "--nocolor"],
        cwd=tree / "fleet",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, show(proc)
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout, show(proc)


# -- the modules one by one, with the ad hoc `ansible` command -------------------------------------


def adhoc(
    collections: Path, root: Path, module: str, args: dict, *flags: str, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run one llmctl.fleet module on localhost; returns the process and the module's result."""
    proc = subprocess.run(
        [
            tool("ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            f"llmctl.fleet.{module}",
            "-a",
            json.dumps(args),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env=ansible_env(root, collections, env),
    )
    m = ADHOC.search(proc.stdout)
    assert m, show(proc)
    return proc, json.loads(m.group(3))


def test_model_module_pulls_from_the_hub_once_checks_without_downloading_and_hides_the_token(collections, tmp_path):
    repo, file, token = "acme/Tiny-GGUF", "Tiny-Q4_K_M.gguf", "hf_sekrit_token_0123456789"
    gguf = make_gguf(tmp_path / file, payload_bytes=2 << 20)
    home = tmp_path / "home"
    with FakeHub() as hub:
        hub.add(repo, file, gguf)
        hub.faults.require_token = token
        base = {
            "executable": str(BIN / "llmctl"),
            "home": str(home),
            "mode": "user",
            "name": "tiny",
            "repo": repo,
            "file": file,
            "hf_endpoint": hub.url,
            "hf_token": token,
        }

        def run(args: dict, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
            return adhoc(collections, tmp_path, "model", args, *flags, env={"HF_HOME": str(tmp_path / "hf")})

        proc, res = run(base, "-vvv")  # -vvv prints the module's arguments: the token must not be there
        assert proc.returncode == 0 and res["changed"] is True, show(proc)
        assert res["pull"]["status"] == "installed" and res["model"]["sha256"] == sha256_of(gguf)
        assert token not in proc.stdout + proc.stderr
        proc, res = run(base)
        assert proc.returncode == 0 and res["changed"] is False, show(proc)

        proc, res = run({**base, "hf_token": "hf_wrong"})  # the Hub refuses: llmctl's line and exit code
        assert proc.returncode != 0 and res["rc"] == 1 and "HF_TOKEN" in res["msg"], show(proc)
        assert "hf_wrong" not in proc.stdout + proc.stderr

        # The branch moves to other bytes: check mode says so, with the lock's diff, and downloads nothing.
        other = make_gguf(tmp_path / "v2" / file, payload_bytes=1 << 20)
        hub.repos[repo].branches["main"] = hub.add(repo, file, other, revision="v2")
        lock_before, gets = (home / "models.lock").read_bytes(), hub.count("GET", "resolve")
        proc, res = run(base, "--check", "--diff")
        assert proc.returncode == 0 and res["changed"] is True, show(proc)
        assert res["pull"]["status"] == "would_install" and res["model"]["sha256"] == sha256_of(other)
        assert f'-  "sha256": "{sha256_of(gguf)}"' in proc.stdout
        assert f'+  "sha256": "{sha256_of(other)}"' in proc.stdout
        assert (home / "models.lock").read_bytes() == lock_before and hub.count("GET", "resolve") == gets
        proc, res = run(base)
        assert res["changed"] is True and lock(home)["tiny"]["sha256"] == sha256_of(other), show(proc)

        proc, res = run({**base, "state": "verified"})
        assert proc.returncode == 0 and res["changed"] is False and res["verify"]["ok"] is True, show(proc)

        proc, res = run(
            {"executable": base["executable"], "home": str(home), "name": "tiny", "state": "absent"}, "--check"
        )
        assert res["changed"] is True and "tiny" in lock(home), show(proc)
        proc, res = run({"executable": base["executable"], "home": str(home), "name": "tiny", "state": "absent"})
        assert res["changed"] is True and lock(home) == {}, show(proc)
        proc, res = run({"executable": base["executable"], "home": str(home), "name": "tiny", "state": "absent"})
        assert proc.returncode == 0 and res["changed"] is False, show(proc)


def test_model_module_imports_a_local_file_once(collections, tmp_path):
    src = make_gguf(tmp_path / "Local-Q8_0.gguf", payload_bytes=256 << 10)
    home = tmp_path / "home"
    base = {"executable": str(BIN / "llmctl"), "home": str(home), "name": "local", "path": str(src)}
    proc, res = adhoc(collections, tmp_path, "model", base)
    assert proc.returncode == 0 and res["changed"] is True and res["model"]["source"] == "import", show(proc)
    proc, res = adhoc(collections, tmp_path, "model", base)
    assert proc.returncode == 0 and res["changed"] is False, show(proc)

    make_gguf(src, payload_bytes=128 << 10, seed=7)  # the file at that path changed
    lock_before = (home / "models.lock").read_bytes()
    proc, res = adhoc(collections, tmp_path, "model", base, "--check")
    assert res["changed"] is True and (home / "models.lock").read_bytes() == lock_before, show(proc)
    proc, res = adhoc(collections, tmp_path, "model", {**base, "sha256": "ab" * 32})
    assert proc.returncode != 0 and res["rc"] == 3 and "does not match the pinned" in res["msg"], show(proc)
    assert (home / "models.lock").read_bytes() == lock_before  # nothing imported
    proc, res = adhoc(collections, tmp_path, "model", base)
    assert res["changed"] is True and lock(home)["local"]["sha256"] == sha256_of(src), show(proc)


FAKE_SYSTEMCTL = """#!/bin/sh
# A stand-in for systemctl (systemd is not PID 1 here): logs its argv, keeps enabled/active in files.
echo "$*" >> {log}
[ "$1" = "--user" ] && shift
case "$1" in
  enable) shift; now=; [ "$1" = "--now" ] && {{ now=1; shift; }}
          for u in "$@"; do touch "{state}/enabled.$u"; [ -n "$now" ] && touch "{state}/active.$u"; done ;;
  is-enabled) if [ -e "{state}/enabled.$2" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  is-active) if [ -e "{state}/active.$2" ]; then echo active; else echo inactive; exit 3; fi ;;
esac
exit 0
"""


def test_units_module_enables_once_and_notices_a_stopped_unit(collections, tmp_path):
    state, log, script = tmp_path / "systemd-state", tmp_path / "systemctl.log", tmp_path / "systemctl"
    state.mkdir()
    script.write_text(FAKE_SYSTEMCTL.format(log=log, state=state))
    script.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(f"services:\n  chat:\n    model: smoke\n    port: {free_port()}\n")
    args = {
        "executable": str(BIN / "llmctl"),
        "home": str(home),
        "mode": "user",
        "enable": True,
        "now": True,
        "systemctl_path": str(script),
    }
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    unit_dir = tmp_path / "xdg/systemd/user"

    def run(*flags: str) -> tuple[subprocess.CompletedProcess, dict, list[str]]:
        log.unlink(missing_ok=True)
        proc, res = adhoc(collections, tmp_path, "units", args, *flags, env=env)
        return proc, res, log.read_text().splitlines() if log.exists() else []

    proc, res, calls = run()
    assert proc.returncode == 0 and res["changed"] is True and len(res["written"]) == 3, show(proc)
    assert calls[-2:] == ["--user daemon-reload", "--user enable --now llmctl-chat.service llmctl-health.timer"]
    assert sorted(p.name for p in unit_dir.iterdir()) == [
        "llmctl-chat.service",
        "llmctl-health.service",
        "llmctl-health.timer",
    ]

    proc, res, calls = run()
    assert proc.returncode == 0 and res["changed"] is False, show(proc)
    assert all(c.split()[1] in ("is-enabled", "is-active") for c in calls), calls  # asked, changed nothing

    (state / "active.llmctl-chat.service").unlink()  # the server stopped
    proc, res, calls = run()
    assert res["changed"] is True and res["written"] == [], show(proc)
    assert res["units_state"]["llmctl-chat.service"] == {"enabled": "enabled", "active": "inactive"}
    assert calls[-1] == "--user enable --now llmctl-chat.service llmctl-health.timer"

    timer = unit_dir / "llmctl-health.timer"
    timer.write_text(timer.read_text() + "# edited by hand\n")
    proc, res, calls = run("--check", "--diff")
    assert proc.returncode == 0 and res["changed"] is True and res["written"] == [str(timer)], show(proc)
    assert "-# edited by hand" in proc.stdout and timer.read_text().endswith("# edited by hand\n")
    assert not any(" enable " in f" {c} " or "daemon-reload" in c for c in calls), calls
