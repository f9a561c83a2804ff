"""The config file's shape: pydantic models, every one of them strict about unknown keys.

Imported only when a config is loaded (pydantic is heavy); `llmctl --help` never imports it.
config.example.yaml documents every key here and a test loads it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SIZE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGT]?$")

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(
            f"{kind} name {name!r} must be lower-case letters, digits, '.', '_' or '-' (at most 64)"
        )


class ModelSpec(Strict):
    """A model the host should have: from the Hub (repo + file) or a local file (path)."""

    repo: str | None = None
    file: str | None = None
    revision: str = "main"
    sha256: str | None = None
    path: str | None = None
    chat_format: str | None = None

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.lower().removeprefix("sha256:")
        if not SHA256_RE.match(v):
            raise ValueError("must be 64 hex digits")
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None and (v.count("/") != 1 or v.startswith("/") or v.endswith("/")):
            raise ValueError("must look like 'owner/name'")
        return v

    @model_validator(mode="after")
    def _source(self) -> ModelSpec:
        if self.path is None and (self.repo is None or self.file is None):
            raise ValueError("give either 'repo' and 'file', or 'path'")
        if self.path is not None and (self.repo is not None or self.file is not None):
            raise ValueError("give either 'repo' and 'file', or 'path', not both")
        if self.file is not None and not self.file.endswith(".gguf"):
            raise ValueError("'file' must name a .gguf file")
        return self


# Open files `llmctl serve` needs besides its client connections: the model, the ledger, upstream
# connections (up to 64), a GPU runtime's device files, logs (14 in all on a CPU host, seen).
# LimitNOFILE= and the RLIMIT_NOFILE serve asks for: max_connections + CONNECTION_OVERFLOW + FD_HEADROOM.
FD_HEADROOM = 128
# Connections past max_connections that are still accepted, to be answered 503; beyond, closed at once.
CONNECTION_OVERFLOW = 64


class Limits(Strict):
    """Bounds on what one client can ask of `llmctl serve`."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_tokens: int = Field(1024, ge=1)  # cap on a request's max_tokens (and its default)
    max_prompt_tokens: int | None = Field(None, ge=1)  # default: the context size minus max_tokens
    queue_length: int = Field(16, ge=0)  # requests waiting for the model beyond the one running
    queue_timeout_s: PositiveFloat = 30.0  # how long a request may wait for the model
    max_concurrent_streams: int = Field(16, ge=1)
    rate_limit_rpm: NonNegFloat = 600.0  # per API key, or per client IP without keys; 0 = off
    rate_limit_burst: int = Field(20, ge=1)
    max_connections: int = Field(256, ge=1, le=65536)  # open client connections; then 503, then refused
    header_timeout_s: PositiveFloat = 10.0  # a connection's request line and headers must arrive within this
    body_timeout_s: PositiveFloat = 30.0  # a request's body must arrive within this after its headers

    @property
    def open_files(self) -> int:
        """The open-file limit the server needs: LimitNOFILE= in its unit, RLIMIT_NOFILE at start."""
        return self.max_connections + CONNECTION_OVERFLOW + FD_HEADROOM


class ServiceSpec(Strict):
    """One inference server (one systemd unit, one `llmctl serve`)."""

    model: str
    host: str = "127.0.0.1"
    port: Port = 8000
    n_ctx: int = Field(4096, ge=64)
    n_batch: int = Field(512, ge=1)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)  # -1 = all layers
    gpu: bool = False
    flash_attn: bool = False
    chat_format: str | None = None  # overrides the model's chat_format
    embeddings: bool = False
    api_keys_file: str | None = None  # one key per line; or the systemd credential "api-keys"
    public_health: bool = True  # /health and /ready without an API key
    public_metrics: bool = False  # /metrics without an API key
    allow_unverified_path: bool = False  # serve a GGUF that is not in the store
    shutdown_timeout_s: PositiveFloat = 10.0
    trusted_proxies: list[str] = []  # addresses/networks whose X-Forwarded-For is believed; [] = none
    memory_max: str | None = "8G"  # systemd MemoryMax=
    unit: str | None = None  # systemd unit name; default llmctl-<service>.service
    limits: Limits = Limits()

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (such as 10.0.0.5 or "
                                 "10.0.0.0/24)") from None
        return v

    @field_validator("memory_max")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not SIZE_RE.match(v):
            raise ValueError("must be a size such as 512M or 8G")
        return v

    @property
    def uses_gpu(self) -> bool:
        return self.gpu or self.n_gpu_layers != 0


