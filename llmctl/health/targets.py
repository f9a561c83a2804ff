"""What to check: the configured services (by name, or all), or ad-hoc URLs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmctl.errors import ConfigError, NotFound, UsageError
from llmctl.health.probes import Target
from llmctl.health.plan import ServiceCheck, service_checks
from llmctl.keys import credential_file, credential_name, first_key
from llmctl.netutil import host_port


def service_target(check: ServiceCheck, *, environ: Mapping[str, str] | None = None) -> Target:
    """A Target for a configured service.

    Its key: the credential the health unit loads for this service (`api-keys-<service>`), else
    `api-keys`, else the service's api_keys_file. A key that cannot be read is this target's
    setup error (UNKNOWN), not the whole run's."""
    name = check.name
    api_key = None
    setup_error = None
    if check.api_keys_file:
        credential = credential_file([credential_name(name), credential_name()], environ)
        try:
            if credential is not None:
                api_key = first_key(credential, f"credential {credential.name}")
            else:
                api_key = first_key(Path(check.api_keys_file).expanduser(), f"services.{name}.api_keys_file")
        except ConfigError as exc:
            setup_error = f"cannot read an API key: {exc}"
    return Target(
        name=name,
        host=check.host,
        port=check.port,
        base_url=f"http://{host_port(check.host, check.port)}",
        model=check.model,
        api_key=api_key,
        unit=check.unit,
        gpu=check.gpu,
        setup_error=setup_error,
    )


def plan_targets(
    services: Sequence[ServiceCheck], names: Sequence[str], *, environ: Mapping[str, str] | None = None
) -> list[Target]:
    """The targets of the services named (all of them when none is), in the order named."""
    by_name = {s.name: s for s in services}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise NotFound(
                f"unknown service {unknown[0]!r} (configured: {known})",
                hint="services are configured under services: in the config file",
            )
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(by_name)
    return [service_target(by_name[n], environ=environ) for n in chosen]


def config_targets(config: Any, names: Sequence[str], *, environ: Mapping[str, str] | None = None) -> list[Target]:
    """plan_targets for a validated config (llmctl.schema.Config)."""
    return plan_targets(service_checks(config), names, environ=environ)


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
