"""Run the server: uvicorn on the app, the engine loading beside it, sd_notify, graceful shutdown.

Start-up: the socket listens at once (/health answers 503 while the model loads); READY=1 is sent
when the model is loaded AND the socket listens. WATCHDOG=1 is sent every watchdog_interval_s()
while the engine's worker thread is alive and not stuck. SIGTERM (or SIGINT): STOPPING=1; while
in-flight requests finish (at most shutdown_timeout_s) the socket still listens and answers 503
`shutting_down` (so /health says so, rather than refusing connections); then it stops accepting,
cuts what is left, stops the engine, returns 0. A second SIGINT forces the exit.

Connections (what uvicorn and h11 do not bound themselves): `GuardedH11Protocol` gives every
connection a deadline for its request line and headers (`header_timeout_s`, from the connection or
the end of the previous response) and one for its body (`body_timeout_s`, from the end of the
headers), and closes connections past `max_connections + CONNECTION_OVERFLOW` at once; uvicorn's
`limit_concurrency` answers 503 from `max_connections`. The process asks for the open-file limit
that needs (Limits.open_files, also the unit's LimitNOFILE=), and asyncio's accept errors at the
limit (one traceback per retry, thousands a second) are logged at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmctl import sdnotify
from llmctl.errors import OperationFailed
from llmctl.schema import CONNECTION_OVERFLOW, FD_HEADROOM
from llmctl.serve.engine import EngineError
from llmctl.serve.settings import ServeSettings

if TYPE_CHECKING:
    from llmctl.serve.context import Fallback

STUCK_AFTER_S = 120.0  # a worker without a token or an idle tick for this long is stuck


class OncePerSecond:
    """Lets a message through at most once per `interval` seconds; counts the ones it held back."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        import time

        self.interval = interval
        self.clock = clock or time.monotonic
        self.next_at = 0.0
        self.held = 0

    def allow(self) -> int | None:
        """None: hold this one back. Else the number held back since the last one let through."""
        now = self.clock()
        if now < self.next_at:
            self.held += 1
            return None
        self.next_at = now + self.interval
        held, self.held = self.held, 0
        return held


def accept_error_handler(log: logging.Logger, limiter: OncePerSecond | None = None) -> Callable:
    """A loop exception handler: asyncio's "socket.accept() out of system resource" (EMFILE and kin)
    once a second, as one line; everything else to asyncio's default handler."""
    limiter = limiter or OncePerSecond()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            held = limiter.allow()
            if held is not None:
                exc = context.get("exception")
                log.error(
                    f"cannot accept connections: {exc} (the open-file limit is reached; "
                    f"{held} more such errors since the last line)"
                )
            return
        loop.default_exception_handler(context)

    return handler


