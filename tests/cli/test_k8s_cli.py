"""`llmctl k8s render` wiring: output shapes (stream, files, JSON), notes on stderr, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
SNAPSHOTS = REPO / "tests" / "snapshots" / "k8s"
IMAGE = "registry.example.com/llmctl@sha256:" + "0" * 64


def test_render_prints_one_stream_that_is_the_snapshots(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "k8s", "render", "--image", IMAGE)
    assert proc.returncode == 0, proc.stderr
    expected = "".join(
        (SNAPSHOTS / "example" / name).read_text()
        for name in ("00-namespace.yaml", "01-config.yaml", "llmctl-chat.yaml")
    )
    assert proc.stdout == expected
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d]
    assert kinds == [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ]
    # stderr: the Secret the pod needs, and how to create it from this host's files
    assert "kubectl -n llmctl create secret generic llmctl-chat-credentials " in proc.stderr
    assert "--from-file=upstream-lan-gpu=/etc/llmctl/lan-gpu.key" in proc.stderr


def test_render_output_dir_writes_one_file_each(llmctl, tmp_path: Path):
    out = tmp_path / "k8s"
    proc = llmctl("--config", str(SNAPSHOTS / "gpu.yaml"), "k8s", "render", "--image", IMAGE, "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out / n) for n in ("00-namespace.yaml", "01-config.yaml", "llmctl-gpu.yaml")]
    for name in ("00-namespace.yaml", "01-config.yaml", "llmctl-gpu.yaml"):
        assert (out / name).read_text() == (SNAPSHOTS / "gpu" / name).read_text()
    assert sorted(p.name for p in out.iterdir()) == ["00-namespace.yaml", "01-config.yaml", "llmctl-gpu.yaml"]


def test_render_json(llmctl, tmp_path: Path):
    proc = llmctl(
        "--config", str(SNAPSHOTS / "gpu.yaml"), "k8s", "render", "--image", IMAGE, "--json", "--namespace", "other"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "k8s.render"
    assert doc["namespace"] == "other" and doc["image"] == IMAGE
    files = {f["name"]: f for f in doc["files"]}
    assert files["llmctl-gpu.yaml"]["service"] == "gpu"
    assert {"kind": "ServiceMonitor", "name": "llmctl-gpu"} in files["llmctl-gpu.yaml"]["objects"]
    assert "namespace: other" in files["llmctl-gpu.yaml"]["content"]
    [secret] = doc["secrets"]
    assert secret["name"] == "llmctl-gpu-credentials"
    assert secret["keys"] == ["api-keys", "upstream-lan-gpu", "upstream-peer", "metrics-key"]
    assert secret["create_command"].startswith("kubectl -n other create secret generic llmctl-gpu-credentials ")
    out = tmp_path / "o"
    doc = json.loads(
        llmctl(
            "--config",
            str(SNAPSHOTS / "gpu.yaml"),
            "k8s",
            "render",
            "--image",
            IMAGE,
            "--json",
            "--output-dir",
            str(out),
        ).stdout
    )
    assert [f["path"] for f in doc["files"]] == [str(out / f["name"]) for f in doc["files"]]
    assert all("content" not in f for f in doc["files"])


def test_only_named_services_and_unknown_ones(llmctl, tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("services:\n  a: {model: smoke}\n  b: {model: smoke}\nk8s:\n  image: " + IMAGE + "\n")
    proc = llmctl("--config", str(cfg), "k8s", "render", "b")
    assert proc.returncode == 0, proc.stderr
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"]
    assert names == ["llmctl-b"]
    proc = llmctl("--config", str(cfg), "k8s", "render", "nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == "Error: no service 'nope' in the config"


def test_bad_input_exits_2_with_one_line_and_writes_nothing(llmctl, tmp_path: Path):
    out = tmp_path / "out"
    cases = [
        (["--config", str(EXAMPLE), "k8s", "render"], "Error: no image: pass --image or set k8s.image"),
        (["--config", str(EXAMPLE), "k8s", "render", "--image", "Bad Image"], "Error: --image: 'Bad Image' is not"),
        (
            ["--config", str(EXAMPLE), "k8s", "render", "--image", IMAGE, "--namespace", "x_y"],
            "Error: --namespace: 'x_y' is not a Kubernetes name",
        ),
    ]
    bad_service = tmp_path / "bad.yaml"
    bad_service.write_text("services:\n  my_chat: {model: smoke}\n")
    cases.append(
        (
            ["--config", str(bad_service), "k8s", "render", "--image", IMAGE],
            "Error: services.my_chat: the service name cannot name Kubernetes objects",
        )
    )
    bad_key = tmp_path / "badkey.yaml"
    bad_key.write_text("k8s:\n  namespace: Prod\n")
    cases.append((["--config", str(bad_key), "k8s", "render"], "Error: k8s.namespace: 'Prod' is not a Kubernetes name"))
    for args, message in cases:
        proc = llmctl(*args, "--output-dir", str(out))
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert not out.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = llmctl("--config", str(EXAMPLE), "k8s", "render", "--image", IMAGE, "--output-dir", str(a_file))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --output-dir: ")
    assert a_file.read_text() == "x"
    proc = llmctl("--config", str(EXAMPLE), "k8s", "render", "--image", IMAGE, "--output-dir", str(a_file / "sub"))
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith(f"Error: cannot write {a_file}/sub/")


def test_warnings_go_to_stderr(llmctl):
    proc = llmctl("--config", str(EXAMPLE), "k8s", "render", "--image", "registry.example.com/llmctl:0.1.0")
    assert proc.returncode == 0
    assert "Warning: the image registry.example.com/llmctl:0.1.0 is not pinned by digest" in proc.stderr
    assert "Warning: service 'chat' has no API keys" in proc.stderr
    assert "Warning" not in proc.stdout
