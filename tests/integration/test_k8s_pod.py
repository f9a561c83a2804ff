"""The pod as rendered, run on this host: its init containers, then its server, with its own command
lines, environment, config (the ConfigMap) and key files (the Secret).

No cluster (and no container runtime) can run on the test machines, so this test stands in for the
kubelet: every path the manifest names (mounts, XDG directories, $CREDENTIALS_DIRECTORY) is placed under
a temporary root, each container's `command` runs with exactly the container's `env` (plus PATH), in
order, and the probes the kubelet would send are sent. Two differences from a pod, because this machine
is shared: the server listens on 127.0.0.1 and a free port instead of 0.0.0.0:8000, and the model
volume is a directory that already holds the smoke model (a PersistentVolumeClaim after its first
start), hard-linked from the session's copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from llmctl.config import validate
from llmctl.k8s.render import K8sOptions, render
from tests._serve import free_port, poll
from tests._store import link_smoke_store

IMAGE = "registry.example.com/llmctl@sha256:" + "0" * 64
CONFIG = {
    "services": {
        "chat": {
            "model": "smoke",
            "n_ctx": 512,
            "memory_max": "2G",
            "api_keys_file": "/etc/llmctl/chat.keys",
            "shutdown_timeout_s": 2,
        }
    },
    # An upstream whose key the pod must find in the Secret (it is never called: nothing listens there).
    "upstreams": {"peer": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "PEER_API_KEY", "default_model": "m"}},
    "routing": {"strategy": "cascade"},
}


def _inside(root: Path, value: str) -> str:
    return str(root / value.lstrip("/")) if value.startswith("/") else value


def _run_env(root: Path, container: dict) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"]}
    for var in container.get("env") or []:
        assert set(var) == {"name", "value"}, var  # plain values only: no secret reaches an env var
        env[var["name"]] = _inside(root, var["value"])
    return env


def _argv(root: Path, container: dict) -> list[str]:
    command = container["command"]
    assert command[0] == "llmctl"
    return [sys.executable, "-m", "llmctl", *(_inside(root, a) for a in command[1:])]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.model
def test_the_rendered_pod_pulls_verifies_and_serves(smoke_store: Path, tmp_path: Path):
    result = render(validate(CONFIG), K8sOptions(image=IMAGE))
    docs = list(yaml.safe_load_all(result.stream))
    config_map = next(d for d in docs if d and d["kind"] == "ConfigMap")
    pod = next(d for d in docs if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]
    root = tmp_path / "pod"

    # The volumes: the ConfigMap's file, the Secret's files, the model volume (already holding smoke).
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {
        m["name"]: m["mountPath"] for c in [*pod["initContainers"], *pod["containers"]] for m in c["volumeMounts"]
    }
    for path in mounts.values():
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    config_dir = root / mounts["config"].lstrip("/")
    for item in volumes["config"]["configMap"]["items"]:
        (config_dir / item["path"]).write_text(config_map["data"][item["key"]])
    secret_values = {"api-keys": "# the service's keys\nsk-pod-key\n", "upstream-peer": "peer-key\n"}
    credentials = root / mounts["credentials"].lstrip("/")
    for item in volumes["credentials"]["secret"]["items"]:
        (credentials / item["path"]).write_text(secret_values[item["key"]])
    model_volume = root / mounts["models"].lstrip("/")
    link_smoke_store(smoke_store, model_volume)

    # Init containers, in order; each must succeed before the next starts.
    for init in pod["initContainers"]:
        proc = subprocess.run(
            _argv(root, init),
            env=_run_env(root, init),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, (init["name"], proc.stdout, proc.stderr)
    assert (model_volume / "models.lock").is_file()
    before = _files(model_volume)

    # The server, with its probes.
    server = pod["containers"][0]
    argv = _argv(root, server)
    port = free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv, env=_run_env(root, server), stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
    try:

        def answers(path: str) -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(url + path, timeout=10).status_code == 200
            except httpx.TransportError:
                return False

        probe = server["startupProbe"]
        poll(
            lambda: answers(probe["httpGet"]["path"]),
            probe["periodSeconds"] * probe["failureThreshold"],
            "the startup probe",
        )
        poll(lambda: answers(server["readinessProbe"]["httpGet"]["path"]), 120, "the readiness probe")
        assert answers(server["livenessProbe"]["httpGet"]["path"])

        body = {"model": "smoke", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=120).status_code == 401
        ok = httpx.post(
            url + "/v1/chat/completions", json=body, timeout=120, headers={"Authorization": "Bearer sk-pod-key"}
        )
        assert ok.status_code == 200, ok.text
        assert ok.headers.get("x-llmctl-route") == "local"
    finally:
        # The kubelet's SIGTERM after preStop: serve drains and exits 0 within the grace period.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=pod["terminationGracePeriodSeconds"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log.read_text()[-3000:]
    # The server mounts the model volume read-only: it wrote nothing there.
    assert _files(model_volume) == before
    text = log.read_text()
    assert "sk-pod-key" not in text and "peer-key" not in text
