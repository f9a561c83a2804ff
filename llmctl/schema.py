"""The config file's shape: pydantic models, every one of them strict about unknown keys.

Imported only when a config is loaded (pydantic is heavy); `llmctl --help` never imports it.
config.example.yaml documents every key here and a test loads it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmctl.text import NAME_RULE, USER_RULE, check_pattern, control_char, describe_char, is_name, printable

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


def _no_control(value: Any, where: str = "") -> None:
    """Refuse a control character in any string of a config value (dict keys and list items too):
    config values land in unit files, polkit rules, command lines, HTTP headers and log lines."""
    if isinstance(value, str):
        ch = control_char(value)
        if ch is not None:
            raise ValueError(
                f"{where}{printable(repr(value))[:80]} contains a control character, "
                f"{describe_char(ch)}: not allowed in a config value"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_control(k, f"{where}key ")
            _no_control(v, f"{where}[{printable(repr(k))[:40]}]: " if isinstance(v, str) else where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_control(v, f"{where}[{i}]: " if isinstance(v, str) else where)


class Strict(BaseModel):
    # allow_inf_nan=False: `timeout_s: .inf` or `1e999` is an error, not a timeout that never ends.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        # Nested models validate their own fields; this walks strings, lists and dicts.
        _no_control(v)
        return v


def _check_name(kind: str, name: str) -> None:
    if not is_name(name):
        raise ValueError(f"{kind} name {printable(repr(name))} must be {NAME_RULE}")


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
        if not check_pattern("sha256", v):
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
        if self.file is not None and (self.file.startswith("/") or ".." in self.file.split("/")):
            raise ValueError("'file' must be a path inside the repository")
        return self


# Open files `llmctl serve` needs besides its client connections: the model, the ledger, upstream
# connections (up to 64), a GPU runtime's device files, logs (14 in all on a CPU host, seen).
# LimitNOFILE= and the RLIMIT_NOFILE serve asks for: max_connections + CONNECTION_OVERFLOW + FD_HEADROOM.
FD_HEADROOM = 128
# Connections past max_connections that are still accepted, to be answered 503; beyond, closed at once.
CONNECTION_OVERFLOW = 64


# Slots of one `llmctl serve` (llama.cpp sequences in one context); each holds a full n_ctx of KV.
MAX_PARALLEL = 64


class Limits(Strict):
    """Bounds on what one client can ask of `llmctl serve`."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_tokens: int = Field(1024, ge=1)  # cap on a request's max_tokens (and its default)
    max_prompt_tokens: int | None = Field(None, ge=1)  # default: the context size minus max_tokens
    queue_length: int = Field(16, ge=0)  # requests waiting for the model beyond the one running
    queue_timeout_s: PositiveFloat = 30.0  # how long a request may wait for the model
    max_concurrent_streams: int = Field(16, ge=1)
    max_n: int = Field(4, ge=1, le=128)  # choices per request (n): each is a sequence of its own
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
    """One inference server (one systemd unit, one `llmctl serve`).

    Several models: `models: [a, b]` (then `model`, the default one that health probes, is the
    first unless given; given, it is served too). The pool keys bound what is loaded at once."""

    model: str
    models: list[str] = []  # every model this server serves, loaded on demand (llmctl.serve.pool)
    max_loaded: int | None = Field(None, ge=1)  # loaded at once; None: as many as memory_budget allows
    memory_budget: int | None = Field(None, ge=1)  # bytes (or a size: 6G): estimated weights + KV of the loaded
    pinned: list[str] = []  # never unloaded (loaded at start)
    keep_alive_s: PositiveFloat | None = None  # unload a model idle this long; None: only to make room
    preload: list[str] | None = None  # loaded at start; None: the default model
    host: str = "127.0.0.1"
    port: Port = 8000
    n_ctx: int = Field(4096, ge=64)
    n_batch: int = Field(512, ge=1)
    parallel: int = Field(4, ge=1, le=MAX_PARALLEL)  # slots: requests decoded together, n_ctx each
    swa_full: bool = True  # sliding-window models: full-size KV for those layers (prefix reuse) or window only
    prompt_cache_mib: int = Field(
        1024, ge=0
    )  # host memory for evicted slots' prompt KV (llama-server's --cache-ram); 0: off
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)  # -1 = all layers
    gpu: bool = False
    flash_attn: bool = False
    chat_format: str | None = None  # overrides the model's chat_format
    tool_format: Literal["generic", "hermes", "llama3", "mistral"] | None = None  # None: from the chat template
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

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("model") is None
            and isinstance(data.get("models"), list)
            and data["models"]
            and isinstance(data["models"][0], str)
        ):
            data = {**data, "model": data["models"][0]}
        return data

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        from llmctl.text import size_bytes

        if isinstance(v, str):
            n = size_bytes(v)
            if n is None:
                raise ValueError("must be a number of bytes or a size such as 512M or 8G")
            return n
        return v

    @model_validator(mode="after")
    def _pool(self) -> ServiceSpec:
        served = self.served_models
        if len(self.models) != len(set(self.models)):
            raise ValueError("models: a model is named twice")
        for key in ("pinned", "preload"):
            for name in getattr(self, key) or []:
                if name not in served:
                    raise ValueError(f"{key}: {name!r} is not a model of this service ({', '.join(served)})")
        if self.max_loaded is not None and len(self.pinned) > self.max_loaded:
            raise ValueError(f"pinned: {len(self.pinned)} models are pinned but max_loaded is {self.max_loaded}")
        return self

    @property
    def served_models(self) -> list[str]:
        """Every model the server serves; the first is the default (health probes it)."""
        return list(dict.fromkeys([self.model, *self.models]))

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (such as 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return v

    @field_validator("memory_max")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not check_pattern("size", v):
            raise ValueError("must be a size such as 512M or 8G")
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        from llmctl.unitname import unit_problem

        problem = None if v is None else unit_problem(v)
        if problem is not None:
            raise ValueError(problem)
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
    pg: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]] = []  # [[PP, TG]]
    n_depth: list[Annotated[int, Field(ge=0)]] = [0]
    repetitions: int = Field(5, ge=1)
    threads: list[Annotated[int, Field(ge=1)]] | None = None
    n_gpu_layers: list[Annotated[int, Field(ge=-1)]] = [0]
    batch_size: list[Annotated[int, Field(ge=1)]] = [2048]
    ubatch_size: list[Annotated[int, Field(ge=1)]] = [512]
    n_ctx: int | None = Field(None, ge=64)
    flash_attn: bool | Literal["auto"] = False
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
        if not check_pattern("user", v):
            raise ValueError(f"must be a user name: {USER_RULE}")
        return v

    @field_validator("gpu_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not check_pattern("user", g):
                raise ValueError(f"{printable(repr(g))} is not a group name: {USER_RULE}")
        return v

    @field_validator("health_textfile")
    @classmethod
    def _textfile(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or not v.endswith(".prom")):
            raise ValueError("must be an absolute path ending in .prom")
        return v


class DiscoverSettings(Strict):
    """Where `llmctl models discover` looks besides Ollama's store and the Hugging Face cache."""

    paths: list[str] = []  # directories searched (recursively) for plain .gguf files: no digest known

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith(("/", "~")):
                raise ValueError(f"{p!r} must be an absolute path (or start with ~)")
            if any(not c.isprintable() for c in p):
                raise ValueError(f"{p!r} contains control characters")
        return v


# -- monitoring (llmctl monitoring render) ------------------------------------------------------------

# A Prometheus duration (model.ParseDuration): units largest first, each at most once; or 0.
PROM_DURATION_RE = re.compile(
    r"0|(?=[0-9])(?:[0-9]+y)?(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?"
    r"(?:[0-9]+s)?(?:[0-9]+ms)?"
)
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
HOST_RE = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?")


def _duration(v: str) -> str:
    if not PROM_DURATION_RE.fullmatch(v) or v == "0":
        raise ValueError(f"{v!r} is not a Prometheus duration such as 30s, 5m or 1h30m")
    return v


class MonitoringSettings(Strict):
    """What `llmctl monitoring render` writes: Prometheus scrape config, rules, Grafana dashboard."""

    job: str = "llmctl"  # Prometheus job of the servers' /metrics
    health_job: str = "llmctl-health"  # job of node_exporter's textfile collector (systemd.health_textfile)
    target_host: str | None = None  # where Prometheus dials the servers; null: each service's host
    node_exporter: str = "127.0.0.1:9100"  # node_exporter's host:port (the health textfile)
    credentials_file: str = "/etc/prometheus/llmctl-{service}.key"  # one API key, when /metrics needs one
    scrape_interval: str | None = None  # null: Prometheus's global scrape_interval
    evaluation_interval: str | None = None  # the rule groups' interval; null: Prometheus's global
    rate_window: str = "5m"  # window of the recorded rates and quantiles (at least 4 scrape intervals)
    alert_for: str = "5m"  # how long a condition holds before its alert fires
    health_stale_after: str = "10m"  # no health run for this long (several health.interval) fires
    ttft_p95_s: PositiveFloat = 5.0  # time to first token, p95 over rate_window, above this fires
    min_generation_tps: PositiveFloat = 5.0  # mean decode speed per request below this fires
    max_cloud_fallback_percent: Annotated[float, Field(gt=0, le=100)] = 10.0  # of generation requests
    alert_labels: dict[str, str] = {}  # added to every alert, e.g. {team: ml-ops}
    dashboard_title: str = "llmctl"
    dashboard_uid: str = "llmctl"

    @field_validator("scrape_interval", "evaluation_interval", "rate_window", "alert_for", "health_stale_after")
    @classmethod
    def _durations(cls, v: str | None) -> str | None:
        return v if v is None else _duration(v)

    @field_validator("job", "health_job", "dashboard_title")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("job", "health_job")
    @classmethod
    def _no_grafana_variable(cls, v: str) -> str:
        # The dashboard's queries name the job, and Grafana expands $name, ${name} and [[name]] in
        # queries, with no way to escape them.
        if "$" in v or "[[" in v:
            raise ValueError("must not contain '$' or '[[' (Grafana reads them as dashboard variables)")
        return v

    @field_validator("target_host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not HOST_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a host name or address")
        return v

    @field_validator("node_exporter")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not HOST_RE.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not host:port, such as 127.0.0.1:9100")
        return v

    @field_validator("credentials_file")
    @classmethod
    def _credentials(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "\0\n\r"):
            raise ValueError("must be an absolute path ({service} is replaced by the service's name)")
        return v

    @field_validator("alert_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not LABEL_NAME_RE.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"{key!r} is not a Prometheus label name")
            if key in ("alertname", "severity", "service", "job", "instance"):
                raise ValueError(f"{key!r} is set by the rules themselves")
        return v

    @field_validator("dashboard_uid")
    @classmethod
    def _uid(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", v):
            raise ValueError("must be 1-40 letters, digits, '-' or '_' (a Grafana uid)")
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

    def strategy_for(self, service: str | None) -> str:
        """The strategy of one service: routing.services.<service>, else routing.strategy."""
        return self.services.get(service, self.strategy) if service else self.strategy


# -- Kubernetes (`llmctl k8s render`) ----------------------------------------------------------------
# The name rules of Kubernetes (k8s.io/apimachinery validation), checked with re.fullmatch: `$` would
# also match before a trailing newline.
K8S_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # RFC 1123 label (namespaces, most names)
K8S_DNS1035_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035 label (Service names)
K8S_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
K8S_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
K8S_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
K8S_QUANTITY_RE = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
# An image reference, as the distribution/reference grammar has it: [host[:port]/]path[:tag][@digest].
IMAGE_RE = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


_NAME_RULES = {
    "label": (K8S_LABEL_RE, 63, "lower-case letters, digits and '-', starting and ending with a letter or digit"),
    "dns1035": (K8S_DNS1035_RE, 63, "lower-case letters, digits and '-', starting with a letter"),
    "subdomain": (K8S_SUBDOMAIN_RE, 253, "lower-case letters, digits, '-' and '.'"),
}


def k8s_name_problem(value: str, kind: str = "label") -> str | None:
    """Why `value` cannot be a Kubernetes name of this kind (label, dns1035, subdomain), or None."""
    rule, max_len, what = _NAME_RULES[kind]
    if not rule.fullmatch(value):
        return f"{value!r} is not a Kubernetes name: {what}"
    if len(value) > max_len:
        return f"{value!r} is not a Kubernetes name: at most {max_len} characters"
    return None


def label_key_problem(key: str) -> str | None:
    """Why `key` cannot be a label key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not K8S_SUBDOMAIN_RE.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain"
    if len(name) > 63 or not K8S_QUALIFIED_NAME_RE.fullmatch(name):
        return f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not K8S_LABEL_VALUE_RE.fullmatch(value):
        return f"label value {value!r}: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return None


def _labels(v: dict[str, str] | None) -> dict[str, str] | None:
    for key, value in (v or {}).items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise ValueError(problem)
    return v


def _k8s_name(v: str | None, kind: str = "label") -> str | None:
    problem = k8s_name_problem(v, kind) if v is not None else None
    if problem:
        raise ValueError(problem)
    return v


class K8sIngressSource(Strict):
    """Who may connect to a server: pods picked by namespace and/or labels (a NetworkPolicy peer)."""

    namespace: str | None = None  # a namespace by name (its kubernetes.io/metadata.name label)
    namespace_labels: dict[str, str] = {}  # namespaces by label
    pod_labels: dict[str, str] | None = None  # pods by label ({}: any); without a namespace: this namespace

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        return _k8s_name(v)

    @field_validator("namespace_labels", "pod_labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _labels(v)

    @model_validator(mode="after")
    def _something(self) -> K8sIngressSource:
        if self.namespace is None and not self.namespace_labels and self.pod_labels is None:
            raise ValueError("give namespace, namespace_labels or pod_labels ({} for any pod in the namespace)")
        return self


class K8sStorage(Strict):
    """The model volume of each server pod."""

    type: Literal["pvc", "emptyDir"] = "pvc"  # a PersistentVolumeClaim per service, or scratch space per pod
    storage_class: str | None = None  # the PVC's storageClassName; null: the cluster's default
    size: str | None = None  # a quantity (20Gi); null: twice the model plus 1Gi

    @field_validator("storage_class")
    @classmethod
    def _class(cls, v: str | None) -> str | None:
        return _k8s_name(v, "subdomain")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not K8S_QUANTITY_RE.fullmatch(v):
            raise ValueError("must be a Kubernetes quantity such as 20Gi or 500Mi")
        return v


class K8sSettings(Strict):
    """How `llmctl k8s render` turns the services into Kubernetes manifests."""

    namespace: str = "llmctl"  # every object goes here; the Namespace enforces Pod Security "restricted"
    image: str | None = None  # the llmctl image (see Containerfile); best pinned by digest; --image overrides
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    uid: int = Field(10001, ge=1, le=2_147_483_647)  # runAsUser of every container (non-zero)
    gid: int = Field(10001, ge=1, le=2_147_483_647)  # runAsGroup and fsGroup (owns the model volume)
    replicas: int = Field(1, ge=1)  # per service; more than 1 needs storage.type: emptyDir
    cpu: int = Field(2, ge=1)  # CPU request and limit of a server whose n_threads is null (then --threads)
    startup_timeout_s: int = Field(600, ge=10)  # how long the startup probe waits for the model to load
    storage: K8sStorage = K8sStorage()
    ingress_from: list[K8sIngressSource] = [K8sIngressSource(pod_labels={})]  # default: pods of the namespace
    upstream_cidrs: dict[str, list[str]] = {}  # upstream -> CIDRs its host resolves to (egress policy)
    service_monitor: bool = False  # a ServiceMonitor (Prometheus operator) per service
    gpu_resource: str = "nvidia.com/gpu"  # the extended resource a GPU service asks for (amd.com/gpu)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str | None:
        return _k8s_name(v)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 512 or not IMAGE_RE.fullmatch(v)):
            raise ValueError("must be an image reference such as registry.example.com/llmctl@sha256:<64 hex>")
        return v

    @field_validator("upstream_cidrs")
    @classmethod
    def _cidrs(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, cidrs in v.items():
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=True)
                except ValueError as exc:
                    raise ValueError(f"{name}: {cidr!r} is not a CIDR ({exc})") from None
        return v

    @field_validator("gpu_resource")
    @classmethod
    def _gpu(cls, v: str) -> str:
        prefix, _, name = v.partition("/")
        if not name or label_key_problem(v) or k8s_name_problem(prefix, "subdomain"):
            raise ValueError("must be an extended resource name such as nvidia.com/gpu")
        return v

    @model_validator(mode="after")
    def _replicas(self) -> K8sSettings:
        if self.replicas > 1 and self.storage.type == "pvc":
            raise ValueError(
                "replicas above 1 need storage.type: emptyDir (pods on two nodes cannot share one ReadWriteOnce volume)"
            )
        return self


class Config(Strict):
    version: Literal[1] = 1
    models: dict[str, ModelSpec] = {}
    services: dict[str, ServiceSpec] = {}
    health: HealthPolicy = HealthPolicy()
    bench: BenchDefaults = BenchDefaults()
    systemd: SystemdSettings = SystemdSettings()
    upstreams: dict[str, UpstreamSpec] = {}
    routing: RoutingPolicy = RoutingPolicy()
    monitoring: MonitoringSettings = MonitoringSettings()
    discover: DiscoverSettings = DiscoverSettings()
    airgap: bool = False  # no request ever leaves the host (LLMCTL_AIRGAP=1)
    k8s: K8sSettings = K8sSettings()

    def upstreams_for(self, service: str | None) -> list[str]:
        """The upstreams a service may fall back to, in order (airgap aside: the caller applies it)."""
        strategy = self.routing.strategy_for(service)
        if strategy == "none":
            return []
        if strategy == "cascade":
            return list(self.routing.cascade) if self.routing.cascade is not None else list(self.upstreams)
        return [strategy]

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
    for name in cfg.k8s.upstream_cidrs:
        if name not in cfg.upstreams:
            raise ValueError(f"k8s.upstream_cidrs: {name!r} is not an upstream (upstreams: {known})")


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
            entries: dict[str, type[BaseModel]] = {
                "models": ModelSpec,
                "services": ServiceSpec,
                "upstreams": UpstreamSpec,
            }
            model = entries[part]
            i += 2  # skip the entry's name
            continue
        if get_origin(ann) is list and get_args(ann) and isinstance(get_args(ann)[0], type):
            ann = get_args(ann)[0]
            i += 1  # skip the item's index
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        i += 1
    return list(model.model_fields) if model is not None and i == len(loc) else []
