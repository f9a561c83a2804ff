"""The Pod Security Standards, Baseline and Restricted profiles, as checks on a pod spec.

Written from the controls table of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(policy version "latest"). The reference implementation is Go (k8s.io/pod-security-admission); no
maintained Python library evaluates these rules, and no API server can run on the test machines, so the
tests use this transcription. Each control is one function that returns the problems it finds, named as
the documentation names the control; tests/unit/test_k8s_render.py feeds it specs that break each control
to show that it catches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            yield f"{kind}[{c.get('name')}]", c


def _sc(obj: dict) -> dict:
    return obj.get("securityContext") or {}


# -- Baseline --------------------------------------------------------------------------------------------


def host_process(spec: dict, meta: dict) -> list[str]:
    out = [] if not (_sc(spec).get("windowsOptions") or {}).get("hostProcess") else ["pod: hostProcess"]
    out += [
        f"{n}: hostProcess" for n, c in _containers(spec) if (_sc(c).get("windowsOptions") or {}).get("hostProcess")
    ]
    return out


def host_namespaces(spec: dict, meta: dict) -> list[str]:
    return [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]


def privileged(spec: dict, meta: dict) -> list[str]:
    return [f"{n}: privileged" for n, c in _containers(spec) if _sc(c).get("privileged")]


def capabilities_baseline(spec: dict, meta: dict) -> list[str]:
    return [
        f"{n}: adds {cap}"
        for n, c in _containers(spec)
        for cap in ((_sc(c).get("capabilities") or {}).get("add") or [])
        if cap not in BASELINE_CAPABILITIES
    ]


def host_path_volumes(spec: dict, meta: dict) -> list[str]:
    return [f"volume {v.get('name')}: hostPath" for v in spec.get("volumes") or [] if "hostPath" in v]


def host_ports(spec: dict, meta: dict) -> list[str]:
    return [
        f"{n}: hostPort {p['hostPort']}"
        for n, c in _containers(spec)
        for p in c.get("ports") or []
        if p.get("hostPort")
    ]


def apparmor(spec: dict, meta: dict) -> list[str]:
    out = []
    for where, sc in [("pod", _sc(spec)), *((n, _sc(c)) for n, c in _containers(spec))]:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile {kind}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"annotation {key}: {value}")
    return out


def selinux(spec: dict, meta: dict) -> list[str]:
    out = []
    for where, sc in [("pod", _sc(spec)), *((n, _sc(c)) for n, c in _containers(spec))]:
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES:
            out.append(f"{where}: seLinuxOptions.type {opts['type']}")
        out += [f"{where}: seLinuxOptions.{k}" for k in ("user", "role") if opts.get(k)]
    return out


def proc_mount(spec: dict, meta: dict) -> list[str]:
    return [
        f"{n}: procMount {_sc(c)['procMount']}"
        for n, c in _containers(spec)
        if _sc(c).get("procMount", "Default") != "Default"
    ]


def seccomp_baseline(spec: dict, meta: dict) -> list[str]:
    return [
        f"{where}: seccompProfile Unconfined"
        for where, sc in [("pod", _sc(spec)), *((n, _sc(c)) for n, c in _containers(spec))]
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"
    ]


def sysctls(spec: dict, meta: dict) -> list[str]:
    return [f"pod: sysctl {s.get('name')}" for s in _sc(spec).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]


# -- Restricted (in addition to Baseline) -------------------------------------------------------------


def volume_types(spec: dict, meta: dict) -> list[str]:
    out = []
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        out += [f"volume {v.get('name')}: {k}" for k in sorted(kinds - RESTRICTED_VOLUMES)]
    return out


def privilege_escalation(spec: dict, meta: dict) -> list[str]:
    return [
        f"{n}: allowPrivilegeEscalation is not false"
        for n, c in _containers(spec)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]


def running_as_non_root(spec: dict, meta: dict) -> list[str]:
    pod = _sc(spec).get("runAsNonRoot")
    out = ["pod: runAsNonRoot false"] if pod is False else []
    for n, c in _containers(spec):
        mine = _sc(c).get("runAsNonRoot")
        if mine is False or (mine is None and pod is not True):
            out.append(f"{n}: runAsNonRoot is not true")
    return out


def running_as_non_root_user(spec: dict, meta: dict) -> list[str]:
    return [
        f"{where}: runAsUser 0"
        for where, sc in [("pod", _sc(spec)), *((n, _sc(c)) for n, c in _containers(spec))]
        if sc.get("runAsUser") == 0
    ]


def seccomp_restricted(spec: dict, meta: dict) -> list[str]:
    allowed = ("RuntimeDefault", "Localhost")
    pod = (_sc(spec).get("seccompProfile") or {}).get("type")
    out = [f"pod: seccompProfile {pod}"] if pod is not None and pod not in allowed else []
    for n, c in _containers(spec):
        mine = (_sc(c).get("seccompProfile") or {}).get("type")
        if (mine is None and pod not in allowed) or (mine is not None and mine not in allowed):
            out.append(f"{n}: seccompProfile {mine or 'unset'}")
    return out


def capabilities_restricted(spec: dict, meta: dict) -> list[str]:
    out = []
    for n, c in _containers(spec):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{n}: does not drop ALL capabilities")
        out += [f"{n}: adds {cap}" for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
    return out


BASELINE: dict[str, Callable[[dict, dict], list[str]]] = {
    "HostProcess": host_process,
    "Host Namespaces": host_namespaces,
    "Privileged Containers": privileged,
    "Capabilities": capabilities_baseline,
    "HostPath Volumes": host_path_volumes,
    "Host Ports": host_ports,
    "AppArmor": apparmor,
    "SELinux": selinux,
    "/proc Mount Type": proc_mount,
    "Seccomp": seccomp_baseline,
    "Sysctls": sysctls,
}
RESTRICTED: dict[str, Callable[[dict, dict], list[str]]] = {
    **BASELINE,
    "Volume Types": volume_types,
    "Privilege Escalation": privilege_escalation,
    "Running as Non-root": running_as_non_root,
    "Running as Non-root user": running_as_non_root_user,
    "Seccomp (restricted)": seccomp_restricted,
    "Capabilities (restricted)": capabilities_restricted,
}


def violations(pod_spec: dict, pod_metadata: dict | None = None, profile: dict | None = None) -> list[str]:
    """Every control of the profile (Restricted by default) that the pod spec breaks, with the detail."""
    out = []
    for control, check in (profile or RESTRICTED).items():
        out += [f"{control}: {p}" for p in check(pod_spec, pod_metadata or {})]
    return out


def pod_templates(docs: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(object, pod metadata, pod spec) of every workload in `docs`."""
    for doc in docs:
        kind = doc.get("kind")
        name = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
        if kind == "Pod":
            yield name, doc.get("metadata") or {}, doc["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template: Any = doc["spec"]["template"]
            yield name, template.get("metadata") or {}, template["spec"]
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            yield name, template.get("metadata") or {}, template["spec"]
