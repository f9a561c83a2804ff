"""The batching engine: every active request shares each llama_decode (continuous batching).

The model has `parallel` slots, one llama.cpp sequence each. One worker thread runs the step loop,
the way llama-server's slot loop does:

1. admit: every waiting request takes a free slot at once: the idle slot whose cached tokens
   share the longest prefix with its prompt (ties: the least recently used), so a shared system
   prompt or a growing chat history is not decoded again; the rest of its KV is dropped.
2. build one batch: each generating slot's next token, then chunks of the prompts still to
   process, up to n_batch tokens in all; logits only where a token will be sampled.
3. llama_decode, then sample per slot with its own sampler chain (llmctl.serve.sampling), turn
   tokens into text (llmctl.serve.text) and post chunks to each request's Job.

A request whose client left is dropped at the next step, its slot and KV cells freed. A finished
one leaves its tokens cached in its slot for the next request that shares a prefix. When every
slot is busy a request waits in the queue (queue_length, queue_timeout_s: 503 + Retry-After);
each slot holds a full `n_ctx`, so an admitted request always fits (the prompt-length check is
per slot, exact, on the formatted prompt).

Embeddings take a simple path: a second, high-level llama_cpp.Llama with embeddings on (the
weights are mmapped once), run by the same worker between steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmctl.serve.promptcache import MIN_SAVE, PromptCache, common_prefix
from llmctl.serve.engine import (
    _END,
    BadRequest,
    EngineError,
    GenerationRequest,
    Job,
    NotReady,
    PromptTooLong,
    QueueFull,
    ShuttingDown,
    Unavailable,
    gpu_offload_active,
    load_llama,
)
from llmctl.serve.settings import ServeSettings

log = logging.getLogger("llmctl.serve.engine")


def load_backend(settings: ServeSettings) -> Any:
    from llmctl.serve.backend import Backend

    return Backend(settings)


@dataclass
class StepStats:
    """What one decode step did (for metrics)."""

    tokens: int  # entries in the batch
    sequences: int  # distinct sequences in it


@dataclass
class Slot:
    id: int
    cache: list[int] = field(default_factory=list)  # tokens in this sequence's KV, positions 0..n-1
    job: Job | None = None
    prompt: list[int] = field(default_factory=list)
    sampler: Any = None
    text: Any = None  # TextStream
    shaper: Any = None  # Shaper
    max_tokens: int = 0
    generated: int = 0
    pending: int | None = None  # sampled, not yet decoded
    logit_index: int = -1  # its entry with logits in the current batch
    last_used: float = 0.0
    stream: bool = False
    logprobs: int | None = None  # top_logprobs wanted per token; None: no logprobs
    lp_pending: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent
    lp_all: list[dict[str, Any]] = field(default_factory=list)
    donor: tuple[Slot, Job | None, int] | None = None  # (slot, its job, n): copy n tokens of KV from it
    echo: str = ""

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def prefilling(self) -> bool:
        return self.job is not None and len(self.cache) < len(self.prompt)


MIN_SHARED = 32  # tokens another slot must add to a slot's own cached prefix to be worth copying


@dataclass(frozen=True)
class _Callback:
    """An outbox entry that calls fn(job) on the job's loop, after the job's items before it."""

    fn: Callable[[Job], None]


def _deliver(items: list[tuple[Job, Any]]) -> None:
    """On the event loop: hand a step's items to their jobs."""
    for job, item in items:
        if isinstance(item, _Callback):
            try:
                item.fn(job)
            except Exception:  # an observer must not keep the other jobs' items back
                log.exception("on_done failed")
        else:
            job._chunks.put_nowait(item)


