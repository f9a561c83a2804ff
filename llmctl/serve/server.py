"""Run the server: uvicorn on the app, the engine loading beside it, sd_notify, graceful shutdown.

Start-up: the socket listens at once (/health answers 503 while the model loads); READY=1 is sent
when the model is loaded AND the socket listens. WATCHDOG=1 is sent every watchdog_interval_s()
while the engine's worker thread is alive and not stuck. SIGTERM (or SIGINT): STOPPING=1, stop
accepting, let in-flight requests finish for shutdown_timeout_s, then cut them, stop the engine,
return 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass

from llmctl import sdnotify
from llmctl.errors import OperationFailed
from llmctl.serve.settings import ServeSettings

STUCK_AFTER_S = 120.0  # a worker without a token or an idle tick for this long is stuck


class JsonFormatter(logging.Formatter):
    """uvicorn's and llmctl's log lines as JSON on stderr, like the access log."""

    def format(self, record: logging.LogRecord) -> str:
        from llmctl.serve.app import utc_iso

        doc = {"ts": utc_iso(), "event": "log", "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def log_config(level: str = "info") -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "llmctl.serve": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    worker_stopped: bool


def run(settings: ServeSettings, *, log_level: str = "info", warnings: tuple[str, ...] = (),
        on_ready: Callable[[ServeSettings], None] | None = None, router: object = None) -> RunResult:
    """Serve until SIGTERM/SIGINT. Raises OperationFailed when the model fails to load or the port
    cannot be bound. `router`: see create_app (upstream fallback and the usage ledger)."""
    import uvicorn

    from llmctl.serve.app import create_app
    from llmctl.serve.engine import Engine

    log = logging.getLogger("llmctl.serve")
    engine = Engine(settings)
    app, ctx = create_app(settings, engine, router=router)
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
    )
    failure: list[str] = []

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # uvicorn re-raises the signal after a graceful shutdown (exit 143): we want exit 0.
            def handle(sig: int, frame) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                    return
                if not self.should_exit:
                    log.info(f"received {signal.Signals(sig).name}: shutting down "
                             f"(in-flight requests get {settings.shutdown_timeout_s:g}s)")
                    notify("STOPPING=1")
                ctx.shutting_down = True
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    # sd_notify from daemon threads: llmctl.sdnotify sends on a blocking socket, and a full
    # notify queue (systemd busy, or a reader that is slow) must never stall the event loop
    # nor, at exit, the interpreter.
    last_ping: list[threading.Thread] = []

    def notify(*fields: str) -> None:
        if fields == ("WATCHDOG=1",) and last_ping and last_ping[0].is_alive():
            return  # the previous ping is still blocked: do not pile up more
        t = threading.Thread(target=sdnotify.notify, args=fields, name="llmctl-sdnotify", daemon=True)
        t.start()
        if fields == ("WATCHDOG=1",):
            last_ping[:] = [t]

    server = Server(config)  # uvicorn.Config applied log_config: our loggers write JSON now
    for line in warnings:
        log.warning(line)

    async def supervise() -> None:
        """Load once listening (a busy port costs no model load); READY=1 once loaded;
        WATCHDOG=1 while the worker is healthy."""
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        engine.start()
        while not engine.loaded.is_set():
            if server.should_exit:
                return
            if engine.loaded.is_set() and engine.state == "failed":
                break
            await asyncio.sleep(0.05)
        if engine.state == "failed":
            err = engine.error
            failure.append(f"could not load {settings.model_path}: {type(err).__name__}: {err}")
            log.error(failure[-1])
            ctx.shutting_down = True
            server.should_exit = True
            return
        ctx.metrics.load_seconds.set(engine.load_seconds or 0.0)
        if engine.gpu_offload is not None:
            ctx.metrics.set_gpu_offload(engine.gpu_offload)
        log.info(f"ready: model '{settings.model_name}' on http://{settings.host}:{settings.port} "
                 f"(loaded in {engine.load_seconds:.2f}s)")
        notify("READY=1", f"STATUS=serving {settings.model_name} on {settings.host}:{settings.port}")
        if on_ready is not None:
            on_ready(settings)
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        stuck_after = max(STUCK_AFTER_S, 4 * interval)
        while not server.should_exit:
            if engine.alive(stuck_after):
                notify("WATCHDOG=1")
            else:
                log.error("the engine's worker is not making progress; not petting the watchdog")
            await asyncio.sleep(interval)

    async def main() -> None:
        task = asyncio.ensure_future(supervise())
        try:
            await server.serve()
        finally:
            task.cancel()
            closer = getattr(router, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    try:
        asyncio.run(main())
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        if exc.code not in (0, None):
            raise OperationFailed(f"could not listen on {settings.host}:{settings.port}",
                                  hint="is another server using the port? see the log line above") from None
    stopped = engine.stop(5.0)  # the running job was cancelled with its request: this is quick
    if not stopped:
        log.warning("the model worker did not stop in time; exiting anyway")
    if failure:
        raise OperationFailed(failure[0])
    log.info("stopped")
    sys.stderr.flush()
    return RunResult(0, stopped)
