"""What a health run needs from the config, and a cache of it for the runs that follow.

cron and the systemd timer run `llmctl health` every minute on every host, with the same config
each time. Validating the config (yaml, then pydantic's models of every section) costs more CPU than
the rest of the run together, so the first run stores what it took from the validated config, the
plan, in the state directory (`health-plan.json`), under a key of everything that could change it:
the config file's path and SHA256, every LLMCTL_* variable, the mode and state directory, llmctl's
version and the size and mtime of the modules that turn a config into a plan. A run whose key
matches reads the plan and never imports yaml or pydantic; any other run validates as before (a bad
config is the same error, never a stale plan) and writes the new plan.

The plan holds no secret: key files are named, and read by every run (targets.py). The cache is
trusted only when it is a regular file of the user who runs health that nobody else may write, so a
root run never acts on a restart_command another user wrote; --dry-run writes none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl import __version__
from llmctl.health.policy import PolicySettings
from llmctl.health.probes import ProbeSettings
from llmctl.netutil import connect_host
from llmctl.paths import Paths, resolve_paths
from llmctl.unitname import unit_name

PLAN_FILE = "health-plan.json"
PLAN_VERSION = 1
# The modules whose code decides what a plan holds: a change to one of them (an editable install)
# is a new key, as a new version is.
_CODE = ("config.py", "schema.py", "paths.py", "netutil.py", "unitname.py", "text.py", "health/plan.py")


@dataclass(frozen=True)
class ServiceCheck:
    """What health checks of services.<name>: where it dials, what it expects, what it restarts."""

    name: str
    host: str  # where a client on this host dials the bind address (netutil.connect_host)
    port: int
    model: str
    unit: str  # llmctl.unitname.unit_name
    gpu: bool  # configured for a GPU (ServiceSpec.uses_gpu)
    api_keys_file: str | None  # read by every run, never cached


@dataclass(frozen=True)
class HealthPlan:
    services: tuple[ServiceCheck, ...]
    probe: ProbeSettings  # health.timeout_s, retries, retry_delay_s, slow_ms, check_gpu
    policy: PolicySettings  # health.failures_before_restart, restart, backoff_*, restart_budget, ...
    recovery_timeout_s: float
    restart_command: tuple[str, ...] | None
    state_dir: Path

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)


def service_checks(config: Any) -> tuple[ServiceCheck, ...]:
    """The services of a validated config (llmctl.schema.Config), as health checks them."""
    return tuple(
        ServiceCheck(
            name=name,
            host=connect_host(spec.host),
            port=spec.port,
            model=spec.model,
            unit=unit_name(name, spec.unit),
            gpu=bool(spec.uses_gpu),
            api_keys_file=spec.api_keys_file,
        )
        for name, spec in config.services.items()
    )


def plan_from_config(config: Any, paths: Paths) -> HealthPlan:
    """The plan of a validated config (llmctl.schema.Config)."""
    h = config.health
    return HealthPlan(
        services=service_checks(config),
        probe=ProbeSettings(
            timeout_s=h.timeout_s,
            retries=h.retries,
            retry_delay_s=h.retry_delay_s,
            slow_ms=h.slow_ms,
            check_gpu=h.check_gpu,
        ),
        policy=PolicySettings.from_config(h),
        recovery_timeout_s=h.recovery_timeout_s,
        restart_command=tuple(h.restart_command) if h.restart_command is not None else None,
        state_dir=paths.state_dir,
    )


def _to_json(plan: HealthPlan, key: str) -> str:
    doc = {
        "version": PLAN_VERSION,
        "key": key,
        "services": [asdict(s) for s in plan.services],
        "probe": asdict(plan.probe),
        "policy": asdict(plan.policy),
        "recovery_timeout_s": plan.recovery_timeout_s,
        "restart_command": list(plan.restart_command) if plan.restart_command is not None else None,
    }
    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def _from_json(text: str, key: str, state_dir: Path) -> HealthPlan | None:
    try:
        doc = json.loads(text)
        if doc.get("version") != PLAN_VERSION or doc.get("key") != key:
            return None
        command = doc["restart_command"]
        return HealthPlan(
            services=tuple(ServiceCheck(**s) for s in doc["services"]),
            probe=ProbeSettings(**doc["probe"]),
            policy=PolicySettings(**doc["policy"]),
            recovery_timeout_s=float(doc["recovery_timeout_s"]),
            restart_command=tuple(str(a) for a in command) if command is not None else None,
            state_dir=state_dir,
        )
    except (ValueError, TypeError, KeyError, AttributeError):  # corrupt or from elsewhere: validate again
        return None


def plan_key(config_path: Path | None, config_bytes: bytes | None, paths: Paths, environ: Mapping[str, str]) -> str:
    package = Path(__file__).resolve().parent.parent
    code: list[tuple[str, int | None, int | None]] = []
    for rel in _CODE:
        try:
            st = (package / rel).stat()
            code.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            code.append((rel, None, None))
    material = {
        "llmctl": __version__,
        "code": code,
        "config": str(config_path.absolute()) if config_path is not None else None,
        "config_sha256": hashlib.sha256(config_bytes).hexdigest() if config_bytes is not None else None,
        "env": sorted((k, v) for k, v in environ.items() if k.startswith("LLMCTL_")),
        "mode": paths.mode,
        "state_dir": str(paths.state_dir),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _read_trusted(path: Path) -> str | None:
    """The file's text if it is a regular file of ours that no one else may write, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        if st.st_size > 1 << 20:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def load_plan(
    explicit: str | None, *, system: bool | None, environ: Mapping[str, str] | None = None, write: bool = True
) -> HealthPlan:
    """The plan of the config in use: from the cache when its key matches, else by validating the
    config (a bad config raises ConfigError as load_config does) and, with `write`, caching it."""
    from llmctl.config import find_config_file

    env = os.environ if environ is None else environ
    paths = resolve_paths(system)
    config_path, _named = find_config_file(explicit, paths)
    config_bytes = None
    key = None
    if config_path is not None:
        try:
            config_bytes = config_path.read_bytes()
        except OSError:  # load_config below says what is wrong with it
            config_path = None
    if config_path is not None or explicit is None and not env.get("LLMCTL_CONFIG"):
        key = plan_key(config_path, config_bytes, paths, env)
        cache = paths.state_dir / PLAN_FILE
        text = _read_trusted(cache)
        plan = _from_json(text, key, paths.state_dir) if text is not None else None
        if plan is not None:
            return plan
    from llmctl.config import load_config

    loaded = load_config(explicit, system=system, environ=dict(env), content=config_bytes)
    plan = plan_from_config(loaded.config, loaded.paths or paths)
    if write and key is not None:
        save_plan(plan, key)
    return plan


def save_plan(plan: HealthPlan, key: str) -> None:
    """Cache the plan (atomically, 0600). A state directory that cannot be written only costs the
    next run its speed: the run itself reports the problem when it saves its state."""
    from llmctl.fsutil import atomic_write_text

    try:
        plan.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan.state_dir / PLAN_FILE, _to_json(plan, key), mode=0o600)
    except OSError:
        pass