class Engine:
    """`parallel` slots over one llama.cpp context; implements the Scheduler protocol."""

    supports_logprobs = True  # params["logprobs"] = k: computed in the step loop (backend.logprobs)

    def __init__(
        self,
        settings: ServeSettings,
        *,
        loader: Callable[[ServeSettings], Any] = load_backend,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        # on_done(job) runs on the job's event loop when the worker is finished with it
        # (completed, failed, cancelled or skipped): its stats are final then.
        self.on_done: Callable[[Job], None] | None = None
        # on_step(StepStats) and on_cached(n) run on the worker thread (metrics; must be quick).
        self.on_step: Callable[[StepStats], None] | None = None
        self.on_cached: Callable[[int], None] | None = None
        self.settings = settings
        self.model_id = settings.model_name
        self.n_ctx = settings.n_ctx
        self.parallel = max(1, settings.parallel)
        self.n_vocab = 0
        self.state = "loading"  # loading | ready | failed | stopped
        self.error: BaseException | None = None
        self.load_seconds: float | None = None
        self.gpu_offload: bool | None = None
        self.heartbeat = time.monotonic()
        self.last_token_at: float | None = None
        self.decode_calls = 0
        self.kv_bytes: int | None = None  # after loading: the KV cache's size (f16, every position kept)
        self._loader = loader
        self._on_state = on_state
        self._backend: Any = None
        self._embedder: Any = None
        self._chat: Any = None
        self._slots = [Slot(i) for i in range(self.parallel)]
        self._prompt_cache = PromptCache(settings.prompt_cache_mib * 2**20)
        self._queue: deque[Job] = deque()
        self._outbox: list[tuple[Job, Any]] = []  # (job, chunk | error | _END | _Callback), in order
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
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
        """Busy slots."""
        return self._running

    @property
    def kv_usage(self) -> float:
        """The share of the KV cells holding tokens (busy and cached slots alike)."""
        total = self.n_ctx * self.parallel
        return sum(len(s.cache) for s in self._slots) / total if total else 0.0

    def alive(self, stuck_after_s: float) -> bool:
        """The worker thread runs and has shown progress (a step, or an idle tick) recently."""
        if not self._thread.is_alive():
            return False
        return time.monotonic() - self.heartbeat < stuck_after_s

    def count_tokens(self, text: str) -> int:
        backend = self._backend
        if backend is None:
            raise NotReady("the model is still loading")
        return len(backend.tokenize(text, add_bos=True, special=True))

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Refuse new jobs, drop queued ones, let the running ones end; True when the worker ended."""
        with self._lock:
            self._stopping = True
            dropped = list(self._queue)
            self._queue.clear()
            self._wake.notify_all()
        for job in dropped:
            job.cancel()  # gives its place back (on_cancel)
            job._post(ShuttingDown("the server is shutting down"))
        if self._thread.ident is None:  # never started (the server stopped before loading)
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # noqa: BLE001 - an observer must never kill the worker
                pass

    # -- submitting (event loop) ------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> Job:
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        if self.state != "ready":
            raise NotReady("the model is still loading" if self.state == "loading" else "the model failed to load")
        limits = self.settings.limits
        job = Job(request, asyncio.get_running_loop())
        job.on_cancel = self._abandon
        with self._lock:
            free = self.parallel - self._running
            if self._waiting >= limits.queue_length + free:
                raise QueueFull(
                    f"the queue is full ({limits.queue_length} waiting); try again later",
                    retry_after=max(1.0, min(limits.queue_timeout_s, 5.0)),
                )
            self._waiting += 1
            self._queue.append(job)
            self._wake.notify()
        return job

    def _abandon(self, job: Job) -> None:
        """A waiting job was cancelled (client gone, queue timeout): free its place now."""
        with self._lock:
            if not job.dequeued:
                job.dequeued = True
                self._waiting -= 1
            self._wake.notify()

    # -- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            self._backend = self._loader(self.settings)
            self._chat = self._chat_template(self._backend)
            if self.settings.embeddings:
                self._embedder = load_llama(self.settings)
        except BaseException as exc:  # noqa: BLE001 - reported through state, never raised here
            self.error = exc
            self._close_models()
            self._set_state("failed")
            self.loaded.set()
            return
        self.load_seconds = time.monotonic() - t0
        self.gpu_offload = gpu_offload_active(self.settings)
        self.n_vocab = self._backend.n_vocab
        self.kv_bytes = self._kv_bytes(self._backend)
        self.heartbeat = time.monotonic()
        self._set_state("ready")
        self.loaded.set()
        try:
            while True:
                jobs = self._take()
                if jobs is None:
                    break
                try:
                    for job, counted in jobs:
                        self._admit(job, counted)
                    self._drop_cancelled()
                    self._flush()  # refusals and cancellations go out before a long step
                    if any(s.busy for s in self._slots):
                        self._step()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker: fail what runs
                    log.exception("the engine's step failed; failing the requests in progress")
                    for slot in self._slots:
                        if slot.job is not None:
                            self._fail(slot, EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
                self._flush()
                self.heartbeat = time.monotonic()
        finally:
            for slot in self._slots:
                if slot.job is not None:
                    self._fail(slot, ShuttingDown("the server is shutting down"))
            self._flush()
            self._set_state("stopped")
            self._close_models()

    def _close_models(self) -> None:
        for model in (self._embedder, self._backend):
            if model is not None:
                try:
                    model.close()
                except Exception:  # noqa: BLE001 - closing at shutdown: nothing left to report to
                    pass
        self._embedder = self._backend = None

    def _kv_bytes(self, backend: Any) -> int | None:
        from llmctl.serve.backend import kv_bytes_per_token

        per_token = kv_bytes_per_token(backend.metadata)
        return None if per_token is None else per_token * self.n_ctx * self.parallel

    def _chat_template(self, backend: Any) -> Any:
        from llmctl.serve import chat

        try:
            return chat.resolve(
                self.settings.chat_format,
                backend.metadata,
                backend.token_text(backend.bos),
                backend.token_text(backend.eos),
                backend.eos,
            )
        except chat.ChatFormatError as exc:
            raise ValueError(str(exc)) from None

    def _take(self) -> list[tuple[Job, bool]] | None:
        """The waiting jobs that can start now (as many as there are free slots, in order), each
        with whether it took a running place (False: abandoned while it waited); waits while there
        is nothing to do. None: stop."""
        with self._lock:
            while True:
                busy = sum(s.busy for s in self._slots)
                if self._stopping and busy == 0:
                    return None
                free = self.parallel - busy
                # Jobs cancelled while they waited have given their place back: finish them now.
                jobs: list[tuple[Job, bool]] = [(job, False) for job in self._queue if job.dequeued]
                if jobs:
                    self._queue = deque(job for job in self._queue if not job.dequeued)
                while self._queue and free > 0:
                    job = self._queue.popleft()
                    job.dequeued = True
                    self._waiting -= 1
                    self._running += 1
                    free -= 1
                    jobs.append((job, True))
                if jobs or busy:
                    return jobs
                if not self._wake.wait(1.0):
                    self.heartbeat = time.monotonic()

    # -- admission --------------------------------------------------------------------------------

    def _admit(self, job: Job, counted: bool) -> None:
        stats = job.stats
        if job.cancelled:
            stats.cancelled = True
            self._end(job, _END, counted=counted)
            return
        stats.started = time.monotonic()
        job._mark_started()
        req = job.request
        try:
            if req.endpoint == "embedding":
                self._embed(job)
                return
            slot, prompt, reused = self._prepare(job)
        except EngineError as exc:
            self._end(job, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one request failed; the worker lives on
            self._end(job, EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
            return
        if reused and self.on_cached is not None:
            self.on_cached(reused)

    def _embed(self, job: Job) -> None:
        stats = job.stats
        if self._embedder is None:
            raise BadRequest("this server does not serve embeddings")
        try:
            result = self._embedder.create_embedding(**job.request.params)
        except ValueError as exc:
            cls = PromptTooLong if "context window" in str(exc) else BadRequest
            raise cls(str(exc)) from None
        stats.prompt_tokens = int(result.get("usage", {}).get("prompt_tokens", 0))
        stats.first_token = time.monotonic()
        self._end(job, result, _END)

    def _prompt_of(self, job: Job) -> tuple[list[int], tuple[str, ...], str]:
        """The request's prompt tokens, its stop strings and its text for `echo`."""
        backend = self._backend
        params = job.request.params
        stops = tuple(params.get("stop") or ())
        if job.request.endpoint == "chat":
            formatted = self._chat.format(params["messages"])
            tokens = backend.tokenize(formatted.prompt, add_bos=formatted.add_bos, special=True)
            return tokens, stops + formatted.stops, ""
        prompt = params["prompt"]
        if isinstance(prompt, str):
            return backend.tokenize(prompt, add_bos=True, special=True), stops, prompt
        return list(prompt), stops, ""

    def _prepare(self, job: Job) -> tuple[Slot, list[int], int]:
        from llmctl.serve.sampling import SamplingSpec
        from llmctl.serve.text import Shaper, TextStream

        req = job.request
        params = req.params
        stats = job.stats
        tokens, stops, prompt_text = self._prompt_of(job)
        stats.prompt_tokens = len(tokens)
        limit = req.max_prompt_tokens
        if limit is not None and len(tokens) > limit:
            raise PromptTooLong(
                f"the prompt has {len(tokens)} tokens; this server accepts at most {limit} "
                f"(context {self.n_ctx} minus max_tokens)"
            )
        if not tokens:
            raise BadRequest("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        spec = SamplingSpec.of(params, req.endpoint)
        sampler = self._backend.sampler(spec)  # BadRequest for a grammar llama.cpp refuses
        slot = self._pick_slot(tokens)
        reuse = self._from_host_cache(slot, tokens, common_prefix(slot.cache, tokens))
        if reuse >= len(tokens):
            reuse = len(tokens) - 1  # one token to decode, for the logits of the first sample
        if reuse > 0 and (self._backend.seq_pos_min(slot.id) > 0 or not self._backend.seq_rm(slot.id, reuse, -1)):
            reuse = 0  # the memory cannot keep a part of this sequence: start over
        if reuse == 0:
            self._backend.seq_rm(slot.id, 0, -1)
        del slot.cache[reuse:]
        slot.job = job
        slot.prompt = tokens
        slot.sampler = sampler
        slot.text = TextStream(stops)
        slot.shaper = Shaper(req.endpoint, str(params.get("model", self.model_id)))
        max_tokens = int(params.get("max_tokens") or self.n_ctx)
        slot.max_tokens = max(1, min(max_tokens, self.n_ctx - len(tokens)))
        slot.generated = 0
        slot.pending = None
        slot.logit_index = -1
        slot.stream = req.stream
        lp = params.get("logprobs")
        slot.logprobs = None if lp is None or lp is False else int(lp)
        slot.lp_pending, slot.lp_all = [], []
        slot.echo = prompt_text if params.get("echo") else ""
        slot.last_used = time.monotonic()
        slot.donor = None
        self._find_donor(slot, reuse)
        return slot, tokens, reuse

    def _from_host_cache(self, slot: Slot, tokens: list[int], reuse: int) -> int:
        """The host prompt cache (llmctl/serve/promptcache.py): save the slot's cached prompt before
        it is lost, and load a saved one that shares a longer prefix with `tokens` than the slot
        does. Returns the tokens of `tokens` the slot now holds."""
        cache, backend = self._prompt_cache, self._backend
        if cache.budget <= 0 or not hasattr(backend, "state_save"):
            return reuse
        found = cache.best(tokens)
        load = found is not None and found[2] >= reuse + MIN_SHARED
        if (
            (load or len(slot.cache) - reuse >= MIN_SAVE)
            and cache.wants(slot.cache)
            and backend.seq_pos_min(slot.id) <= 0
        ):  # a window-only SWA cache is no use to save
            cache.put(slot.cache, backend.state_save(slot.id))
        if found is None or not load:
            return reuse
        key, state, n = found
        if not backend.state_load(slot.id, state):
            slot.cache = []
            return 0
        slot.cache = list(key)
        return n

    def _find_donor(self, slot: Slot, reuse: int) -> None:
        """Another slot that holds, or is decoding, a longer prefix of this prompt (requests that
        arrive together with the same system prompt): copy its KV rather than decode the same
        tokens again. The copy waits until the donor has decoded that prefix."""
        if not hasattr(self._backend, "seq_cp"):
            return
        best, best_n = None, reuse + MIN_SHARED - 1
        limit = len(slot.prompt) - 1  # one token to decode, for the logits of the first sample
        for other in self._slots:
            if other is slot or other.donor is not None:
                continue
            n = min(common_prefix(other.prompt if other.prefilling else other.cache, slot.prompt), limit)
            if n > best_n:
                best, best_n = other, n
        if best is not None:
            slot.donor = (best, best.job, best_n)
            self._take_from_donor(slot)

    def _take_from_donor(self, slot: Slot) -> None:
        """Copy the donor's KV when it holds the prefix; give up when it never will."""
        assert slot.donor is not None
        donor, job, n = slot.donor
        if len(donor.cache) >= n and donor.cache[:n] == slot.prompt[:n]:
            before = len(slot.cache)
            self._backend.seq_cp(donor.id, slot.id)  # the whole sequence (across KV streams, a buffer copy)
            self._backend.seq_rm(slot.id, n, -1)
            slot.donor = None
            if self._backend.seq_pos_min(slot.id) > 0:  # a window-only SWA cache lost the start: no use
                self._backend.seq_rm(slot.id, 0, -1)
                slot.cache = []
                return
            slot.cache = donor.cache[:n]
            if self.on_cached is not None and n > before:
                self.on_cached(n - before)
        elif donor.job is not job or not donor.prefilling:  # finished or cancelled short of it
            slot.donor = None

    def _pick_slot(self, tokens: list[int]) -> Slot:
        free = [s for s in self._slots if not s.busy]
        return max(free, key=lambda s: (common_prefix(s.cache, tokens), -s.last_used))

    # -- the step ---------------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            job = slot.job
            if job is not None and job.cancelled:
                job.stats.cancelled = True
                self._release(slot, keep_cache=False)
                self._end(job, _END)

    def _step(self) -> None:
        for slot in self._slots:
            if slot.donor is not None:
                self._take_from_donor(slot)
        backend = self._backend
        n_batch = backend.n_batch
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        logits: list[bool] = []
        chunks: list[tuple[Slot, int]] = []
        for slot in self._slots:
            slot.logit_index = -1
            if slot.busy and not slot.prefilling and slot.pending is not None:
                slot.logit_index = len(tokens)
                tokens.append(slot.pending)
                positions.append(len(slot.cache))
                seqs.append(slot.id)
                logits.append(True)
        # Prompts, oldest request first, in chunks up to n_batch.
        prefilling = [s for s in self._slots if s.prefilling and s.donor is None]
        for slot in sorted(prefilling, key=lambda s: s.job.stats.started or 0.0):  # type: ignore[union-attr]
            room = n_batch - len(tokens)
            if room <= 0:
                break
            start = len(slot.cache)
            part = slot.prompt[start : start + room]
            for k, token in enumerate(part):
                tokens.append(token)
                positions.append(start + k)
                seqs.append(slot.id)
                logits.append(False)
            if start + len(part) == len(slot.prompt):
                logits[-1] = True
                slot.logit_index = len(tokens) - 1
            chunks.append((slot, len(part)))
        if not tokens:
            return
        try:
            backend.decode(tokens, positions, seqs, logits)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or a backend that broke: fail its requests
            self._decode_failed(exc, set(seqs))
            return
        self.decode_calls += 1
        if self.on_step is not None:
            self.on_step(StepStats(len(tokens), len(set(seqs))))
        for slot, n in chunks:
            start = len(slot.cache)
            slot.cache.extend(slot.prompt[start : start + n])
        for slot in self._slots:
            if slot.job is not None and slot.pending is not None and slot.logit_index >= 0:
                slot.cache.append(slot.pending)
                slot.pending = None
        now = time.monotonic()
        for slot in self._slots:
            if slot.job is not None and slot.logit_index >= 0:
                try:
                    self._sampled(slot, slot.sampler.sample(slot.logit_index), now)
                except EngineError as exc:
                    self._fail(slot, exc)
                except Exception as exc:  # noqa: BLE001 - one request failed; the others go on
                    self._fail(slot, EngineError(f"generation failed: {type(exc).__name__}: {exc}"))

    def _decode_failed(self, exc: Exception, seqs: set[int]) -> None:
        """llama_decode failed: the requests in the batch get an error, their KV is dropped."""
        from llmctl.serve.backend import DecodeError

        err: EngineError
        if isinstance(exc, DecodeError) and exc.code == 1:
            err = Unavailable("the model's KV cache is full; try again later")
        else:
            err = EngineError(f"generation failed: {type(exc).__name__}: {exc}")
        for slot in self._slots:
            if slot.job is not None and slot.id in seqs:
                self._fail(slot, err)

    def _sampled(self, slot: Slot, token: int, now: float) -> None:
        job = slot.job
        assert job is not None
        stats = job.stats
        self.heartbeat = self.last_token_at = now
        first = stats.first_token is None
        if first:
            stats.first_token = now
            if slot.stream and slot.shaper.chat:
                self._send(job, slot.shaper.role())
        backend = self._backend
        if backend.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        stats.completion_tokens += 1
        if slot.logprobs is not None:  # before the next decode: the logits are still there
            entry = backend.logprobs(slot.logit_index, token, slot.logprobs)
            slot.lp_pending.append(entry)
            slot.lp_all.append(entry)
        piece = slot.text.add(backend.piece(token))
        if piece and slot.stream:
            self._send(job, slot.shaper.delta(piece, self._take_logprobs(slot)))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= slot.max_tokens or len(slot.cache) + 1 >= self.n_ctx:
            self._finish(slot, "length")
        else:
            slot.pending = token

    @staticmethod
    def _take_logprobs(slot: Slot) -> list[dict[str, Any]] | None:
        """The logprobs of the tokens whose text goes out with this chunk (held-back text's later)."""
        if slot.logprobs is None:
            return None
        out, slot.lp_pending = slot.lp_pending, []
        return out

    def _usage(self, job: Job) -> dict[str, int]:
        st = job.stats
        return {
            "prompt_tokens": st.prompt_tokens,
            "completion_tokens": st.completion_tokens,
            "total_tokens": st.prompt_tokens + st.completion_tokens,
        }

    def _finish(self, slot: Slot, reason: str) -> None:
        job = slot.job
        assert job is not None
        rest = slot.text.finish()
        usage = self._usage(job)
        if slot.stream:
            if rest:
                self._send(job, slot.shaper.delta(rest, self._take_logprobs(slot)))
            last = slot.shaper.final(reason, usage, self._take_logprobs(slot) or None)
        else:
            logprobs = slot.lp_all if slot.logprobs is not None else None
            last = slot.shaper.result(slot.echo + slot.text.text, reason, usage, logprobs)
        job.stats.cancelled = job.cancelled
        self._release(slot, keep_cache=True)
        self._end(job, last, _END)

    def _fail(self, slot: Slot, exc: EngineError) -> None:
        job = slot.job
        assert job is not None
        self._release(slot, keep_cache=False)
        job.stats.cancelled = job.cancelled
        self._end(job, exc)

    def _release(self, slot: Slot, keep_cache: bool) -> None:
        """The slot is free again. Its KV stays for prefix reuse after a normal end; after a
        cancel or an error its cells are freed at once."""
        if slot.sampler is not None:
            slot.sampler.close()
        if not keep_cache:
            self._backend.seq_rm(slot.id, 0, -1)
            slot.cache.clear()
        slot.job = None
        slot.donor = None
        slot.sampler = slot.text = slot.shaper = None
        slot.pending = None
        slot.logit_index = -1
        slot.prompt = []
        slot.last_used = time.monotonic()

    def _end(self, job: Job, *items: Any, counted: bool = True) -> None:
        """The worker is done with the job: its running place is given back before its last items
        go out (a client that sends its next request at once finds it free), then on_done."""
        job.stats.finished = time.monotonic()
        if counted:
            with self._lock:
                self._running -= 1
                self._wake.notify()
        for item in items:
            self._send(job, item)
        if self.on_done is not None:
            self._send(job, _Callback(self.on_done))

    def _send(self, job: Job, item: Any) -> None:
        """Queue an item for the job's event loop; `_flush` hands a step's items over at once."""
        self._outbox.append((job, item))

    def _flush(self) -> None:
        """One wake-up per event loop per step for every chunk of that step, in order."""
        if not self._outbox:
            return
        by_loop: dict[Any, list[tuple[Job, Any]]] = {}
        for job, item in self._outbox:
            by_loop.setdefault(job._loop, []).append((job, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in items:
                    job._cancel.set()
