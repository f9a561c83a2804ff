"""Render the systemd units (and the files they need) from the config.

Deterministic: the same config and options give the same bytes. Every file names the llmctl version
that rendered it. jinja2 is imported inside the functions that use it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from llmctl import __version__
from llmctl.errors import NotFound, UsageError
from llmctl.keys import credential_name
from llmctl.netutil import connect_host, is_loopback
from llmctl.paths import SYSTEM_CONFIG_DIR, SYSTEM_DATA_DIR, Paths
from llmctl.text import check_pattern
from llmctl.unitname import HEALTH_TIMER, HEALTH_UNIT
from llmctl.unitname import unit_name as _unit_name
from llmctl.units.escape import FINALIZE, Rendered, exec_line, no_control, quote_arg, unit_path

# The escapers live in escape.py, the unit name rule in llmctl.unitname.
__all__ = ["HEALTH_TIMER", "HEALTH_UNIT", "exec_line", "quote_arg", "render", "unit_name", "unit_path"]

if TYPE_CHECKING:
    from llmctl.schema import Config, ServiceSpec

POLKIT_RULES = "50-llmctl-health.rules"
SYSUSERS_CONF = "llmctl.conf"
MARKER = "Rendered by llmctl"

# Where each kind of file goes, relative to the root (system mode).
SYSTEM_UNIT_DIR = PurePosixPath("etc/systemd/system")
POLKIT_DIR = PurePosixPath("etc/polkit-1/rules.d")
SYSUSERS_DIR = PurePosixPath("etc/sysusers.d")

RESTART_SEC = "5s"
START_LIMIT_INTERVAL = "10min"
START_LIMIT_BURST = 5
WATCHDOG = "30s"
TIMEOUT_START = "10min"  # loading a large model from a slow disk takes a while
SYSTEM_CONFIG_FILE = SYSTEM_CONFIG_DIR / "config.yaml"


@dataclass(frozen=True)
class RenderedFile:
    name: str  # file name, e.g. llmctl-chat.service
    kind: str  # "service" | "timer" | "polkit" | "sysusers"
    relpath: str  # where it is installed, relative to the root (system) or to the user's config dir
    content: str
    service: str | None = None  # the config service it serves, for server units


@dataclass(frozen=True)
class RenderOptions:
    llmctl: str  # absolute path of the llmctl executable written into ExecStart
    config_path: str  # absolute path of the config file written into ExecStart
    user: bool = False  # user units (systemctl --user) instead of system units
    paths: Paths | None = None  # where the store is read from (lock entries); default system layout


@dataclass(frozen=True)
class RenderResult:
    files: tuple[RenderedFile, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # Directories the units write that systemd does not create (user mode: the state directory,
    # made writable by ReadWritePaths= in a read-only home); install creates them.
    directories: tuple[str, ...] = field(default_factory=tuple)

    def get(self, name: str) -> RenderedFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


# -- helpers -----------------------------------------------------------------------------------------


def default_llmctl() -> str:
    """The running installation's `llmctl` script: beside sys.executable, else on PATH."""
    beside = Path(sys.executable).parent / "llmctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("llmctl")
    if found:
        return str(Path(found).absolute())
    raise NotFound("cannot find the installed `llmctl` executable", hint="pass --llmctl PATH")


def unit_name(service: str, spec: ServiceSpec) -> str:
    """The server unit of services.<service> (llmctl.unitname.unit_name)."""
    return _unit_name(service, spec.unit)


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def _families(hosts: list[str]) -> str:
    """AF_UNIX for sd_notify and D-Bus; AF_INET and AF_INET6 only where a host needs them."""
    inet4 = inet6 = False
    for host in hosts:
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:  # a name: may resolve to either
            inet4 = inet6 = True
            continue
        if version == 4:
            inet4 = True
        else:  # "::" listens on both stacks
            inet6 = True
            inet4 = inet4 or ipaddress.ip_address(host).is_unspecified
    return " ".join(f for f, on in (("AF_UNIX", True), ("AF_INET", inet4), ("AF_INET6", inet6)) if on)


def _ip_allow(hosts: list[str]) -> str | None:
    """IPAddressAllow= when every host is loopback; None (no IP restriction) otherwise."""
    return "localhost" if hosts and all(is_loopback(h) for h in hosts) else None


def _header(comment: str, source: str, what: str) -> Rendered:
    """The first lines of every file (comments). `source` is the config path, checked by _check_abs:
    no control character can end the comment."""
    return Rendered(
        f"{comment} {MARKER} {__version__} from {no_control('the config path', source)} ({what}).\n"
        f"{comment} Do not edit: change the config and run `llmctl systemd install` again."
    )


def system_paths() -> Paths:
    return Paths("system", SYSTEM_CONFIG_DIR, SYSTEM_DATA_DIR, SYSTEM_DATA_DIR / "state", Path("/var/cache/llmctl"))


