"""The engine: one worker thread owns the model; the HTTP layer submits jobs and reads chunks.

The contract the HTTP layer sees (and the only one it may use) is the `Scheduler` protocol:

    job = await scheduler.submit(GenerationRequest(...))   # may raise QueueFull / NotReady
    await job.wait_started(timeout)                        # may raise QueueTimeout
    async for chunk in job: ...                            # OpenAI-shaped dicts; raises EngineError
    job.cancel()                                           # client gone: stop at the next token
    job.stats                                              # tokens and timings once it is done

`llmctl.serve.batch.Engine` implements it with continuous batching (every active request shares
each llama_decode); this module holds what the HTTP layer and the engine share: the request, the
Job channel, its stats, the errors with their HTTP mapping, and the model loading helpers.

Thread safety: the model is touched only by the engine's worker thread, except tokenizing, which
reads the vocabulary only (llama.cpp's own server tokenizes on its HTTP threads the same way).
Chunks cross to the event loop with loop.call_soon_threadsafe; the cancel flag is a
threading.Event the worker checks at every step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmctl.serve.settings import ServeSettings


class EngineError(Exception):
    """A request the engine refused or could not finish; carries its HTTP mapping."""

    status = 500
    type = "server_error"
    code = "internal_error"
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(EngineError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class PromptTooLong(BadRequest):
    code = "context_length_exceeded"


class Unavailable(EngineError):
    status, type, code = 503, "server_error", "unavailable"
    retry_after = 1.0


class QueueFull(Unavailable):
    code = "queue_full"


class QueueTimeout(Unavailable):
    code = "queue_timeout"


class NotReady(Unavailable):
    code = "model_loading"


class ShuttingDown(Unavailable):
    code = "shutting_down"


@dataclass(frozen=True)
class GenerationRequest:
    endpoint: str  # "chat" | "completion" | "embedding"
    params: dict[str, Any]  # keyword arguments for llama-cpp-python (no `stream`)
    stream: bool = False
    max_prompt_tokens: int | None = None  # checked exactly on the formatted prompt


@dataclass
class JobStats:
    submitted: float = 0.0  # time.monotonic()
    started: float | None = None  # the worker picked it up
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False

    @property
    def queued_s(self) -> float | None:
        return None if self.started is None else self.started - self.submitted

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def prompt_s(self) -> float | None:
        if self.started is None or self.first_token is None:
            return None
        return self.first_token - self.started

    @property
    def generation_s(self) -> float | None:
        if self.first_token is None or self.finished is None:
            return None
        return self.finished - self.first_token

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first."""
        gen = self.generation_s
        if gen is None or gen <= 0 or self.completion_tokens < 2:
            return None
        return (self.completion_tokens - 1) / gen


_END = object()