def ensure_open_files(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); the soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_caps(settings: ServeSettings, open_files: int) -> tuple[int, int]:
    """(connections served, connections open at most) within `open_files`. Between the two, a
    request is answered 503 by uvicorn's limit_concurrency; past the second, a connection is closed
    as soon as it is accepted, before the process runs out of files."""
    fit = max(2, open_files - min(FD_HEADROOM, open_files // 2))
    hard = min(settings.limits.max_connections + CONNECTION_OVERFLOW, fit)
    served = min(settings.limits.max_connections, max(1, fit - min(CONNECTION_OVERFLOW, fit // 5)))
    return served, hard


def guarded_protocol(
    header_timeout_s: float, body_timeout_s: float, max_open: int, on_close: Callable[[str], None], log: logging.Logger
) -> type:
    """uvicorn's h11 protocol with the deadlines and the connection cap it lacks (module docstring)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from llmctl.serve.gate import TIMEOUT_KEY

    full = OncePerSecond()

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _phase: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_open:
                held = full.allow()
                if held is not None:
                    log.warning(
                        f"{len(self.connections) - 1} connections are open, the most this server "
                        f"takes: closing new ones ({held} more since the last line)"
                    )
                on_close("connection_limit")
                self.transport.close()
                return
            self._track()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _track(self) -> None:
            """Arm the deadline of the phase the request is in: its headers, its body, or none."""
            if self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            phase = "header" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if phase != self._phase:
                self._disarm()
                if phase is not None:
                    self._phase = phase
                    timeout = header_timeout_s if phase == "header" else body_timeout_s
                    self._deadline = self.loop.call_later(timeout, self._expire, phase)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._phase = None, None

        def _expire(self, phase: str) -> None:
            self._deadline, self._phase = None, None
            if self.transport.is_closing():
                return
            if phase == "body" and self.scope is not None:
                self.scope[TIMEOUT_KEY] = "body_timeout"  # type: ignore[literal-required]
            on_close(f"{phase}_timeout")
            self.transport.close()

    return GuardedH11Protocol


class JsonFormatter(logging.Formatter):
    """uvicorn's and llmctl's log lines as JSON on stderr, like the access log."""

    def format(self, record: logging.LogRecord) -> str:
        from llmctl.serve.gate import utc_iso

        doc = {
            "ts": utc_iso(),
            "event": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


class FloodFilter(logging.Filter):
    """uvicorn logs some warnings once per request or connection ("Exceeded concurrency limit.",
    "Invalid HTTP request received."): a flood of those is one line a second, with a count."""

    MESSAGES = ("Exceeded concurrency limit.", "Invalid HTTP request received.")

    def __init__(self) -> None:
        super().__init__()
        self.limiters = {m: OncePerSecond() for m in self.MESSAGES}

    def filter(self, record: logging.LogRecord) -> bool:
        limiter = self.limiters.get(record.msg) if isinstance(record.msg, str) else None
        if limiter is None:
            return True
        held = limiter.allow()
        if held is None:
            return False
        if held:
            record.msg = f"{record.msg} ({held} more since the last such line)"
        return True


def log_config(level: str = "info") -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"flood": {"()": FloodFilter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
                "filters": ["flood"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "llmctl.serve": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def model_logger(log: logging.Logger) -> Callable[..., None]:
    """The pool's events (loading, loaded, unloading, unloaded, load failed) as log lines."""

    def on_event(event: str, model: str, level: str = "info", **fields: object) -> None:
        what = event.removeprefix("model_").replace("_", " ")
        extra = ", ".join(f"{k} {v}" for k, v in fields.items())
        log.log(
            logging.ERROR if level == "error" else logging.INFO,
            f"model '{model}' {what}" + (f" ({extra})" if extra else ""),
        )

    return on_event


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    worker_stopped: bool


def run(
    settings: ServeSettings, *, log_level: str = "info", warnings: tuple[str, ...] = (), router: Fallback | None = None
) -> RunResult:
    """Serve until SIGTERM/SIGINT. Raises OperationFailed when the model fails to load or the port
    cannot be bound. `router`: see create_app (upstream fallback and the usage ledger)."""
    import uvicorn

    from llmctl.serve.app import create_app
    from llmctl.serve.batch import Engine
    from llmctl.serve.pool import ModelPool, slots_of

    from prometheus_client import Counter

    log = logging.getLogger("llmctl.serve")
    pool = ModelPool(settings, Engine)
    pool.on_event = model_logger(log)
    app, ctx = create_app(settings, pool, router=router)
    pool.on_engine = lambda name, engine: ctx.metrics.attach_engine(engine, engines=pool.engines)
    for m in pool.entries.values():
        if pool.pool.memory_budget is not None and m.estimate > pool.pool.memory_budget:
            warnings = (
                *warnings,
                (
                    f"model '{m.name}' needs about {m.estimate >> 20} MiB (weights + KV), more "
                    f"than memory_budget ({pool.pool.memory_budget >> 20} MiB): requests for it get 503"
                ),
            )
    limits = settings.limits
    open_files = ensure_open_files(limits.open_files)
    served, max_open = connection_caps(settings, open_files)
    closed = Counter(
        "llmctl_connections_closed",
        "Connections the server closed: header_timeout, body_timeout, connection_limit",
        ["reason"],
        registry=ctx.metrics.registry,
    )
    protocol = guarded_protocol(
        limits.header_timeout_s, limits.body_timeout_s, max_open, lambda reason: closed.labels(reason=reason).inc(), log
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        access_log=False,
        log_config=log_config(log_level),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        server_header=False,
        timeout_keep_alive=5,
        http=protocol,
        limit_concurrency=served + 1,  # uvicorn counts the asking connection: 503 from the (served+1)th
        # Also how many accepts asyncio tries per wake-up: at the open-file limit each is one error.
        backlog=min(2048, max(128, max_open)),
        # X-Forwarded-For is believed only from the proxies the config names (uvicorn's default
        # trusts 127.0.0.1, so any local client could pick its own address and rate-limit bucket).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
    )
    if served < limits.max_connections:
        warnings = (
            *warnings,
            (
                f"the open-file limit ({open_files}) allows {served} connections, not "
                f"max_connections={limits.max_connections}; raise it (LimitNOFILE=, ulimit -n)"
            ),
        )
    failure: list[str] = []

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list | None = None) -> None:
            """Drain with the socket still listening: new requests get 503 shutting_down (/health
            too) while the ones in flight finish, for at most shutdown_timeout_s in all."""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + settings.shutdown_timeout_s
            while ctx.active > 0 and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(0.05)
            self.config.timeout_graceful_shutdown = max(0.1, deadline - loop.time())  # type: ignore[assignment]
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # uvicorn re-raises the signal after a graceful shutdown (exit 143): we want exit 0.
            def handle(sig: int, frame) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                    return
                if not self.should_exit:
                    log.info(
                        f"received {signal.Signals(sig).name}: shutting down "
                        f"(in-flight requests get {settings.shutdown_timeout_s:g}s)"
                    )
                    notify("STOPPING=1")
                ctx.shutting_down = True
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def notify(*fields: str) -> None:
        """sd_notify, called on the event loop (and in the signal handler): llmctl.sdnotify never
        blocks (a datagram systemd has no room for is dropped); a socket it may not write is a
        warning, never an exception in the loop."""
        try:
            sdnotify.notify(*fields)
        except OSError as exc:
            log.warning(f"sd_notify {fields[0]}: {exc}")

    server = Server(config)  # uvicorn.Config applied log_config: our loggers write JSON now
    for line in warnings:
        log.warning(line)
    if settings.api_keys_source is not None:  # where the keys came from; the keys are never logged
        log.info(f"API keys: {len(settings.api_keys)} from {settings.api_keys_source}")

    async def supervise() -> None:
        """Load once listening (a busy port costs no model load): the pinned and preload models;
        READY=1 once loaded; WATCHDOG=1 while every loaded model's worker is healthy."""
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        loading = asyncio.ensure_future(pool.preload())
        while not loading.done():
            if server.should_exit:
                loading.cancel()
                return
            await asyncio.sleep(0.05)
        try:
            notes = loading.result()
        except EngineError:
            entry = next((pool.entries[n] for n in settings.preload if pool.entries[n].error), None)
            failed = entry.model.path if entry is not None else settings.model_path
            failure.append(f"could not load {failed}: {entry.error if entry is not None else 'unknown error'}")
            log.error(failure[-1])
            ctx.preload_error = failure[-1]
            ctx.shutting_down = True
            server.should_exit = True
            return
        for line in notes:
            log.error(line)
        ctx.preloaded = True
        default = pool.entries[pool.default]
        engine = default.engine
        if engine is not None:
            ctx.metrics.load_seconds.set(default.load_seconds or 0.0)
            if getattr(engine, "gpu_offload", None) is not None:
                ctx.metrics.set_gpu_offload(engine.gpu_offload)
        where = f"http://{settings.host}:{settings.port}"
        if pool.single and default.load_seconds is not None:
            log.info(f"ready: model '{settings.model_name}' on {where} (loaded in {default.load_seconds:.2f}s)")
        else:
            loaded = ", ".join(e.name for e in pool.loaded()) or "none yet"
            log.info(f"ready: models {', '.join(pool.entries)} on {where} (loaded: {loaded})")
        if engine is not None:
            kv = getattr(engine, "kv_bytes", None)
            log.info(
                f"{slots_of(settings, engine)} slots of {settings.n_ctx} tokens: "
                + (
                    f"KV cache at most {kv / 2**20:.0f} MiB (size MemoryMax= for the model file plus this"
                    + (", for each model loaded at once)" if not pool.single else ")")
                    if kv
                    else "KV cache size unknown"
                )
            )
        names = settings.model_name if pool.single else ", ".join(pool.entries)
        notify("READY=1", f"STATUS=serving {names} on {settings.host}:{settings.port}")
        reaper = asyncio.ensure_future(pool.reap())
        try:
            interval = sdnotify.watchdog_interval_s()
            if interval is None:
                await reaper
                return
            stuck_after = max(STUCK_AFTER_S, 4 * interval)
            while not server.should_exit:
                if all(e.alive(stuck_after) for e in pool.engines() if e.state == "ready"):
                    notify("WATCHDOG=1")
                else:
                    log.error("a model's worker is not making progress; not petting the watchdog")
                await asyncio.sleep(interval)
        finally:
            reaper.cancel()

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(accept_error_handler(log))
        task = asyncio.ensure_future(supervise())
        try:
            await server.serve()
        finally:
            task.cancel()
            if router is not None:
                with contextlib.suppress(Exception):
                    await router.aclose()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    try:
        asyncio.run(main())
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        if exc.code not in (0, None):
            raise OperationFailed(
                f"could not listen on {settings.host}:{settings.port}",
                hint="is another server using the port? see the log line above",
            ) from None
    stopped = pool.close(5.0)  # the running jobs were cancelled with their requests: this is quick
    if not stopped:
        log.warning("the model worker did not stop in time; exiting anyway")
    if failure:
        raise OperationFailed(failure[0])
    log.info("stopped")
    sys.stderr.flush()
    return RunResult(0, stopped)
