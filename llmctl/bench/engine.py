"""The engine benchmark: llama.cpp through llama-cpp-python's low-level (ctypes) API, measured the
way llama.cpp's tools/llama-bench does it, so the figures can be compared with llama-bench's:

- one context per test, n_ctx = n_prompt + n_gen + n_depth (unless --ctx), swa_full off, with its
  own CPU threadpool (poll 50) attached; the model is reloaded only when n_gpu_layers changes;
- a warm-up run (the whole prompt for pp, one token for tg) before the repetitions;
- each repetition clears the KV cache (llama_memory_clear), then times, with a monotonic ns clock:
  pp: the prompt of random tokens decoded in n_batch chunks (BOS first when the vocab adds one),
      then llama_synchronize;
  tg: one random token decoded at a time, llama_synchronize after each, no sampling;
  pp+tg (-pg): the prompt, then the generation, timed together;
- at a depth (-d N), each repetition first fills the context with N random tokens, untimed; the
  sequence's state after them is kept (llama_state_seq_get_data) and restored in the next
  repetitions and tests at the same depth, as llama-bench does;
- t/s of a repetition = tokens / seconds; reported: mean and sample stddev of the per-repetition t/s.

The random tokens are drawn before the clock starts (llama-bench draws them inside its loop, where
std::rand() costs nanoseconds; in Python it would not), so the timed loop is only ctypes calls.
"""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.bench.params import EngineParams, TestInstance, expand
from llmctl.bench.results import EngineResult
from llmctl.errors import OperationFailed, UsageError

Progress = Callable[[str], None]

# ggml_backend_dev_type: CPU = 0, GPU = 1, IGPU = 2, ACCEL = 3 (META follows). llama-bench's cpu_info
# lists the CPU and ACCEL devices, its gpu_info the GPU and IGPU devices.
_DEV_CPU, _DEV_GPU, _DEV_IGPU, _DEV_ACCEL = 0, 1, 2, 3
_SPLIT_MODES = {0: "none", 1: "layer", 2: "row", 3: "tensor"}
_LAZY_MODES = {0: "off", 1: "auto", 2: "on"}


def _import_llama() -> Any:
    try:
        import llama_cpp.llama_cpp as L  # noqa: N812
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise OperationFailed(
            f"the engine benchmark needs llama-cpp-python ({exc})",
            hint="pip install 'llmctl[serve]', or benchmark a running server with --url",
        ) from None
    return L


@dataclass(frozen=True)
class BuildInfo:
    build_commit: str  # the short commit, as llama-bench's build-info records it (ggml's, less "-dirty")
    build_number: int  # 0: unknown (llama-cpp-python does not expose it; llama.cpp's own fallback is 0)
    backends: str
    cpu_info: str
    gpu_info: str
    system_info: str
    ggml_commit: str = "unknown"  # what libggml says, "-dirty" included