class HealthPolicy(Strict):
    """How `llmctl health` probes and when it restarts."""

    timeout_s: PositiveFloat = 10.0  # per probe
    retries: int = Field(2, ge=0)  # extra attempts after a failed probe
    retry_delay_s: NonNegFloat = 1.0
    slow_ms: int = Field(2000, ge=1)  # a completion slower than this is WARNING
    failures_before_restart: int = Field(1, ge=1)  # consecutive failed runs before acting
    restart: bool = True
    restart_command: list[str] | None = None  # default: systemctl restart {unit}
    recovery_timeout_s: PositiveFloat = 60.0  # wait this long for the service to come back
    backoff_initial_s: NonNegFloat = 30.0  # wait between restarts, doubled each time
    backoff_max_s: NonNegFloat = 900.0
    restart_budget: int = Field(3, ge=0)  # at most this many restarts ...
    budget_window_s: PositiveFloat = 3600.0  # ... per window
    interval: str = "1min"  # the systemd timer's period
    check_gpu: bool = True  # for GPU services: confirm offload is active

    @field_validator("restart_command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0].strip()):
            raise ValueError("must name a command: a list such as [systemctl, restart, '{unit}'], or null")
        return v


class BenchDefaults(Strict):
    """Defaults for `llmctl bench`."""

    model: str = "smoke"
    n_prompt: list[Annotated[int, Field(ge=0)]] = [512]
    n_gen: list[Annotated[int, Field(ge=0)]] = [128]
    repetitions: int = Field(5, ge=1)
    threads: list[Annotated[int, Field(ge=1)]] | None = None
    n_gpu_layers: list[Annotated[int, Field(ge=-1)]] = [0]
    batch_size: list[Annotated[int, Field(ge=1)]] = [2048]
    n_ctx: int | None = Field(None, ge=64)
    flash_attn: bool = False
    repack: bool | None = None  # llama.cpp's repacked/AMX weight buffers; null: on, except on AMX CPUs


class SystemdSettings(Strict):
    """How `llmctl systemd` renders the units."""

    server_user: str = "llmctl"  # DynamicUser= name of the inference servers
    health_user: str = "llmctl-health"  # static user of the health check (sysusers.d, polkit rule)
    gpu_groups: list[str] = ["video", "render"]  # SupplementaryGroups= of GPU services (/dev/dri, /dev/kfd)
    health_textfile: str | None = None  # node_exporter textfile the health check writes; null: none

    @field_validator("server_user", "health_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_-]{0,30}$", v):
            raise ValueError("must be a user name: lower-case letters, digits, '_' or '-' (at most 31)")
        return v

    @field_validator("gpu_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.match(r"^[a-z_][a-z0-9_-]{0,30}$", g):
                raise ValueError(f"{g!r} is not a group name")
        return v

    @field_validator("health_textfile")
    @classmethod
    def _textfile(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or not v.endswith(".prom")):
            raise ValueError("must be an absolute path ending in .prom")
        return v


# -- upstreams and routing (llmctl serve's fallback, the usage ledger) -----------------------------------

STRATEGY_KEYWORDS = ("none", "cascade")


class UpstreamSpec(Strict):
    """An OpenAI-compatible endpoint `llmctl serve` may send a request to when the local model fails."""

    base_url: str  # up to and including /v1: https://api.openai.com/v1, http://gpu-2.lan:8000/v1
    api_key_env: str | None = None  # the environment variable holding the key
    api_key_file: str | None = None  # or a file holding it (first line); neither: no key sent
    models: dict[str, str] = {}  # requested (or served) model name -> the upstream's model name
    default_model: str | None = None  # when `models` has no entry; neither: the upstream is skipped
    timeout_s: PositiveFloat = 30.0  # connect, and each read (the first byte, then between chunks)
    price_in_per_1k: NonNegFloat = 0.0  # USD per 1K prompt tokens
    price_out_per_1k: NonNegFloat = 0.0  # USD per 1K completion tokens
    cloud: bool = True  # false: a host of your own (another llmctl): privacy rules allow it

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL such as https://api.openai.com/v1")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _key(self) -> UpstreamSpec:
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError("give 'api_key_env' or 'api_key_file', not both")
        return self


class CircuitSpec(Strict):
    failures: int = Field(3, ge=1)  # consecutive failures that open an upstream's circuit
    cooldown_s: PositiveFloat = 30.0  # then one trial request (half-open) after this long


class RoutingPolicy(Strict):
    """Where `llmctl serve` sends a request the local model cannot take, and what it records."""

    strategy: str = "none"  # none | cascade | <an upstream's name>
    services: dict[str, str] = {}  # per service: <service> -> strategy (overrides `strategy`)
    cascade: list[str] | None = None  # the order for `cascade`; null: the order of upstreams:
    privacy_headers: list[str] = ["x-llmctl-private"]  # a request with one of these never goes to a cloud
    privacy_patterns: list[str] = []  # regular expressions; a prompt matching one never goes to a cloud
    circuit: CircuitSpec = CircuitSpec()
    retries: int = Field(1, ge=0)  # extra attempts on one upstream (only before the first byte is sent)
    backoff_initial_s: NonNegFloat = 0.25  # the first retry waits up to this (full jitter) ...
    backoff_max_s: NonNegFloat = 4.0  # ... doubling each time, up to this
    reference_price_in_per_1k: NonNegFloat = 0.0  # `llmctl usage` savings: all traffic at this price
    reference_price_out_per_1k: NonNegFloat = 0.0
    ledger: bool = True  # record every request in the usage ledger (state dir, usage.db)
    ledger_queue: int = Field(10_000, ge=1)  # records waiting to be written; beyond: counted drops

    @field_validator("privacy_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a regular expression: {exc}") from None
        return v

    @field_validator("privacy_headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        return [h.lower() for h in v]


class Config(Strict):
    version: Literal[1] = 1
    models: dict[str, ModelSpec] = {}
    services: dict[str, ServiceSpec] = {}
    health: HealthPolicy = HealthPolicy()
    bench: BenchDefaults = BenchDefaults()
    systemd: SystemdSettings = SystemdSettings()
    upstreams: dict[str, UpstreamSpec] = {}
    routing: RoutingPolicy = RoutingPolicy()
    airgap: bool = False  # no request ever leaves the host (LLMCTL_AIRGAP=1)

    @field_validator("models", "services", "upstreams", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @model_validator(mode="after")
    def _names(self) -> Config:
        for name in self.models:
            _check_name("model", name)
        for name in self.services:
            _check_name("service", name)
        _check_routing(self)
        return self


def _check_routing(cfg: Config) -> None:
    for name in cfg.upstreams:
        _check_name("upstream", name)
        if name in STRATEGY_KEYWORDS:
            raise ValueError(f"upstream name {name!r} is reserved (a routing strategy)")
    known = ", ".join(sorted(cfg.upstreams)) or "none configured"
    strategies = [("routing.strategy", cfg.routing.strategy)]
    strategies += [(f"routing.services.{k}", v) for k, v in cfg.routing.services.items()]
    for where, strategy in strategies:
        if strategy not in STRATEGY_KEYWORDS and strategy not in cfg.upstreams:
            raise ValueError(f"{where}: {strategy!r} is not none, cascade or an upstream (upstreams: {known})")
    for name in cfg.routing.cascade or []:
        if name not in cfg.upstreams:
            raise ValueError(f"routing.cascade: {name!r} is not an upstream (upstreams: {known})")


def known_keys(loc: list[str]) -> list[str]:
    """The keys allowed at a key path (for 'did you mean' on unknown keys)."""
    model: type[BaseModel] | None = Config
    i = 0
    while model is not None and i < len(loc):
        part = loc[i]
        fld = model.model_fields.get(part)
        if fld is None:
            return []
        ann = fld.annotation
        if part in ("models", "services", "upstreams") and model is Config:
            model = {"models": ModelSpec, "services": ServiceSpec, "upstreams": UpstreamSpec}[part]
            i += 2  # skip the entry's name
            continue
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        i += 1
    return list(model.model_fields) if model is not None and i == len(loc) else []
