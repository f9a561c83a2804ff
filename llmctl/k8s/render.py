"""Render hardened Kubernetes manifests for the configured services (`llmctl k8s render`).

Once: the Namespace (Pod Security "restricted" enforced) and the ConfigMap with the config the pods run
with. Per service: a Deployment (init containers pull and verify the model into the model volume, then
`llmctl serve SERVICE`), a ClusterIP Service, a PersistentVolumeClaim (unless the model volume is an
emptyDir), a NetworkPolicy, a PodDisruptionBudget and, when asked, a ServiceMonitor.

Every document comes from a Jinja2 template in templates/k8s/ that prints values only through the
`yaml` filter; the result is parsed and emitted again by PyYAML (emit.py). The same config gives the same
bytes. A config value that becomes a Kubernetes name is checked against Kubernetes' rules first (one
line, exit 2). jinja2 and yaml are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llmctl import __version__
from llmctl.errors import ConfigError, LlmctlError, NotFound, UsageError
from llmctl.keys import CREDENTIAL_NAME, CREDENTIALS_ENV, first_key_shell
from llmctl.netutil import is_loopback
from llmctl.text import PATTERNS

if TYPE_CHECKING:
    from llmctl.paths import Paths
    from llmctl.schema import Config, ServiceSpec

MARKER = "Rendered by llmctl"
CONFIG_MAP = "llmctl-config"
CONFIG_DIR = "/etc/llmctl"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
# The pods run llmctl in user mode with XDG directories that put the store where a host keeps it:
# models and models.lock in /var/lib/llmctl (the model volume), serve's state (the usage ledger) apart.
DATA_HOME = "/var/lib"
MODEL_DIR = f"{DATA_HOME}/llmctl"
STATE_HOME = "/var/lib/llmctl-state"
CREDENTIALS_DIR = "/run/credentials/llmctl"  # $CREDENTIALS_DIRECTORY, as systemd's LoadCredential= gives it
HF_TOKEN_DIR = "/run/credentials/huggingface"
HF_TOKEN_SECRET = "llmctl-hf-token"  # optional: key `token`, for private or gated Hub repositories
TMP = "/tmp"
PRESTOP_S = 5  # the Service drops the pod while this passes, before SIGTERM
PROBE_PERIOD_S = 10
UNPRIVILEGED_PORT = 8080  # the container port of a service configured below 1024: no capability needed
GIB = 1024**3
INIT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
# Where a host named by DNS may be: the public address space. NetworkPolicy cannot match names.
PUBLIC_V4 = (
    "0.0.0.0/0",
    ["10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"],
)
PUBLIC_V6 = ("::/0", ["::1/128", "fc00::/7", "fe80::/10"])
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Manifest:
    """One file of the output: a header comment and one or more YAML documents."""

    name: str  # file name, e.g. llmctl-chat.yaml
    content: str
    objects: tuple[tuple[str, str], ...]  # (kind, name) of each document, in order
    service: str | None = None


@dataclass(frozen=True)
class SecretNeed:
    """A Secret the pods mount and llmctl cannot write: it holds keys that never enter a manifest."""

    name: str
    service: str
    keys: tuple[tuple[str, str], ...]  # (key in the Secret, where its value is on this host)

    def create_command(self, namespace: str) -> str:
        """The bash command that creates it from this host's files (values never on a command line)."""
        parts = ["kubectl", "-n", namespace, "create", "secret", "generic", self.name]
        for key, source in self.keys:
            if key == "metrics-key":  # the first key of the service's key file
                value = f"<({first_key_shell(shlex.quote(source))})"
            elif source.startswith("$") and _ENV_NAME.fullmatch(source[1:]):
                value = f'<(printf %s "{source}")'
            else:
                value = shlex.quote(source)
            parts.append(f"--from-file={key}={value}")
        return " ".join(parts)


@dataclass(frozen=True)
class K8sOptions:
    namespace: str | None = None  # --namespace; else k8s.namespace
    image: str | None = None  # --image; else k8s.image
    paths: Paths | None = None  # this host's store: a model installed here gives its size