def build_info() -> BuildInfo:
    """What llama-bench prints about the build, read from the loaded libraries."""
    L = _import_llama()
    L.llama_backend_init()
    system_info = (L.llama_print_system_info() or b"").decode(errors="replace")
    commit = "unknown"
    backends: list[str] = []
    cpus: list[str] = []
    gpus: list[str] = []
    try:
        from llama_cpp import _ggml

        lib = _ggml.libggml
        if hasattr(lib, "ggml_commit"):
            lib.ggml_commit.restype = ctypes.c_char_p
            lib.ggml_commit.argtypes = []
            commit = (lib.ggml_commit() or b"unknown").decode(errors="replace")
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_get.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        for i in range(lib.ggml_backend_reg_count()):
            name = (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"").decode()
            if name and name != "CPU" and not name.startswith("RPC"):
                backends.append(name)
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_description.restype = ctypes.c_char_p
        lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            kind = lib.ggml_backend_dev_type(dev)
            desc = (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
            if kind in (_DEV_CPU, _DEV_ACCEL):
                cpus.append(desc)
            elif kind in (_DEV_GPU, _DEV_IGPU):
                gpus.append(desc)
    except (ImportError, AttributeError, OSError):  # an older build without these symbols
        pass
    short = commit.removesuffix("-dirty")
    return BuildInfo(short, 0, ",".join(backends) or "CPU", ", ".join(cpus), ", ".join(gpus), system_info, commit)


def resolve_repack(repack: bool | None) -> bool:
    """llama.cpp's extra weight buffers (repacking, AMX) are on by default, as in llama-bench, except on
    CPUs with AMX: ggml's AMX matmul segfaults there (ggml-org/llama.cpp#20824, seen with the 0.3.36
    wheel), so auto means off. `--repack` forces them on."""
    from llmctl.llamacompat import default_extra_bufts

    return default_extra_bufts() if repack is None else repack


_NULL_LOG: Any = None


def _quiet_logs(L: Any, verbose: bool) -> None:
    """As llama-bench: llama.cpp's log lines only with --verbose."""
    global _NULL_LOG
    if verbose:
        try:
            from llama_cpp import _logger

            _logger.set_verbose(True)
            L.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        except ImportError:  # pragma: no cover
            pass
        return
    if _NULL_LOG is None:
        _NULL_LOG = L.llama_log_callback(lambda level, text, user_data: None)
    L.llama_log_set(_NULL_LOG, ctypes.c_void_p(0))


def _clear_kv(L: Any, ctx: Any) -> None:
    if hasattr(L, "llama_memory_clear"):
        L.llama_memory_clear(L.llama_get_memory(ctx), False)
    elif hasattr(L, "llama_kv_self_clear"):  # llama-cpp-python < 0.3.10 or so
        L.llama_kv_self_clear(ctx)
    else:
        L.llama_kv_cache_clear(ctx)


class _Model:
    """A loaded model and what the results need to know about it."""

    def __init__(self, L: Any, path: Path, n_gpu_layers: int, repack: bool) -> None:
        self.L = L
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = repack
        # what llama-bench records about how the model was loaded (llama.cpp's defaults, as there)
        self.split_mode = _SPLIT_MODES.get(int(getattr(mparams, "split_mode", 1)), "layer")
        self.load_mode = "auto"
        if hasattr(mparams, "load_mode") and hasattr(L, "llama_load_mode_name"):
            self.load_mode = (L.llama_load_mode_name(int(mparams.load_mode)) or b"auto").decode()
        self.lazy_mode = _LAZY_MODES.get(int(getattr(mparams, "lazy_mode", 1)), "auto")
        self.ptr = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.ptr:
            raise OperationFailed(f"llama.cpp could not load the model {path}")
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.ptr, buf, ctypes.sizeof(buf))
        self.desc = buf.value.decode(errors="replace")
        self.size = int(L.llama_model_size(self.ptr))
        self.n_params = int(L.llama_model_n_params(self.ptr))
        vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.bos = int(L.llama_vocab_bos(vocab)) if L.llama_vocab_get_add_bos(vocab) else None

    def free(self) -> None:
        if self.ptr:
            self.L.llama_model_free(self.ptr)
            self.ptr = None


