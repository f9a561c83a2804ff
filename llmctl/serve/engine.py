"""The engine: one worker thread owns the model; the HTTP layer submits jobs and reads chunks.

The contract the HTTP layer sees (and the only one it may use) is the `Scheduler` protocol:

    job = await scheduler.submit(GenerationRequest(...))   # may raise QueueFull / NotReady
    await job.wait_started(timeout)                        # may raise QueueTimeout
    async for chunk in job: ...                            # OpenAI-shaped dicts; raises EngineError
    job.cancel()                                           # client gone: stop at the next token
    job.stats                                              # tokens and timings once it is done

`Engine` implements it with a one-at-a-time loop over llama-cpp-python's high-level
create_chat_completion / create_completion (which apply the chat format, stop strings and UTF-8
handling). A batched decoder (several sequences per `llama_decode`) can replace `Engine` behind
the same protocol without touching the HTTP layer: it would pick several jobs off the queue and
push each job's chunks through the same Job channel.

Thread safety: the Llama object is touched only by the worker thread, except `tokenize`, which
reads the vocabulary only (llama.cpp's own server tokenizes on its HTTP threads the same way).
Chunks cross to the event loop with loop.call_soon_threadsafe; the cancel flag is a
threading.Event checked before every token is handed out.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
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


class Cancelled(EngineError):
    """The job was cancelled while its prompt was being processed (the client is gone)."""

    status, type, code = 499, "invalid_request_error", "cancelled"


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
        except asyncio.TimeoutError:
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
    """Load the model the way the engine does (the benchmark uses this for its baseline)."""
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
    if settings.n_threads:
        kwargs["n_threads"] = settings.n_threads
        kwargs["n_threads_batch"] = settings.n_threads
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


class Engine:
    """One model, one worker thread, one job at a time; a bounded wait queue in front."""

    supports_logprobs = False  # llama-cpp-python's logprobs need logits_all (n_ctx x n_vocab floats)

    def __init__(
        self,
        settings: ServeSettings,
        *,
        loader: Callable[[ServeSettings], Any] = load_llama,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        # on_done(job) runs on the job's event loop when the worker is finished with it
        # (completed, failed, cancelled or skipped): its stats are final then.
        self.on_done: Callable[[Job], None] | None = None
        self.settings = settings
        self.model_id = settings.model_name
        self.n_ctx = settings.n_ctx
        self.n_vocab = 0
        self.state = "loading"  # loading | ready | failed | stopped
        self.error: BaseException | None = None
        self.load_seconds: float | None = None
        self.gpu_offload: bool | None = None  # after loading: None for a CPU service (n_gpu_layers 0)
        self.heartbeat = time.monotonic()
        self.last_token_at: float | None = None
        self.busy_since: float | None = None
        self._loader = loader
        self._on_state = on_state
        self._llm: Any = None
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llmctl-engine", daemon=True)
        self.loaded = threading.Event()  # set when loading ends, either way

    # -- status -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self._stopping

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def alive(self, stuck_after_s: float) -> bool:
        """The worker thread runs and has shown progress (a token, or an idle tick) recently."""
        if not self._thread.is_alive():
            return False
        return time.monotonic() - self.heartbeat < stuck_after_s

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            raise NotReady("the model is still loading")
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Refuse new jobs, drop queued ones, let the running one end; True when the worker ended."""
        self._stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()  # gives its place back (on_cancel)
                job._post(ShuttingDown("the server is shutting down"))
        self._queue.put(None)
        if self._thread.ident is None:  # never started (the server stopped before loading)
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # an observer must never kill the worker
                pass

    # -- submitting (event loop) ------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> Job:
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        if self.state != "ready":
            raise NotReady("the model is still loading" if self.state == "loading" else "the model failed to load")
        limits = self.settings.limits
        with self._lock:
            if self._waiting >= limits.queue_length + (0 if self._running else 1):
                raise QueueFull(f"the queue is full ({limits.queue_length} waiting); try again later",
                                retry_after=max(1.0, min(limits.queue_timeout_s, 5.0)))
            self._waiting += 1
        job = Job(request, asyncio.get_running_loop())
        job.on_cancel = self._abandon
        self._queue.put(job)
        return job

    def _abandon(self, job: Job) -> None:
        """A waiting job was cancelled (client gone, queue timeout): free its place now."""
        with self._lock:
            if not job.dequeued:
                job.dequeued = True
                self._waiting -= 1

    # -- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            self._llm = self._loader(self.settings)
        except BaseException as exc:  # noqa: BLE001 - reported through state, never raised here
            self.error = exc
            self._set_state("failed")
            self.loaded.set()
            return
        self.load_seconds = time.monotonic() - t0
        self.gpu_offload = gpu_offload_active(self.settings)
        self._original_generate = self._llm.generate
        self._original_eval = self._llm.eval
        self.n_vocab = self._llm.n_vocab()
        self.heartbeat = time.monotonic()
        self._set_state("ready")
        self.loaded.set()
        try:
            while True:
                try:
                    job = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self.heartbeat = time.monotonic()
                    continue
                if job is None:
                    break
                with self._lock:
                    abandoned = job.dequeued
                    if not abandoned:
                        job.dequeued = True
                        self._waiting -= 1
                        self._running += 1
                if abandoned:  # cancelled while it waited: its place is already free
                    job.stats.cancelled = True
                    job.stats.finished = time.monotonic()
                    job._post(_END)
                    if self.on_done is not None:
                        job._call(self.on_done, job)
                    continue
                self.busy_since = time.monotonic()
                try:
                    self._process(job)
                finally:
                    with self._lock:
                        self._running -= 1
                    self.busy_since = None
                    self.heartbeat = time.monotonic()
                    if self.on_done is not None:
                        job._call(self.on_done, job)
        finally:
            self._set_state("stopped")
            llm, self._llm = self._llm, None
            try:
                llm.close()
            except Exception:
                pass

    def _process(self, job: Job) -> None:
        stats = job.stats
        if job.cancelled:
            stats.cancelled = True
            stats.finished = time.monotonic()
            job._post(_END)
            return
        stats.started = time.monotonic()
        job._mark_started()
        req = job.request
        llm = self._llm
        try:
            if req.endpoint == "embedding":
                result = llm.create_embedding(**req.params)
                stats.prompt_tokens = int(result.get("usage", {}).get("prompt_tokens", 0))
                stats.first_token = stats.finished = time.monotonic()
                job._post(result)
                job._post(_END)
                return
            params = req.params
            if isinstance(params.get("grammar"), str):
                params = {**params, "grammar": llama_grammar(llm, params["grammar"])}
            llm.generate = functools.partial(self._generate, job)
            llm.eval = functools.partial(self._eval, job)
            create = llm.create_chat_completion if req.endpoint == "chat" else llm.create_completion
            if req.stream:
                chunks: Iterator[dict] = create(**params, stream=True)
                try:
                    for chunk in chunks:
                        if chunk["choices"] and chunk["choices"][0].get("finish_reason") is not None:
                            chunk["usage"] = self._usage(stats)
                        job._post(chunk)
                        if job.cancelled:
                            break
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            else:
                result = create(**params, stream=False)
                result["usage"] = self._usage(stats)
                job._post(result)
            stats.finished = time.monotonic()
            job._post(_END)
        except EngineError as exc:
            stats.finished = time.monotonic()
            job._post(exc)
        except ValueError as exc:  # llama-cpp-python: prompt longer than the context, bad params
            stats.finished = time.monotonic()
            message = str(exc)
            cls = PromptTooLong if "context window" in message else BadRequest
            job._post(cls(message))
        except Exception as exc:  # noqa: BLE001 - one request failed; the worker lives on
            stats.finished = time.monotonic()
            job._post(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            stats.cancelled = job.cancelled
            llm.generate = self._original_generate
            llm.eval = self._original_eval

    @staticmethod
    def _usage(stats: JobStats) -> dict[str, int]:
        return {
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        }

    def _eval(self, job: Job, tokens) -> None:
        """Llama.eval one n_batch at a time (as it does inside): a long prompt shows progress to
        the watchdog and stops between batches when its client has gone."""
        n_batch = max(1, self._llm.n_batch)
        for i in range(0, len(tokens), n_batch):
            if i and job.cancelled:
                raise Cancelled("cancelled while processing the prompt")
            self._original_eval(tokens[i:i + n_batch])
            self.heartbeat = time.monotonic()

    def _generate(self, job: Job, tokens, *args: Any, **kwargs: Any) -> Iterator[int]:
        """Llama.generate, seen per token: exact usage, timings, the cancel flag, the prompt bound."""
        stats = job.stats
        limit = job.request.max_prompt_tokens
        stats.prompt_tokens = len(tokens)
        if limit is not None and len(tokens) > limit:
            raise PromptTooLong(
                f"the prompt has {len(tokens)} tokens; this server accepts at most {limit} "
                f"(context {self.n_ctx} minus max_tokens)"
            )
        import llama_cpp

        vocab = self._llm._model.vocab
        is_eog = llama_cpp.llama_vocab_is_eog
        inner = self._original_generate(tokens, *args, **kwargs)
        try:
            for token in inner:
                now = time.monotonic()
                self.heartbeat = self.last_token_at = now
                if stats.first_token is None:
                    stats.first_token = now
                if job.cancelled:
                    return
                if not is_eog(vocab, token):
                    stats.completion_tokens += 1
                yield token
        finally:
            inner.close()


def llama_grammar(llm: Any, gbnf: str) -> Any:
    """GBNF text (from llmctl.serve.grammar) -> a LlamaGrammar for create_*(grammar=...).

    llama-cpp-python adds the grammar sampler without checking it: a grammar llama.cpp's parser
    rejects is a NULL sampler and a SIGSEGV at the first token. So parse it here first and refuse
    it (400) when llama.cpp does."""
    import llama_cpp.llama_cpp as C
    from llama_cpp import LlamaGrammar

    if "\x00" in gbnf:
        raise BadRequest("the grammar holds a NUL character")
    sampler = C.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise BadRequest("the grammar for this response_format was refused by llama.cpp's parser")
    C.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)
