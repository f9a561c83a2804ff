"""What to check: the configured services (by name, or all), or ad-hoc URLs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmctl.errors import ConfigError, NotFound, UsageError
from llmctl.health.probes import Target
from llmctl.keys import credential_file, credential_name, first_key
from llmctl.netutil import connect_host, host_port
from llmctl.unitname import unit_name


def service_target(name: str, spec: Any, *, environ: Mapping[str, str] | None = None) -> Target:
    """A Target for services.<name> (an llmctl.schema.ServiceSpec).

    Its key: the credential the health unit loads for this service (`api-keys-<service>`), else
    `api-keys`, else the service's api_keys_file. A key that cannot be read is this target's
    setup error (UNKNOWN), not the whole run's."""
    host = connect_host(spec.host)
    api_key = None
    setup_error = None
    if spec.api_keys_file:
        credential = credential_file([credential_name(name), credential_name()], environ)
        try:
            if credential is not None:
                api_key = first_key(credential, f"credential {credential.name}")
            else:
                api_key = first_key(Path(spec.api_keys_file).expanduser(), f"services.{name}.api_keys_file")
        except ConfigError as exc:
            setup_error = f"cannot read an API key: {exc}"
    return Target(
        name=name,
        host=host,
        port=spec.port,
        base_url=f"http://{host_port(host, spec.port)}",
        model=spec.model,
        api_key=api_key,
        unit=unit_name(name, spec.unit),
        gpu=bool(spec.uses_gpu),
        setup_error=setup_error,
    )


def config_targets(config: Any, names: Sequence[str], *, environ: Mapping[str, str] | None = None) -> list[Target]:
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