@dataclass(frozen=True)
class K8sRenderResult:
    namespace: str
    image: str
    files: tuple[Manifest, ...]
    secrets: tuple[SecretNeed, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stream(self) -> str:
        """Every file as one YAML stream (`llmctl k8s render | kubectl apply -f -`)."""
        return "".join(f.content for f in self.files)

    def get(self, name: str) -> Manifest:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


# -- templates ---------------------------------------------------------------------------------------


def templates_dir() -> Path:
    """templates/k8s beside the unit templates (the one rule for finding them: llmctl.templating)."""
    from llmctl.templating import templates_dir as shipped

    folder = shipped() / "k8s"
    if not (folder / "deployment.yaml.j2").is_file():
        raise NotFound(f"the Kubernetes templates are missing (looked in {folder})", hint="reinstall llmctl")
    return folder


def environment():
    from llmctl.k8s.emit import finalize, to_yaml
    from llmctl.templating import environment as base

    env = base("k8s", finalize=finalize)
    env.filters["yaml"] = to_yaml
    env.globals.clear()  # Jinja's `namespace`, `range`, ...: a missing variable must be an error, not a global
    return env


def _document(env, template: str, ctx: dict[str, Any]) -> dict:
    from llmctl.k8s.emit import load_document

    return load_document(env.get_template(template).render(**ctx), template)


def _manifest(name: str, docs: list[dict], what: str, service: str | None = None) -> Manifest:
    from llmctl.k8s.emit import dump_document

    header = (
        f"# {MARKER} {__version__} ({what}).\n# Do not edit: change the config and run `llmctl k8s render` again.\n"
    )
    body = "".join(dump_document(d) for d in docs)
    objects = tuple((d["kind"], d["metadata"]["name"]) for d in docs)
    return Manifest(name, header + body, objects, service)


# -- values ------------------------------------------------------------------------------------------


def _check(problem: str | None, where: str) -> None:
    if problem:
        raise ConfigError(f"{where}: {problem}")


def object_name(service: str) -> str:
    """llmctl-<service>: the name of the service's Deployment, Service and the rest (an RFC 1035 label,
    as a Service name must be)."""
    from llmctl.schema import k8s_name_problem

    name = f"llmctl-{service}"
    problem = k8s_name_problem(name, "dns1035")
    if problem:
        raise ConfigError(
            f"services.{service}: the service name cannot name Kubernetes objects ({problem})",
            hint="rename the service: lower-case letters, digits and '-', at most 56",
        )
    return name


def memory_quantity(value: str, where: str) -> str:
    """systemd's MemoryMax= size (K, M, G, T are powers of 1024) as a Kubernetes quantity."""
    m = PATTERNS["size"].fullmatch(value)
    if m is None:
        raise ConfigError(f"{where}: {value!r} is not a size such as 512M or 8G")
    number, unit = m.groups()
    return f"{number}{unit}i" if unit else number


def _volume_size(model_bytes: int) -> str:
    """Twice the model (a new revision downloads beside the old one) plus 1 GiB, in whole GiB."""
    return f"{math.ceil((2 * model_bytes + GIB) / GIB)}Gi"


def _model_bytes(config: Config, model: str, paths: Paths | None) -> int | None:
    from llmctl.models.smoke import SMOKE_NAME, SMOKE_SIZE

    if paths is not None:
        from llmctl.models.store import Store

        try:
            entry = Store(paths).read_lock().get(model)
        except (LlmctlError, OSError):  # an unreadable lock: as if the model were not installed here
            entry = None
        if entry is not None:
            return entry.size
    if model == SMOKE_NAME and SMOKE_NAME not in config.models:
        return SMOKE_SIZE
    return None


def _ip_block(cidr: str) -> dict:
    return {"ipBlock": {"cidr": cidr}}


def _public() -> list[dict]:
    return [{"ipBlock": {"cidr": cidr, "except": list(excepted)}} for cidr, excepted in (PUBLIC_V4, PUBLIC_V6)]


def _upstream_peers(config: Config, name: str) -> tuple[list[dict], int] | None:
    """(peers, port) for one upstream; None for a loopback host (no policy applies to it)."""
    where = f"upstreams.{name}.base_url"
    url = urlsplit(config.upstreams[name].base_url)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{where}: {config.upstreams[name].base_url!r} has an invalid port") from None
    host = url.hostname or ""
    cidrs = config.k8s.upstream_cidrs.get(name)
    if cidrs:
        return [_ip_block(c) for c in cidrs], port
    if is_loopback(host):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _public(), port
    return [_ip_block(f"{address}/{address.max_prefixlen}")], port


def _egress(config: Config, service: str, hub: bool) -> list[dict]:
    """DNS, the Hub when the model comes from it, and the service's upstreams; nothing under airgap."""
    if config.airgap:
        return []
    rules: list[dict] = [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    targets: list[tuple[list[dict], list[int]]] = []

    def add(peers: list[dict], port: int) -> None:
        for known, ports in targets:
            if known == peers:
                if port not in ports:
                    ports.append(port)
                return
        targets.append((peers, [port]))

    if hub:
        add(_public(), 443)
    for name in config.upstreams_for(service):
        found = _upstream_peers(config, name)
        if found is not None:
            add(*found)
    for peers, ports in targets:
        rules.append({"to": peers, "ports": [{"port": p, "protocol": "TCP"} for p in sorted(ports)]})
    return rules


def _ingress_from(config: Config) -> list[dict]:
    peers = []
    for source in config.k8s.ingress_from:
        peer: dict[str, Any] = {}
        if source.namespace is not None or source.namespace_labels:
            labels = dict(source.namespace_labels)
            if source.namespace is not None:
                labels["kubernetes.io/metadata.name"] = source.namespace
            peer["namespaceSelector"] = {"matchLabels": labels}
        if source.pod_labels is not None:
            peer["podSelector"] = {"matchLabels": dict(source.pod_labels)}
        peers.append(peer)
    return peers


def pod_config(config: Config) -> dict:
    """The config as the pods read it: the host's, validated, less defaults and the sections that only
    mean something on the host that renders (k8s:, monitoring:, discover: — host paths), with
    every key file replaced by the Secret's mounted file (api-keys; upstream-<name>, looked up in
    $CREDENTIALS_DIRECTORY), so no host path and no environment variable carries a key."""
    data = config.model_dump(mode="json", exclude={"k8s", "monitoring", "discover"}, exclude_defaults=True)
    data = {"version": config.version, **data}
    for name, spec in config.services.items():
        if spec.api_keys_file:
            data["services"][name]["api_keys_file"] = f"{CREDENTIALS_DIR}/{CREDENTIAL_NAME}"
    for name, upstream in config.upstreams.items():
        if upstream.api_key_env or upstream.api_key_file:
            entry = data["upstreams"][name]
            entry.pop("api_key_env", None)
            entry["api_key_file"] = f"upstream-{name}"
    return data


# -- rendering ---------------------------------------------------------------------------------------


def render(config: Config, options: K8sOptions | None = None, services: list[str] | None = None) -> K8sRenderResult:
    """The Namespace, the ConfigMap and each service's objects (every service, or those named)."""
    from llmctl.k8s.emit import dump_config
    from llmctl.schema import IMAGE_RE, k8s_name_problem

    options = options or K8sOptions()
    k8s = config.k8s
    known = list(config.services)
    chosen = known if not services else list(dict.fromkeys(services))
    for name in chosen:
        if name not in config.services:
            raise NotFound(f"no service '{name}' in the config", hint=f"configured: {', '.join(known) or 'none'}")
    if not chosen:
        raise UsageError("no services in the config: nothing to render", hint="add one under services:")
    namespace = options.namespace if options.namespace is not None else k8s.namespace
    if options.namespace is not None:
        _check(k8s_name_problem(options.namespace), "--namespace")
    image = options.image if options.image is not None else k8s.image
    if image is None:
        raise UsageError(
            "no image: pass --image or set k8s.image",
            hint="build one from the Containerfile and push it to a registry the cluster pulls from",
        )
    if options.image is not None and (len(image) > 512 or not IMAGE_RE.fullmatch(image)):
        raise UsageError(f"--image: {image!r} is not an image reference such as registry.example.com/llmctl@sha256:...")
    names = {n: object_name(n) for n in chosen}

    env = environment()
    warnings: list[str] = []
    if "@sha256:" not in image:
        warnings.append(
            f"the image {image} is not pinned by digest: nodes may run different bytes under the "
            "same tag (pin it as NAME@sha256:...; checkov's CKV_K8S_43 fails otherwise)"
        )
    config_text = dump_config(pod_config(config))
    config_sha256 = hashlib.sha256(config_text.encode()).hexdigest()
    base_labels = {
        "app.kubernetes.io/part-of": "llmctl",
        "app.kubernetes.io/managed-by": "llmctl",
        "app.kubernetes.io/version": __version__,
    }
    files = [
        _manifest("00-namespace.yaml", [_document(env, "namespace.yaml.j2", {"namespace": namespace})], "namespace"),
        _manifest(
            "01-config.yaml",
            [
                _document(
                    env,
                    "configmap.yaml.j2",
                    {"name": CONFIG_MAP, "namespace": namespace, "labels": base_labels, "config_text": config_text},
                )
            ],
            "the config the pods read",
        ),
    ]
    secrets: list[SecretNeed] = []
    for service in chosen:
        docs, secret, notes = _service(
            env, config, service, names[service], namespace, image, base_labels, config_sha256, options.paths
        )
        files.append(_manifest(f"{names[service]}.yaml", docs, f"service '{service}'", service))
        if secret is not None:
            secrets.append(secret)
        warnings += notes
    return K8sRenderResult(namespace, image, tuple(files), tuple(secrets), tuple(warnings))


def _service(
    env,
    config: Config,
    service: str,
    name: str,
    namespace: str,
    image: str,
    base_labels: dict[str, str],
    config_sha256: str,
    paths: Paths | None,
) -> tuple[list[dict], SecretNeed | None, list[str]]:
    from llmctl.models.smoke import SMOKE_NAME

    k8s = config.k8s
    spec: ServiceSpec = config.services[service]
    where = f"services.{service}"
    model = spec.model
    if len(spec.served_models) > 1:
        raise ConfigError(
            f"{where}.models: k8s render serves one model per pod (its init container pulls it); "
            "several models in one server are for systemd units",
            hint="give each model its own service",
        )
    model_spec = config.models.get(model)
    if model_spec is None and model != SMOKE_NAME:
        raise ConfigError(f"{where}.model: '{model}' is not in models: (a pod pulls the model the config names)")
    if model_spec is not None and model_spec.path is not None:
        raise ConfigError(
            f"{where}.model: '{model}' is a local file (models.{model}.path), which a pod cannot import",
            hint=f"give models.{model} a repo and file on the Hub",
        )
    hub = model_spec is not None
    if not spec.public_health:
        raise ConfigError(
            f"{where}.public_health: must be true on Kubernetes (the kubelet's probes of /health "
            "and /ready send no API key)"
        )
    if spec.memory_max is None:
        raise ConfigError(f"{where}.memory_max: Kubernetes needs a memory limit for the server (e.g. 8G)")
    memory = memory_quantity(spec.memory_max, f"{where}.memory_max")
    notes: list[str] = []

    # The model volume.
    if k8s.storage.size is not None:
        storage_size = k8s.storage.size
    else:
        size = _model_bytes(config, model, paths)
        if size is None:
            raise ConfigError(
                f"k8s.storage.size: the size of model '{model}' is unknown here (it is not in this host's models.lock)",
                hint=f"set k8s.storage.size (e.g. 20Gi), or `llmctl models pull {model}` first",
            )
        storage_size = _volume_size(size)
    pvc = k8s.storage.type == "pvc"
    pvc_name = f"{name}-models"
    if config.airgap and hub:
        notes.append(
            f"service '{service}': airgap is on, so the pod cannot download model '{model}': "
            + (
                "put it on the volume first (README: k8s)"
                if pvc
                else "with storage.type emptyDir every new pod starts empty and waits; use a PVC filled beforehand"
            )
        )

    # Keys: files from one Secret per service, never environment variables.
    secret_name = f"{name}-credentials"
    keys: list[tuple[str, str]] = []
    if spec.api_keys_file:
        keys.append((CREDENTIAL_NAME, spec.api_keys_file))
    else:
        notes.append(f"service '{service}' has no API keys: every client the NetworkPolicy admits can use it")
    if not config.airgap:
        for upstream in config.upstreams_for(service):
            u = config.upstreams[upstream]
            if u.api_key_env:
                keys.append((f"upstream-{upstream}", f"${u.api_key_env}"))
            elif u.api_key_file:
                keys.append((f"upstream-{upstream}", u.api_key_file))
    metrics_secret = None
    if k8s.service_monitor and spec.api_keys_file and not spec.public_metrics:
        keys.append(("metrics-key", spec.api_keys_file))
        metrics_secret = secret_name
    secret = SecretNeed(secret_name, service, tuple(keys)) if keys else None

    cpu = spec.n_threads or k8s.cpu
    selector = {"app.kubernetes.io/name": "llmctl", "app.kubernetes.io/instance": name}
    labels = {**selector, "app.kubernetes.io/component": "server", **base_labels}
    container_port = spec.port if spec.port >= 1024 else UNPRIVILEGED_PORT
    base = ["llmctl", "--user", "--config", CONFIG_FILE]
    serve_command = [*base, "serve", service, "--host", "0.0.0.0", "--port", str(container_port)]
    if spec.n_threads is None:
        serve_command += ["--threads", str(cpu)]  # llama.cpp would count the node's cores, not the limit
    common_env = [
        {"name": "HOME", "value": TMP},
        {"name": "XDG_DATA_HOME", "value": DATA_HOME},
        {"name": "XDG_STATE_HOME", "value": STATE_HOME},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP}/cache"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "NO_COLOR", "value": "1"},
    ]
    init_env = list(common_env)
    if config.airgap:
        init_env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    pull_env = list(init_env)
    if hub and not config.airgap:
        pull_env.append({"name": "HF_TOKEN_PATH", "value": f"{HF_TOKEN_DIR}/token"})
    serve_env = list(common_env)
    if secret is not None:
        serve_env.append({"name": CREDENTIALS_ENV, "value": CREDENTIALS_DIR})

    config_mount = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    tmp_mount = {"name": "tmp", "mountPath": TMP}
    init_mounts = [config_mount, {"name": "models", "mountPath": MODEL_DIR}, tmp_mount]
    pull_mounts = list(init_mounts)
    serve_mounts = [
        config_mount,
        {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_HOME},
        tmp_mount,
    ]
    volumes: list[dict] = [
        {
            "name": "config",
            "configMap": {
                "name": CONFIG_MAP,
                "defaultMode": 0o444,
                "items": [{"key": "config.yaml", "path": "config.yaml"}],
            },
        },
        {
            "name": "models",
            **(
                {"persistentVolumeClaim": {"claimName": pvc_name}} if pvc else {"emptyDir": {"sizeLimit": storage_size}}
            ),
        },
        {"name": "state", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    if secret is not None:
        serve_mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "credentials",
                "secret": {
                    "secretName": secret_name,
                    "defaultMode": 0o440,
                    "items": [{"key": k, "path": k} for k, _ in keys if k != "metrics-key"],
                },
            }
        )
    if hub and not config.airgap:
        pull_mounts.append({"name": "hf-token", "mountPath": HF_TOKEN_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "hf-token",
                "secret": {
                    "secretName": HF_TOKEN_SECRET,
                    "optional": True,
                    "defaultMode": 0o440,
                    "items": [{"key": "token", "path": "token"}],
                },
            }
        )

    limits: dict[str, str] = {"cpu": str(cpu), "memory": memory}
    if spec.uses_gpu:
        limits[k8s.gpu_resource] = "1"
    ctx = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "selector": selector,
        "replicas": k8s.replicas,
        "strategy": (
            {"type": "Recreate"}
            if pvc
            else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        ),
        "config_sha256": config_sha256,
        "grace_s": math.ceil(spec.shutdown_timeout_s) + 10,
        "uid": k8s.uid,
        "gid": k8s.gid,
        "image": image,
        "pull_policy": k8s.image_pull_policy,
        "pull_command": [*base, "models", "pull", model],
        "verify_command": [*base, "models", "verify", model],
        "serve_command": serve_command,
        "pull_env": pull_env,
        "init_env": init_env,
        "serve_env": serve_env,
        "init_resources": INIT_RESOURCES,
        "server_resources": {"requests": {"cpu": str(cpu), "memory": memory}, "limits": limits},
        "pull_mounts": pull_mounts,
        "init_mounts": init_mounts,
        "serve_mounts": serve_mounts,
        "volumes": volumes,
        "container_port": container_port,
        "service_port": spec.port,
        "probe_period_s": PROBE_PERIOD_S,
        "startup_failures": math.ceil(k8s.startup_timeout_s / PROBE_PERIOD_S),
        "prestop_s": PRESTOP_S,
        "pvc_name": pvc_name,
        "storage_size": storage_size,
        "storage_class": k8s.storage.storage_class,
        "ingress_from": _ingress_from(config),
        "egress": _egress(config, service, hub),
        "metrics_secret": metrics_secret,
    }
    docs = [_document(env, "deployment.yaml.j2", ctx), _document(env, "service.yaml.j2", ctx)]
    if pvc:
        docs.append(_document(env, "pvc.yaml.j2", ctx))
    docs += [_document(env, "networkpolicy.yaml.j2", ctx), _document(env, "pdb.yaml.j2", ctx)]
    if k8s.service_monitor:
        docs.append(_document(env, "servicemonitor.yaml.j2", ctx))
    return docs, secret, notes
