"""The config's `upstreams:`, `routing:` and `airgap` as the router uses them.

API keys are read here, once, at start-up (a missing variable or file is a config error that names
the key path); they live in `Upstream.api_key`, which has no repr and is never logged or recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import ConfigError
from llmctl.keys import CREDENTIALS_ENV, first_key

if TYPE_CHECKING:
    from llmctl.schema import Config, UpstreamSpec

AIRGAP_ENV = "LLMCTL_AIRGAP"


def upstream_route(name: str) -> str:
    """The route of requests an upstream served: the `route` label, the ledger's route, X-Llmctl-Route."""
    return f"upstream:{name}"


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    api_key: str | None = field(repr=False)
    models: dict[str, str]
    default_model: str | None
    timeout_s: float
    price_in_per_1k: float
    price_out_per_1k: float
    cloud: bool

    @property
    def route(self) -> str:
        return upstream_route(self.name)

    def remote_model(self, *names: str | None) -> str | None:
        for n in names:
            if n and n in self.models:
                return self.models[n]
        return self.default_model

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_in_per_1k + completion_tokens / 1000 * self.price_out_per_1k


@dataclass(frozen=True)
class RoutingConfig:
    strategy: str  # none | cascade | <upstream>: already resolved for the service
    upstreams: tuple[Upstream, ...]  # the ones the strategy may use, in order
    airgap: bool
    privacy_headers: tuple[str, ...]
    privacy_patterns: tuple[re.Pattern, ...]
    failures: int
    cooldown_s: float
    retries: int
    backoff_initial_s: float
    backoff_max_s: float

    @property
    def enabled(self) -> bool:
        return bool(self.upstreams) and not self.airgap


def read_api_key(name: str, spec: UpstreamSpec, environ: dict[str, str]) -> str | None:
    where = f"upstreams.{name}"
    if spec.api_key_env:
        value = environ.get(spec.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"{where}.api_key_env: the environment variable {spec.api_key_env} is not set",
                hint=f"export {spec.api_key_env}=..., or drop the upstream from the routing",
            )
        return value
    if spec.api_key_file:
        path = Path(spec.api_key_file).expanduser()
        directory = environ.get(CREDENTIALS_ENV)
        if not path.is_absolute() and directory:  # a systemd credential (the pods' Secret file) by name
            path = Path(directory) / path
        return first_key(path, f"{where}.api_key_file")
    return None


def airgap_on(cfg: Config, environ: dict[str, str] | None = None) -> bool:
    """`airgap: true` in the file, or LLMCTL_AIRGAP (the loader maps it onto `airgap` already;
    this also covers a config loaded without environment overrides)."""
    env = os.environ if environ is None else environ
    raw = env.get(AIRGAP_ENV, "").strip().lower()
    return cfg.airgap or raw in ("1", "true", "yes", "on")


def routing_for(cfg: Config, service: str | None, environ: dict[str, str] | None = None) -> RoutingConfig:
    """The routing of one served service; reads only the keys of the upstreams it may use."""
    env = dict(os.environ if environ is None else environ)
    policy = cfg.routing
    strategy = policy.strategy_for(service)
    airgap = airgap_on(cfg, env)
    names = [] if airgap else cfg.upstreams_for(service)
    upstreams = tuple(
        Upstream(
            name=n,
            base_url=cfg.upstreams[n].base_url,
            api_key=read_api_key(n, cfg.upstreams[n], env),
            models=dict(cfg.upstreams[n].models),
            default_model=cfg.upstreams[n].default_model,
            timeout_s=cfg.upstreams[n].timeout_s,
            price_in_per_1k=cfg.upstreams[n].price_in_per_1k,
            price_out_per_1k=cfg.upstreams[n].price_out_per_1k,
            cloud=cfg.upstreams[n].cloud,
        )
        for n in names
    )
    return RoutingConfig(
        strategy=strategy,
        upstreams=upstreams,
        airgap=airgap,
        privacy_headers=tuple(policy.privacy_headers),
        privacy_patterns=tuple(re.compile(p) for p in policy.privacy_patterns),
        failures=policy.circuit.failures,
        cooldown_s=policy.circuit.cooldown_s,
        retries=policy.retries,
        backoff_initial_s=policy.backoff_initial_s,
        backoff_max_s=policy.backoff_max_s,
    )
