"""Several models behind one server: what is loaded, loading on demand, unloading to make room.

The pool maps each served model's name to an entry. A loaded entry holds a scheduler made by the
factory (`Engine(settings)`, or any engine behind the `Scheduler` protocol that can also `start()`,
`stop(timeout)` and set `loaded` when loading ends: `Loadable` below). The HTTP layer asks the pool,
never an engine, for a model:

    async with pool.lease(name, timeout) as engine:   # 404 unknown; may load, may unload others
        job = await engine.submit(...)                # from here the engine counts the job

The rules:
- A model loads when a request names it (or `POST /models/load`, or `preload` at start), while the
  request waits, within its queue timeout.
- Room: at most `max_loaded` models, and at most `memory_budget` bytes of estimated weights + KV
  (`estimate_bytes`: the file's size, the KV cache for the configured context and slots, and the
  compute buffers). Models loading or unloading count as loaded.
- To make room the least recently used model that is not pinned and is idle (no lease, nothing
  waiting or running in its engine) is unloaded. A model with active sequences is never unloaded:
  the request waits for it to become idle. When even unloading every unpinned model would not make
  room, the request gets 503 at once (`insufficient_memory` or `too_many_models`), before anything
  is unloaded or loaded: the OOM killer never decides.
- `keep_alive_s`: an unpinned model idle this long is unloaded (`reap`).
- Pinned models are never unloaded; they and `preload` load at start.

Everything that decides runs on the event loop (no lock: no await between a check and the state
change it leads to); the blocking parts (waiting for a load, stopping a worker) do not block it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmctl.serve.engine import EngineError, Job, QueueTimeout, Scheduler, Unavailable
from llmctl.serve.settings import ServedModel, ServeSettings

WINDOW_S = 60.0  # requests and tokens/s are over the last minute
LOAD_POLL_S = 0.02


class ModelNotFound(EngineError):
    status, type, code = 404, "invalid_request_error", "model_not_found"
    param = "model"


class NoRoom(Unavailable):
    """Even unloading every unpinned model would not make room for this one."""

    code = "insufficient_memory"


class TooManyModels(NoRoom):
    code = "too_many_models"


class LoadFailed(Unavailable):
    code = "model_load_failed"


class Conflict(EngineError):
    status, type, code = 409, "invalid_request_error", "model_busy"


class Pinned(Conflict):
    code = "model_pinned"


class Loadable(Scheduler, Protocol):
    """A Scheduler the pool can start and stop (Engine is one)."""

    loaded: Any  # threading.Event, set when loading ends (state is then ready or failed)
    error: BaseException | None
    load_seconds: float | None

    def start(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...


def slots_of(settings: ServeSettings, engine: Any = None) -> int:
    """Sequences a model's engine runs at once (each with its own n_ctx of KV): the engine's own
    count when it has one (a batching engine's `parallel`), else the settings' (`parallel`), else 1
    (the one-at-a-time Engine)."""
    for source, attr in ((engine, "parallel"), (settings, "parallel")):
        value = getattr(source, attr, None) if source is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 1


# Compute buffers llama.cpp allocates beside weights and KV: bounded below, growing with the batch and
# the model's width. Measured on the smoke model (CPU, n_ctx 512, 4 slots, the batching engine):
# 332 MiB resident after loading, 334 MiB after two completions; estimated 341 MiB (241 file +
# 36 KV + 64 buffers).
MIN_OVERHEAD_BYTES = 64 << 20


def estimate_bytes(settings: ServeSettings) -> int:
    """What loading `settings.model_path` will take: the file (weights), the KV cache (f16) for
    n_ctx tokens in each slot, and the compute buffers. An estimate, on the high side; where the
    GGUF header does not say its attention's shape, the KV is counted as a quarter of the weights."""
    from llmctl.models.gguf import read_gguf_info

    size = Path(settings.model_path).stat().st_size
    cells = settings.n_ctx * slots_of(settings)
    try:
        info = read_gguf_info(settings.model_path, file_type=False)
        per_token = info.kv_bytes_per_token()
        width = info.embedding_length or 0
    except Exception:  # noqa: BLE001 - a header we cannot read: the engine will say why at load
        per_token, width = None, 0
    kv = per_token * cells if per_token else size // 4
    n_batch = min(settings.n_batch, settings.n_ctx)
    compute = max(MIN_OVERHEAD_BYTES, 16 * n_batch * width * 4)
    return size + kv + compute


@dataclass
class ModelEntry:
    """One served model: its settings, its estimate, its engine while loaded, its recent work."""

    model: ServedModel
    settings: ServeSettings
    estimate: int
    pinned: bool
    state: str = "unloaded"  # unloaded | loading | loaded | unloading
    engine: Any = None  # a Loadable while loading, loaded or unloading
    leases: int = 0  # requests that hold or wait for this model (not yet counted by its engine)
    last_used: float = 0.0  # time.monotonic(): the last lease, or the last job done
    loaded_at: float | None = None
    load_seconds: float | None = None
    loads: int = 0
    unloads: int = 0
    error: str | None = None  # why the last load failed
    failures: int = 0  # loads that failed: a request that waited on one gets its error
    external: bool = False  # an engine the pool's caller manages (ModelPool.adopt)
    anon_bytes: int = 0  # resident memory the load added besides the mapped file (KV, buffers)
    vram_bytes: int | None = None  # GPU memory the load added (nvidia-smi)
    done: collections.deque = field(default_factory=collections.deque)  # (time, completion tokens)
    requests: int = 0

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def active(self) -> int:
        """Requests this model is busy with: leased, waiting in its engine, or running."""
        engine = self.engine
        busy = (engine.waiting + engine.running) if engine is not None else 0
        return self.leases + busy

    @property
    def occupies(self) -> bool:
        return self.state != "unloaded"


class ModelPool:
    def __init__(
        self,
        settings: ServeSettings,
        factory: Callable[[ServeSettings], Loadable],
        *,
        estimate: Callable[[ServeSettings], int] = estimate_bytes,
        clock: Callable[[], float] = time.monotonic,
        measure: bool = True,
    ) -> None:
        self.settings = settings
        self.pool = settings.pool
        self._factory = factory
        self._clock = clock
        self._measure = measure
        self.entries: dict[str, ModelEntry] = {}
        for m in settings.served:
            s = settings.for_model(m)
            self.entries[m.name] = ModelEntry(m, s, estimate(s), m.name in self.pool.pinned)
        self.default = settings.served[0].name  # requests that name no model, health's probe
        self.single = len(self.entries) == 1
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        # on_job_done(model, job): the app's metrics; runs on the loop when a job's stats are final
        self.on_job_done: Callable[[str, Job], None] | None = None
        # on_event(event, model, **fields): loads and unloads, for the log and the metrics
        self.on_event: Callable[..., None] | None = None
        # on_engine(model, engine): a new engine, before it starts (the server attaches its metrics)
        self.on_engine: Callable[[str, Any], None] | None = None

    @classmethod
    def adopt(cls, settings: ServeSettings, engine: Scheduler) -> ModelPool:
        """A pool of one engine its caller made and starts (and stops): never loaded or unloaded
        here. Its status follows the engine's state."""

        def no_factory(_: ServeSettings) -> Loadable:
            raise LoadFailed("this server's engine is managed by its caller")

        pool = cls(settings.for_model(settings.served[0]), no_factory, estimate=lambda s: 0, measure=False)
        entry = pool.entries[pool.default]
        entry.engine, entry.pinned, entry.external, entry.state = engine, True, True, "loaded"
        entry.last_used = pool._clock()
        engine.on_done = functools.partial(pool._job_done, entry)
        return pool

    # -- lookup -----------------------------------------------------------------------------------

    def entry(self, name: str | None, *, strict: bool = False) -> ModelEntry:
        """The model a request names; no name is the default model. With one model served, any
        name is that model (as llmctl serve always did) unless `strict`; with several, an unknown
        name is 404."""
        if name is None or (self.single and not strict):
            return self.entries[self.default]
        entry = self.entries.get(name)
        if entry is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise ModelNotFound(
                f"The model '{shown}' does not exist on this server (models: {', '.join(self.entries)})."
            )
        return entry

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.state == "loaded"]

    # -- leases -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str | None, timeout: float) -> AsyncIterator[Any]:
        """The model's engine, loaded, held from unloading until the block ends (submit the job
        inside: from then on the engine's own counts keep the model from being unloaded)."""
        entry = await self.acquire(name, timeout)
        try:
            yield entry.engine
        finally:
            self.release(entry)

    async def acquire(self, name: str | None, timeout: float) -> ModelEntry:
        entry = self.entry(name)
        deadline = self._clock() + timeout
        failures = entry.failures
        entry.leases += 1
        try:
            while True:
                if entry.state == "loaded":
                    entry.last_used = self._clock()
                    return entry
                if entry.failures != failures:  # the load this request waited for failed
                    raise LoadFailed(f"the model '{entry.name}' failed to load: {entry.error}")
                if entry.state == "unloaded":
                    self._check_possible(entry)
                    victims = self._victims(entry)
                    if victims is not None:
                        entry.state = "loading"  # reserves its room now, before any await
                        for v in victims:
                            v.state = "unloading"
                        try:
                            await asyncio.gather(*(self._stop(v, "room") for v in victims))
                        except BaseException:
                            entry.state = "unloaded"
                            self._notify()
                            raise
                        await self._load(entry)
                        continue
                await self._wait(deadline, entry)
        except BaseException:
            entry.leases -= 1
            self._notify()
            raise

    def try_lease(self, name: str | None = None) -> ModelEntry | None:
        """A lease on the model when it is loaded and ready now (never loads anything); else None."""
        entry = self.entry(name)
        engine = entry.engine
        if entry.state != "loaded" or engine is None or not engine.ready:
            return None
        entry.leases += 1
        return entry

    def release(self, entry: ModelEntry) -> None:
        entry.leases -= 1
        entry.last_used = self._clock()
        self._notify()

    async def _wait(self, deadline: float, entry: ModelEntry) -> None:
        remaining = deadline - self._clock()
        if remaining <= 0:
            busy = ", ".join(e.name for e in self.entries.values() if e.occupies and e is not entry) or "none"
            raise QueueTimeout(
                f"no room to load '{entry.name}' in time: the loaded models ({busy}) stayed busy; try again later"
            )
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), min(remaining, 1.0))
        except TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- room -------------------------------------------------------------------------------------

    def _fits(self, others: list[ModelEntry], entry: ModelEntry) -> bool:
        p = self.pool
        if p.max_loaded is not None and len(others) + 1 > p.max_loaded:
            return False
        if p.memory_budget is not None and sum(e.estimate for e in others) + entry.estimate > p.memory_budget:
            return False
        return True

    def _check_possible(self, entry: ModelEntry) -> None:
        """503 at once when even unloading every unpinned model would not make room."""
        p = self.pool
        kept = [e for e in self.entries.values() if e is not entry and e.occupies and e.pinned]
        if p.memory_budget is not None and sum(e.estimate for e in kept) + entry.estimate > p.memory_budget:
            pinned = f" beside the pinned models ({', '.join(e.name for e in kept)})" if kept else ""
            raise NoRoom(
                f"the model '{entry.name}' needs about {_mib(entry.estimate)} MiB (weights + KV), "
                f"which does not fit in memory_budget {_mib(p.memory_budget)} MiB{pinned}"
            )
        if p.max_loaded is not None and len(kept) + 1 > p.max_loaded:
            raise TooManyModels(
                f"cannot load '{entry.name}': max_loaded is {p.max_loaded} and the "
                f"pinned models ({', '.join(e.name for e in kept)}) take every place"
            )

    def _victims(self, entry: ModelEntry) -> list[ModelEntry] | None:
        """The models to unload (least recently used first) so that `entry` fits now; None when
        it cannot fit now (the models in the way are busy, loading or unloading)."""
        others = [e for e in self.entries.values() if e is not entry and e.occupies]
        victims: list[ModelEntry] = []
        idle = sorted(
            (e for e in others if e.state == "loaded" and not e.pinned and e.active == 0), key=lambda e: e.last_used
        )
        while not self._fits([e for e in others if e not in victims], entry):
            if not idle:
                return None
            victims.append(idle.pop(0))
        return victims

    # -- loading and unloading --------------------------------------------------------------------

    async def _load(self, entry: ModelEntry) -> None:
        """entry.state is "loading" (its room reserved); ends "loaded", or "unloaded" + LoadFailed."""
        from llmctl.serve import resources

        gpu = bool(entry.settings.n_gpu_layers)
        # Measured off the loop (smaps, nvidia-smi): the process's memory before and after the load.
        before = await asyncio.to_thread(resources.snapshot, [], gpu=gpu) if self._measure else None
        t0 = self._clock()
        self._event("model_loading", entry, estimate_bytes=entry.estimate)
        try:
            engine = self._factory(entry.settings)
            engine.on_done = functools.partial(self._job_done, entry)
            if self.on_engine is not None:
                self.on_engine(entry.name, engine)
            entry.engine = engine
            engine.start()
            while not engine.loaded.is_set():
                await asyncio.sleep(LOAD_POLL_S)
        except BaseException:
            await self._abandon_load(entry)
            raise
        if engine.state != "ready":
            err = engine.error
            entry.error = f"{type(err).__name__}: {err}" if err is not None else f"state {engine.state}"
            entry.failures += 1
            await self._abandon_load(entry)
            self._event("model_load_failed", entry, level="error", error=entry.error)
            raise LoadFailed(f"the model '{entry.name}' failed to load: {entry.error}")
        now = self._clock()
        entry.state = "loaded"
        entry.error = None
        entry.loaded_at = entry.last_used = now
        entry.load_seconds = engine.load_seconds if engine.load_seconds is not None else now - t0
        entry.loads += 1
        if before is not None:
            after = await asyncio.to_thread(resources.snapshot, [entry.model.path], gpu=gpu)
            mapped = sum(after["mapped"].values())
            if before["rss"] is not None and after["rss"] is not None:
                entry.anon_bytes = max(0, after["rss"] - before["rss"] - mapped)
            if before["vram"] is not None and after["vram"] is not None:
                entry.vram_bytes = max(0, after["vram"] - before["vram"])
        self._event("model_loaded", entry, load_seconds=round(entry.load_seconds, 3))
        self._notify()

    async def _abandon_load(self, entry: ModelEntry) -> None:
        engine, entry.engine = entry.engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(engine.stop, 5.0)
        entry.state = "unloaded"
        self._notify()

    async def _stop(self, entry: ModelEntry, reason: str) -> None:
        """entry.state is "unloading" (and it is idle); ends "unloaded"."""
        engine = entry.engine
        self._event("model_unloading", entry, reason=reason)
        try:
            if engine is not None:
                await asyncio.to_thread(engine.stop, 10.0)
        finally:
            entry.engine = None
            entry.state = "unloaded"
            entry.loaded_at = None
            entry.anon_bytes = 0
            entry.vram_bytes = None
            entry.unloads += 1
            self._event("model_unloaded", entry, reason=reason)
            self._notify()

    async def load(self, name: str, timeout: float) -> ModelEntry:
        """Load a model now (POST /models/load); a loaded one is only marked used."""
        entry = await self.acquire(self.entry(name, strict=True).name, timeout)
        self.release(entry)
        return entry

    async def unload(self, name: str) -> bool:
        """Unload a model now (POST /models/unload). False when it was not loaded; 409 when it is
        pinned or busy (it is never unloaded while it has active sequences)."""
        entry = self.entry(name, strict=True)
        if entry.state == "unloaded":
            return False
        if entry.pinned:
            raise Pinned(f"the model '{entry.name}' is pinned: it is never unloaded")
        if entry.state != "loaded" or entry.active:
            raise Conflict(
                f"the model '{entry.name}' is busy ({entry.state}, {entry.active} active); "
                "try again when its requests are done",
                retry_after=1.0,
            )
        entry.state = "unloading"
        await self._stop(entry, "request")
        return True

    async def preload(self) -> list[str]:
        """Load the pinned and preload models, in order; the failures' messages (the first
        failure of a pinned model is fatal to the caller: it raises)."""
        failed: list[str] = []
        for name in self.settings.preload:
            entry = self.entries[name]
            try:
                await self.load(name, timeout=float("inf"))
            except EngineError as exc:
                if entry.pinned or self.single:
                    raise
                failed.append(exc.message)
        return failed

    async def reap(self) -> None:
        """Unload unpinned models idle for keep_alive_s; runs until cancelled."""
        keep = self.pool.keep_alive_s
        if keep is None:
            return
        while True:
            now = self._clock()
            for e in list(self.entries.values()):
                if e.state == "loaded" and not e.pinned and e.active == 0 and now - e.last_used >= keep:
                    e.state = "unloading"
                    await self._stop(e, "keep_alive")
            await asyncio.sleep(min(1.0, keep / 4))

    def close(self, timeout: float) -> bool:
        """Stop every engine (after the event loop ended); True when every worker stopped."""
        stopped = True
        for e in self.entries.values():
            if e.engine is not None and not e.external:
                stopped = e.engine.stop(timeout) and stopped
        return stopped

    # -- activity and status ----------------------------------------------------------------------

    def _job_done(self, entry: ModelEntry, job: Job) -> None:
        now = self._clock()
        entry.last_used = now
        if job.stats.started is not None:
            entry.requests += 1
            entry.done.append((now, job.stats.completion_tokens))
        self._trim(entry, now)
        self._notify()
        if self.on_job_done is not None:
            self.on_job_done(entry.name, job)

    def _trim(self, entry: ModelEntry, now: float) -> None:
        while entry.done and now - entry.done[0][0] > WINDOW_S:
            entry.done.popleft()

    def _event(self, event: str, entry: ModelEntry, level: str = "info", **fields: Any) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(event, entry.name, level=level, **fields)

    def state_of(self, entry: ModelEntry) -> str:
        """loaded | loading | unloading | unloaded (an adopted engine: what its state says)."""
        engine = entry.engine
        if entry.external and engine is not None and engine.state != "ready":
            return "loading" if engine.state == "loading" else "unloaded"
        return entry.state

    def ready_engine(self, name: str | None = None) -> Any:
        """The model's engine when it is loaded and ready, else None (never loads anything)."""
        entry = self.entry(name)
        engine = entry.engine
        return engine if entry.state == "loaded" and engine is not None and engine.ready else None

    def engines(self) -> list[Any]:
        return [e.engine for e in self.entries.values() if e.engine is not None]

    def occupied_paths(self) -> list[Path]:
        return [e.model.path for e in self.entries.values() if e.occupies]

    def status(self, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every model's state and recent work (`GET /status`, `llmctl ps`). `snapshot`: the
        process's memory (resources.snapshot of occupied_paths(), taken off the event loop)."""
        now = self._clock()
        mapped = snapshot.get("mapped", {}) if snapshot else {}
        models = []
        for e in self.entries.values():
            self._trim(e, now)
            engine = e.engine
            tokens = sum(n for _, n in e.done)
            rss = None
            if snapshot and e.state in ("loaded", "unloading"):
                rss = mapped.get(str(Path(e.model.path).resolve()), 0) + e.anon_bytes
            models.append(
                {
                    "id": e.name,
                    "status": self.state_of(e),
                    "pinned": e.pinned,
                    "default": e.name == self.default,
                    "path": str(e.model.path),
                    "estimate_bytes": e.estimate or None,
                    "rss_bytes": rss,
                    "vram_bytes": e.vram_bytes,
                    "n_ctx": e.settings.n_ctx,
                    "slots": slots_of(e.settings, engine),
                    "busy": engine.running if engine is not None else 0,
                    "waiting": engine.waiting if engine is not None else 0,
                    "requests_1m": len(e.done),
                    "tokens_1m": tokens,
                    "tokens_per_s_1m": round(tokens / WINDOW_S, 3),
                    "idle_s": (round(now - e.last_used, 3) if e.state == "loaded" and e.active == 0 else None),
                    "loaded_s": round(now - e.loaded_at, 3) if e.loaded_at is not None else None,
                    "load_seconds": round(e.load_seconds, 3) if e.load_seconds is not None else None,
                    "loads": e.loads,
                    "unloads": e.unloads,
                    "requests": e.requests,
                    "error": e.error,
                }
            )
        doc: dict[str, Any] = {
            "models": models,
            "max_loaded": self.pool.max_loaded,
            "memory_budget": self.pool.memory_budget,
            "keep_alive_s": self.pool.keep_alive_s,
        }
        if snapshot:
            doc["process"] = {"pid": os.getpid(), "rss_bytes": snapshot.get("rss"), "vram_bytes": snapshot.get("vram")}
        return doc


def _mib(n: int) -> int:
    return round(n / (1 << 20))