class Job:
    """One request's channel between the worker thread and the event loop."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.stats = JobStats(submitted=time.monotonic())
        self._loop = loop
        self._chunks: asyncio.Queue = asyncio.Queue()
        self._started = asyncio.Event()
        self._cancel = threading.Event()
        self.done = False
        self.dequeued = False  # taken off the wait count (started, or abandoned while waiting)
        self.on_cancel: Callable[[Job], None] | None = None

    # -- the event loop's side --------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop at the next token; a job still waiting gives its queue place back at once."""
        if self._cancel.is_set():
            return
        self._cancel.set()
        if self.on_cancel is not None:
            self.on_cancel(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def wait_started(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._started.wait(), timeout)
        except TimeoutError:
            self.cancel()
            raise QueueTimeout(f"no model slot within {timeout:g}s; try again later") from None

    def __aiter__(self) -> AsyncIterator[dict]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict]:
        while True:
            item = await self._chunks.get()
            if item is _END:
                self.done = True
                return
            if isinstance(item, BaseException):
                self.done = True
                raise item
            yield item

    # -- the worker's side ------------------------------------------------------------------------

    def _post(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._chunks.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancel.set()

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass

    def _mark_started(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._started.set)
        except RuntimeError:
            self._cancel.set()


class Scheduler(Protocol):
    """What the HTTP layer needs from an engine (see the module docstring)."""

    model_id: str
    n_ctx: int
    n_vocab: int  # 0 until the model is loaded; the HTTP layer checks token ids against it
    state: str  # loading | ready | failed | stopped
    on_done: Callable[[Job], None] | None
    last_token_at: float | None  # time.monotonic() of the last token any job produced
    supports_logprobs: bool  # takes params["logprobs"] = k: each chunk's choice carries its tokens' logprobs

    @property
    def ready(self) -> bool: ...

    def alive(self, stuck_after_s: float) -> bool: ...

    @property
    def waiting(self) -> int: ...

    @property
    def running(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    async def submit(self, request: GenerationRequest) -> Job: ...


def _model_params_hook() -> Callable[[], None]:
    """llama.cpp's AMX weight buffers crash in llama_decode on some hosts (seen: a sandboxed
    Sapphire Rapids); when the CPU has AMX, load without the extra (repacked) buffer types.
    Returns the function that undoes the hook."""
    from llmctl.llamacompat import default_extra_bufts

    if default_extra_bufts():
        return lambda: None
    import llama_cpp.llama_cpp as C

    original = C.llama_model_default_params

    def patched():
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    C.llama_model_default_params = patched

    def undo() -> None:
        C.llama_model_default_params = original

    return undo


_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp calls it from C


def route_llama_logs() -> None:
    """Send llama.cpp's warnings and errors to the `llmctl.serve.llama` logger (JSON on stderr when
    serving) and drop its info chatter. llama-cpp-python's own callback maps ggml's current log
    levels wrongly (it prints warnings raw, whatever `verbose` says)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import ctypes
    import logging

    import llama_cpp.llama_cpp as C

    log = logging.getLogger("llmctl.serve.llama")
    # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
    last = [0]

    @C.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level == 5:
            level = last[0]
        last[0] = level
        if level >= 3:
            message = text.decode("utf-8", "replace").rstrip()
            if message:
                log.log(logging.ERROR if level >= 4 else logging.WARNING, message)

    _LOG_CALLBACK = callback
    C.llama_log_set(callback, ctypes.c_void_p(0))


def load_llama(settings: ServeSettings, **overrides: Any):
    """A high-level llama_cpp.Llama of the served model (the engine's embeddings; the benchmark's
    baseline), loaded with the same work-arounds as the engine's backend."""
    from llama_cpp import Llama

    route_llama_logs()
    kwargs: dict[str, Any] = dict(
        model_path=str(settings.model_path),
        n_ctx=settings.n_ctx,
        n_batch=min(settings.n_batch, settings.n_ctx),
        n_ubatch=min(settings.n_batch, settings.n_ctx),
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        chat_format=settings.chat_format,
        embedding=settings.embeddings,
        verbose=False,
    )
    from llmctl.cpu import default_threads

    kwargs["n_threads"] = kwargs["n_threads_batch"] = settings.n_threads or default_threads()
    kwargs.update(overrides)
    undo = _model_params_hook()
    try:
        if kwargs.get("embedding") and "pooling_type" not in kwargs:
            # A generative GGUF declares no pooling: its embeddings would be one vector per token.
            # Mean-pool those, so /v1/embeddings returns one vector per input as OpenAI's does.
            import llama_cpp

            meta = Llama(model_path=kwargs["model_path"], vocab_only=True, verbose=False).metadata
            arch = meta.get("general.architecture", "")
            if f"{arch}.pooling_type" not in meta:
                kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        return Llama(**kwargs)
    finally:
        undo()


def gpu_offload_active(settings: ServeSettings) -> bool | None:
    """None when no layer is to be offloaded; else whether this llama.cpp build found a GPU device
    to offload to (a CPU-only build, or a host whose GPU driver is missing, runs on the CPU without
    saying so: that is the silent slowdown the monitoring alerts on)."""
    if settings.n_gpu_layers == 0:
        return None
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def __getattr__(name: str) -> Any:
    """`Engine` is the batching engine in llmctl.serve.batch (which imports this module)."""
    if name == "Engine":
        from llmctl.serve.batch import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