class _ThreadpoolParams(ctypes.Structure):
    """ggml.h's struct ggml_threadpool_params (GGML_MAX_N_THREADS = 512)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class _Threadpool:
    """llama-bench attaches its own CPU threadpool (poll 50) to each context. Without one, ggml builds
    without OpenMP create and join threads on every decode, which llama-bench's figures do not pay.
    Best effort: a build without these symbols runs without (as llama-cpp-python's Llama does)."""

    def __init__(self, L: Any, ctx: Any, n_threads: int, poll: int = 50) -> None:
        self.ptr = None
        self.free_fn = None
        try:
            from llama_cpp import _ggml

            lib = _ggml.libggml
            attach = L._lib.llama_attach_threadpool
            default = lib.ggml_threadpool_params_default
            new, free = lib.ggml_threadpool_new, lib.ggml_threadpool_free
        except (ImportError, AttributeError, OSError):
            return
        default.restype, default.argtypes = _ThreadpoolParams, [ctypes.c_int]
        new.restype, new.argtypes = ctypes.c_void_p, [ctypes.POINTER(_ThreadpoolParams)]
        free.restype, free.argtypes = None, [ctypes.c_void_p]
        attach.restype, attach.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        tpp = default(n_threads)
        if tpp.n_threads != n_threads:  # the struct does not match this build: leave it alone
            return
        tpp.poll = poll
        self.ptr = new(ctypes.byref(tpp))
        if self.ptr:
            self.free_fn = free
            attach(ctx, self.ptr, None)

    def free(self) -> None:
        if self.ptr and self.free_fn is not None:
            self.free_fn(self.ptr)
            self.ptr = None


class _Context:
    def __init__(self, L: Any, model: _Model, inst: TestInstance) -> None:
        self.L = L
        cp = L.llama_context_default_params()
        cp.n_ctx = inst.n_ctx
        cp.n_batch = inst.n_batch
        cp.n_ubatch = inst.n_ubatch
        cp.n_threads = inst.n_threads
        cp.n_threads_batch = inst.n_threads
        if hasattr(cp, "flash_attn_type"):
            cp.flash_attn_type = inst.flash_attn  # -1 auto, 0 off, 1 on
        else:  # older llama.cpp: a bool
            cp.flash_attn = inst.flash_attn == 1
        for name, value in (("swa_full", False), ("embeddings", False), ("offload_kqv", True), ("op_offload", True)):
            if hasattr(cp, name):
                setattr(cp, name, value)
        self.ptr = L.llama_init_from_model(model.ptr, cp)
        if not self.ptr:
            raise OperationFailed(
                f"llama.cpp could not create a context for {inst.name} "
                f"(n_ctx={inst.n_ctx}, n_batch={inst.n_batch}, n_ubatch={inst.n_ubatch})"
            )
        L.llama_set_n_threads(self.ptr, inst.n_threads, inst.n_threads)
        self.threadpool = _Threadpool(L, self.ptr, inst.n_threads)

    def free(self) -> None:
        if self.ptr:
            self.L.llama_free(self.ptr)
            self.ptr = None
        self.threadpool.free()  # after the context that uses it, as llama-bench does


def _tokens(rng: random.Random, n: int, n_vocab: int, bos: int | None) -> Any:
    arr = (ctypes.c_int32 * max(n, 1))()
    for i in range(n):
        arr[i] = rng.randrange(n_vocab)
    if bos is not None and n:
        arr[0] = bos
    return arr


def _prompt_batches(L: Any, arr: Any, n_prompt: int, n_batch: int) -> list[Any]:
    """The prompt as llama_batch_get_one views over one token array, n_batch tokens each.
    As in llama-bench, only the first chunk starts with BOS."""
    base = ctypes.addressof(arr)
    ptr_t = ctypes.POINTER(ctypes.c_int32)
    out = []
    for start in range(0, n_prompt, n_batch):
        n = min(n_batch, n_prompt - start)
        out.append(L.llama_batch_get_one(ctypes.cast(base + 4 * start, ptr_t), n))
    return out


def _gen_batches(L: Any, arr: Any, n_gen: int) -> list[Any]:
    base = ctypes.addressof(arr)
    ptr_t = ctypes.POINTER(ctypes.c_int32)
    return [L.llama_batch_get_one(ctypes.cast(base + 4 * i, ptr_t), 1) for i in range(n_gen)]


def _run_prompt(L: Any, ctx: Any, batches: list[Any]) -> None:
    decode = L.llama_decode
    for b in batches:
        rc = decode(ctx, b)
        if rc != 0:
            raise OperationFailed(f"llama_decode failed on a prompt batch (rc={rc})")
    L.llama_synchronize(ctx)


def _run_gen(L: Any, ctx: Any, batches: list[Any]) -> None:
    decode, sync = L.llama_decode, L.llama_synchronize
    for b in batches:
        rc = decode(ctx, b)
        if rc != 0:
            raise OperationFailed(f"llama_decode failed on a generation step (rc={rc})")
        sync(ctx)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _DepthState:
    """llama-bench's ctx_state: the sequence's state after the last depth that was filled, so that the
    next repetitions (and tests) at the same depth restore it instead of decoding it again."""

    def __init__(self) -> None:
        self.depth = 0
        self.buf: Any = None

    def restore(self, L: Any, ctx: Any, depth: int) -> bool:
        if depth != self.depth or self.buf is None:
            return False
        # 0: the state does not fit this context (another n_ctx): fill it again, as llama-bench does
        return bool(L.llama_state_seq_set_data(ctx, self.buf, len(self.buf), 0))

    def save(self, L: Any, ctx: Any, depth: int) -> None:
        size = int(L.llama_state_seq_get_size(ctx, 0))
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data(ctx, buf, size, 0)
        self.depth, self.buf = depth, buf


def run_engine(
    model_path: Path,
    params: EngineParams,
    *,
    progress: Progress | None = None,
    verbose: bool = False,
    build: BuildInfo | None = None,
) -> list[EngineResult]:
    """Run every test of the sweep; return one result per test, in llama-bench's order."""
    L = _import_llama()
    _quiet_logs(L, verbose)
    instances = expand(params)
    if not instances:
        raise UsageError("nothing to measure: every -p and -n value is 0")
    if not model_path.is_file():
        raise OperationFailed(f"model file not found: {model_path}")
    build = build or build_info()
    say = progress or (lambda _msg: None)
    rng = random.Random(params.seed)
    repack = resolve_repack(params.repack)
    depth = _DepthState()
    results: list[EngineResult] = []
    model: _Model | None = None
    model_ngl: int | None = None
    try:
        for idx, inst in enumerate(instances, 1):
            tag = f"bench {idx}/{len(instances)}: {inst.name} threads={inst.n_threads}"
            if model is None or model_ngl != inst.n_gpu_layers:
                if model is not None:
                    model.free()
                    model = None
                    depth = _DepthState()  # a state of another model is no use
                say(f"{tag}: loading model (n_gpu_layers={inst.n_gpu_layers})")
                model = _Model(L, model_path, inst.n_gpu_layers, repack)
                model_ngl = inst.n_gpu_layers
            ctx = _Context(L, model, inst)
            try:
                results.append(
                    _measure(L, ctx.ptr, model, inst, params, rng, build, model_path, say, tag, repack, depth)
                )
            finally:
                ctx.free()
    finally:
        if model is not None:
            model.free()
    return results


def _measure(
    L: Any,
    ctx: Any,
    model: _Model,
    inst: TestInstance,
    params: EngineParams,
    rng: random.Random,
    build: BuildInfo,
    model_path: Path,
    say: Progress,
    tag: str,
    repack: bool,
    depth: _DepthState,
) -> EngineResult:
    test_time = _utc_now()
    _clear_kv(L, ctx)

    def draw() -> tuple[list[Any], list[Any], list[Any]]:
        keep: list[Any] = []
        pb: list[Any] = []
        gb: list[Any] = []
        if inst.n_prompt:
            arr = _tokens(rng, inst.n_prompt, model.n_vocab, model.bos)
            keep.append(arr)
            pb = _prompt_batches(L, arr, inst.n_prompt, inst.n_batch)
        if inst.n_gen:
            arr = _tokens(rng, inst.n_gen, model.n_vocab, model.bos)
            keep.append(arr)
            gb = _gen_batches(L, arr, inst.n_gen)
        return keep, pb, gb

    if params.warmup:
        keep, pb, gb = draw()
        if inst.n_prompt:
            say(f"{tag}: warm-up")
            _run_prompt(L, ctx, pb)
        if inst.n_gen:
            say(f"{tag}: warm-up")
            _run_gen(L, ctx, gb[:1])
        del keep
    samples: list[int] = []
    for rep in range(params.repetitions):
        _clear_kv(L, ctx)
        if inst.n_depth:
            if depth.restore(L, ctx, inst.n_depth):
                say(f"{tag}: depth {inst.n_depth} restored, repetition {rep + 1}/{params.repetitions}")
            else:
                say(f"{tag}: filling depth {inst.n_depth}, repetition {rep + 1}/{params.repetitions}")
                arr = _tokens(rng, inst.n_depth, model.n_vocab, model.bos)
                _run_prompt(L, ctx, _prompt_batches(L, arr, inst.n_depth, inst.n_batch))
                del arr
                depth.save(L, ctx, inst.n_depth)
        keep, pb, gb = draw()
        say(f"{tag}: repetition {rep + 1}/{params.repetitions}")
        t0 = time.perf_counter_ns()
        if pb:
            _run_prompt(L, ctx, pb)
        if gb:
            _run_gen(L, ctx, gb)
        samples.append(max(time.perf_counter_ns() - t0, 1))
        del keep
    return EngineResult(
        build_commit=build.build_commit,
        build_number=build.build_number,
        cpu_info=build.cpu_info,
        gpu_info=build.gpu_info,
        backends=build.backends,
        model_filename=str(model_path),
        model_type=model.desc,
        model_size=model.size,
        model_n_params=model.n_params,
        n_batch=inst.n_batch,
        n_ubatch=inst.n_ubatch,
        n_threads=inst.n_threads,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=inst.n_gpu_layers,
        flash_attn=inst.flash_attn,
        n_ctx=inst.n_ctx,
        n_prompt=inst.n_prompt,
        n_gen=inst.n_gen,
        n_depth=inst.n_depth,
        repack=repack,
        test_time=test_time,
        samples_ns=tuple(samples),
        split_mode=model.split_mode,
        load_mode=model.load_mode,
        lazy_mode=model.lazy_mode,
    )
