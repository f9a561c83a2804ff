"""What to check: the configured services (by name, or all), or ad-hoc URLs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmctl.errors import NotFound, UsageError
from llmctl.health.probes import Target
from llmctl.netutil import connect_host, host_port

CREDENTIAL_NAME = "api-keys"


def default_unit(service: str) -> str:
    return f"llmctl-{service}.service"


def first_key(path: Path) -> str:
    """The first key in a keys file: one per line; blank lines and '#' comments skipped."""
    text = Path(path).read_text(encoding="utf-8")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError("it holds no key")


def credentials_key_file(service: str, environ: dict[str, str] | None = None) -> Path | None:
    """The key file systemd passed to this run as a credential, if any.

    `$CREDENTIALS_DIRECTORY/api-keys-<service>` (the health unit loads one per service), else
    `$CREDENTIALS_DIRECTORY/api-keys`.
    """
    env = os.environ if environ is None else environ
    cred = env.get("CREDENTIALS_DIRECTORY")
    if cred:
        for name in (f"{CREDENTIAL_NAME}-{service}", CREDENTIAL_NAME):
            path = Path(cred) / name
            if path.is_file():
                return path
    return None


def service_target(name: str, spec: Any, *, environ: dict[str, str] | None = None) -> Target:
    """A Target for services.<name> (an llmctl.schema.ServiceSpec)."""
    host = connect_host(spec.host)
    api_key = None
    setup_error = None
    if spec.api_keys_file:
        path = credentials_key_file(name, environ) or Path(spec.api_keys_file).expanduser()
        try:
            api_key = first_key(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            setup_error = f"cannot read an API key from {path}: {why}"
    return Target(
        name=name,
        host=host,
        port=spec.port,
        base_url=f"http://{host_port(host, spec.port)}",
        model=spec.model,
        api_key=api_key,
        unit=spec.unit or default_unit(name),
        gpu=bool(spec.uses_gpu),
        setup_error=setup_error,
    )


def config_targets(config: Any, names: Sequence[str], *, environ: dict[str, str] | None = None) -> list[Target]:
    services = config.services
    if names:
        unknown = [n for n in names if n not in services]
        if unknown:
            known = ", ".join(sorted(services)) or "none"
            raise NotFound(
                f"unknown service {unknown[0]!r} (configured: {known})",
                hint="services are configured under services: in the config file",
            )
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(services)
    return [service_target(n, services[n], environ=environ) for n in chosen]


def url_target(url: str, *, model: str | None = None, api_key: str | None = None, name: str | None = None) -> Target:
    """An ad-hoc endpoint: http(s)://host[:port][/prefix]. It is probed, never restarted."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url!r}: expected http://HOST[:PORT]")
    if parts.query or parts.fragment:
        raise UsageError(f"--url {url!r}: no query or fragment, please")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--url {url!r}: bad port") from None
    host = parts.hostname
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):  # people paste OpenAI base URLs
        prefix = prefix[: -len("/v1")]
    return Target(
        name=name or f"{host}:{port}",
        host=host,
        port=port,
        base_url=f"{parts.scheme}://{host_port(host, port)}{prefix}",
        model=model,
        api_key=api_key,
        unit=None,
    )
