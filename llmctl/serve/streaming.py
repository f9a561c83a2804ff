"""Streaming: a job's chunks as Server-Sent Events, and the watch that stops a job when its client leaves.

Both the streaming and the non-streaming routes run a job under a DisconnectWatch (a client that
leaves cancels its job at the next token); EventStream is the ASGI response of a stream, which
owns the job, the watch and the stream's slot (released when it ends) once the route hands it over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from llmctl.serve.context import ServerContext
from llmctl.serve.engine import EngineError, Job
from llmctl.serve.gate import release_stream
from llmctl.serve.responses import SSE_DONE, SSE_HEADERS, error_event, sse, usage_chunk


class ClientGone(Exception):
    pass


class DisconnectWatch:
    """Watches `receive` for http.disconnect; cancels the job when the client leaves."""

    def __init__(self, receive: Callable, job: Job) -> None:
        self.gone = asyncio.Event()
        self._job = job
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._job.cancel()
                self.gone.set()
                return

    async def until(self, awaitable: Awaitable) -> Any:
        """Await `awaitable` unless the client leaves first (then raise ClientGone)."""
        task = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            gone.cancel()
            raise
        gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone()

    def close(self) -> None:
        self._task.cancel()


class EventStream:
    """An SSE response relaying a job's chunks; stops the job when the client leaves or on cancel."""

    def __init__(
        self,
        ctx: ServerContext,
        job: Job,
        first: dict,
        chunks,
        watch: DisconnectWatch,
        include_usage: bool,
        finish: Callable[[], None],
        info: dict,
    ) -> None:
        self.ctx, self.job, self.first, self.chunks, self.watch = ctx, job, first, chunks, watch
        self.include_usage, self.finish, self.info = include_usage, finish, info

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        ctx = self.ctx
        last: dict | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": SSE_HEADERS,
                }
            )
            await send({"type": "http.response.body", "body": sse(self.first), "more_body": True})
            last = self.first
            try:
                async for chunk in self.chunks:
                    if self.watch.gone.is_set():
                        break
                    last = chunk
                    await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
            except EngineError as exc:
                self.info["error"] = exc.code
                await send(
                    {
                        "type": "http.response.body",
                        "more_body": True,
                        "body": error_event(exc.message, exc.type, exc.code),
                    }
                )
            if self.watch.gone.is_set():
                return
            if self.include_usage and last is not None and "usage" in last:
                await send({"type": "http.response.body", "more_body": True, "body": sse(usage_chunk(last))})
            await send({"type": "http.response.body", "body": SSE_DONE, "more_body": False})
        except OSError:  # the client went away mid-write
            self.job.cancel()
        except asyncio.CancelledError:
            if not ctx.shutting_down:
                raise
            # The shutdown timeout is over: end the stream cleanly with an error event, then stop.
            self.job.cancel()
            self.info["error"] = "cut_at_shutdown"
            with contextlib.suppress(Exception):
                await send(
                    {
                        "type": "http.response.body",
                        "more_body": False,
                        "body": error_event(
                            "The server is shutting down; this stream was cut.", "server_error", "shutting_down"
                        ),
                    }
                )
        finally:
            if not self.job.done:
                self.job.cancel()
            self.watch.close()
            release_stream(ctx)
            if last is not None and last.get("choices"):
                self.info["finish"] = last["choices"][0].get("finish_reason")
            self.finish()