def _lock_entry(store_paths: Paths | None, model_ref: str):
    """The lock entry of a model in the local store, or None (no store given, not installed, or an
    unreadable lock: the unit then names the store's layout)."""
    if store_paths is None:
        return None
    from llmctl.errors import LlmctlError
    from llmctl.models.store import Store

    try:
        return Store(store_paths).read_lock().get(model_ref)
    except LlmctlError:
        return None


def model_file(config: Config, model_ref: str, store_paths: Paths | None, models_dir: Path) -> Path:
    """The verified model file a service loads: its lock entry's path if installed, else the store's
    layout for the configured model (models_dir / name / file). A lock entry whose path leaves the
    store is an IntegrityError (exit 3), never a unit that loads that file."""
    from llmctl.models.smoke import SMOKE_FILE, SMOKE_NAME
    from llmctl.models.store import Store, lock_relpath

    entry = _lock_entry(store_paths, model_ref)
    if entry is not None and store_paths is not None:
        Store(store_paths).model_path(entry)  # resolved in the local store: IntegrityError if it leaves it
        return models_dir / lock_relpath(entry)
    if model_ref == SMOKE_NAME:
        return models_dir / SMOKE_NAME / SMOKE_FILE
    spec = config.models.get(model_ref)
    if spec is None:
        if model_ref.startswith("/"):
            return Path(model_ref)
        raise UsageError(
            f"services: model '{model_ref}' is not in models: and not installed",
            hint="add it under models:, or use smoke",
        )
    filename = spec.file if spec.file is not None else PurePosixPath(spec.path or "").name
    return models_dir / model_ref / PurePosixPath(filename).name


# -- rendering ---------------------------------------------------------------------------------------


class _Templates:
    """One Jinja environment per output format; each escapes every `{{ value }}` for its format
    (llmctl.units.escape.FINALIZE), so no template can write a raw config value."""

    def __init__(self) -> None:
        from llmctl.templating import environment

        self._envs = {fmt: environment(finalize=finalize) for fmt, finalize in FINALIZE.items()}

    def render(self, fmt: str, template: str, ctx: dict) -> str:
        return self._envs[fmt].get_template(template).render(**ctx)


def _check_abs(label: str, value: str) -> None:
    no_control(label, value)
    if not os.path.isabs(value):
        raise UsageError(f"{label} must be an absolute path, not {value!r}")


def render(config: Config, options: RenderOptions, services: list[str] | None = None) -> RenderResult:
    """Render the server unit of each service (or those named), the health service and timer, and
    (system mode) the polkit rule and the sysusers.d file."""
    _check_abs("the llmctl path", options.llmctl)
    _check_abs("the config path", options.config_path)
    known = list(config.services)
    chosen = known if not services else list(dict.fromkeys(services))
    for name in chosen:
        if name not in config.services:
            raise NotFound(f"no service '{name}' in the config", hint=f"configured: {', '.join(known) or 'none'}")
    env = _Templates()
    system = not options.user
    systemd_cfg = config.systemd
    models_dir = system_paths().models_dir if system else (options.paths or system_paths()).models_dir
    mode_flag = "--system" if system else "--user"
    base = [options.llmctl, mode_flag, "--config", options.config_path]
    files: list[RenderedFile] = []
    warnings: list[str] = []

    for name in chosen:
        spec = config.services[name]
        unit = unit_name(name, spec)
        # Every model the service serves, each by its file (one --model each; the first is the default).
        model_files = [model_file(config, ref, options.paths, models_dir) for ref in spec.served_models]
        argv = [*base, "serve", name]
        for path in model_files:
            argv += ["--model", str(path)]
        hosts = [spec.host]
        ctx = {
            "header": _header("#", options.config_path, f"service '{name}'"),
            "service": name,
            "model_name": spec.model,
            "exec_start": exec_line(argv),
            "credential": credential_name(),
            "api_keys_file": (
                unit_path(f"services.{name}.api_keys_file", spec.api_keys_file) if spec.api_keys_file else None
            ),
            "restart_sec": RESTART_SEC,
            "start_limit_interval": START_LIMIT_INTERVAL,
            "start_limit_burst": START_LIMIT_BURST,
            "timeout_start": TIMEOUT_START,
            "timeout_stop": _seconds(spec.shutdown_timeout_s + 10),
            "watchdog": WATCHDOG,
            "memory_max": spec.memory_max,
            "limit_nofile": spec.limits.open_files,
            "system": system,
            "server_user": systemd_cfg.server_user,
            "gpu": spec.uses_gpu,
            "gpu_groups": " ".join(systemd_cfg.gpu_groups),  # user names (schema): no spaces inside
            "bind_service": spec.port < 1024,
            "address_families": _families(hosts),
            "ip_allow": _ip_allow(hosts),
            "wanted_by": "multi-user.target" if system else "default.target",
            "protect_home": "yes" if system else "read-only",
            # Where serve writes (the usage ledger), and nothing else: StateDirectory= of the
            # dynamic user in system mode; in user mode the home is read-only but for this.
            "state_directory": (str(system_paths().serve_state_dir.relative_to("/var/lib")) if system else ""),
            "read_write_paths": (
                []
                if system or options.paths is None
                else ["-" + unit_path("the state directory", str(options.paths.serve_state_dir))]
            ),
        }
        if system:
            for label, p in (
                ("the llmctl path", options.llmctl),
                ("the config file", options.config_path),
                *(("the model", str(f)) for f in model_files),
            ):
                if p.startswith(("/home/", "/root/", "/run/user/")):
                    warnings.append(f"{label} {p} is under a home directory, which ProtectHome=yes hides from {unit}")
        for ref in spec.served_models:
            warnings += _readable_warnings(unit, name, ref, options, system)
        content = env.render("systemd", "server.service.j2", ctx)
        files.append(RenderedFile(unit, "service", _unit_rel(unit, system), content, service=name))

    # The health check covers every configured service, whichever were named.
    server_units = [unit_name(n, s) for n, s in config.services.items()]
    if len(set(server_units)) != len(server_units):
        raise UsageError("services: two services have the same unit name")
    h = config.health
    if not check_pattern("timespan", h.interval):
        raise UsageError(f"health.interval: {h.interval!r} is not a systemd time span (e.g. 1min, 30s)")
    probe_hosts = [connect_host(s.host) for s in config.services.values()]
    per_service = h.timeout_s * (h.retries + 1) + h.retry_delay_s * h.retries + h.recovery_timeout_s
    health_argv = [*base, "health", "--quiet"]
    read_write: list[str] = []
    if systemd_cfg.health_textfile:
        health_argv += ["--textfile", systemd_cfg.health_textfile]
        textfile_dir = str(PurePosixPath(systemd_cfg.health_textfile).parent)
        read_write.append("-" + unit_path("systemd.health_textfile", textfile_dir))
    credentials = [
        (credential_name(n), unit_path(f"services.{n}.api_keys_file", s.api_keys_file))
        for n, s in config.services.items()
        if s.api_keys_file
    ]
    if system:
        state_rel = str(system_paths().state_dir.relative_to("/var/lib"))
    else:
        state_rel = ""
        if options.paths is not None:
            read_write.append("-" + unit_path("the state directory", str(options.paths.state_dir)))
    hctx = {
        "header": _header("#", options.config_path, "health check"),
        "after": " ".join(["network.target", *server_units]),
        "exec_start": exec_line(health_argv),
        "timeout_start": _seconds(per_service * max(1, len(server_units)) + 30),
        "credentials": credentials,
        "system": system,
        "health_user": systemd_cfg.health_user,
        "state_directory": state_rel,
        "read_write_paths": read_write,
        "address_families": _families(probe_hosts or ["127.0.0.1"]),
        "ip_allow": _ip_allow(probe_hosts or ["127.0.0.1"]),
        "protect_home": "yes" if system else "read-only",
    }
    files.append(
        RenderedFile(
            HEALTH_UNIT, "service", _unit_rel(HEALTH_UNIT, system), env.render("systemd", "health.service.j2", hctx)
        )
    )
    tctx = {
        "header": _header("#", options.config_path, "health check timer"),
        "interval": h.interval,
        "health_unit": HEALTH_UNIT,
    }
    files.append(
        RenderedFile(
            HEALTH_TIMER, "timer", _unit_rel(HEALTH_TIMER, system), env.render("systemd", "health.timer.j2", tctx)
        )
    )
    if system:
        pctx = {
            "header": _header("//", options.config_path, "health check restarts"),
            "health_user": systemd_cfg.health_user,
            "server_units": server_units,
        }
        files.append(
            RenderedFile(
                POLKIT_RULES, "polkit", str(POLKIT_DIR / POLKIT_RULES), env.render("polkit", "polkit.rules.j2", pctx)
            )
        )
        sctx = {
            "header": _header("#", options.config_path, "users"),
            "health_user": systemd_cfg.health_user,
            "gecos": "llmctl health check",
            "health_home": str(system_paths().state_dir),
        }
        files.append(
            RenderedFile(
                SYSUSERS_CONF,
                "sysusers",
                str(SYSUSERS_DIR / SYSUSERS_CONF),
                env.render("sysusers", "sysusers.conf.j2", sctx),
            )
        )
    directories = (
        () if system or options.paths is None else (str(options.paths.state_dir), str(options.paths.serve_state_dir))
    )
    return RenderResult(tuple(files), tuple(warnings), tuple(dict.fromkeys(directories)))


def _readable_warnings(unit: str, service: str, model_ref: str, options: RenderOptions, system: bool) -> list[str]:
    """The servers run as a dynamic user: the model and the config must be readable by others."""
    if not system:
        return []
    out = []
    candidates = [("the config file", Path(options.config_path))]
    entry = _lock_entry(options.paths, model_ref)
    if entry is not None and options.paths is not None:
        from llmctl.models.store import Store

        candidates.append((f"model '{model_ref}'", Store(options.paths).model_path(entry)))
    for label, path in candidates:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if not mode & 0o004:
            out.append(
                f"{label} {path} is not world-readable; {unit} runs as a dynamic user and cannot read it (chmod o+r)"
            )
    return out


def _unit_rel(name: str, system: bool) -> str:
    return str(SYSTEM_UNIT_DIR / name) if system else name
