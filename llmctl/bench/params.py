"""Parameter lists as llama-bench reads them: `1,2,4`, ranges `first-last`, `first-last+step`,
`first-last*mult`; and the sweep they expand to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmctl.errors import UsageError

_RANGE = re.compile(r"(-?\d+)(?:-(\d+)(?:([+*])(\d+))?)?")  # with fullmatch, never match + "$"
_ON = {"1", "on", "true", "yes", "enabled"}
_OFF = {"0", "off", "false", "no", "disabled"}


def parse_int_list(text: str | int | Sequence[int], flag: str, *, minimum: int = 0) -> list[int]:
    """`"128,512"` -> [128, 512]; `"1-4"` -> [1, 2, 3, 4]; `"128-1024*2"` -> [128, 256, 512, 1024]."""
    if isinstance(text, int):
        items: list[int] = [text]
    elif not isinstance(text, str):
        items = [int(v) for v in text]
    else:
        items = []
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise UsageError(f"{flag}: expected a comma-separated list of integers, got {text!r}")
        for part in parts:
            m = _RANGE.fullmatch(part)
            if not m:
                raise UsageError(f"{flag}: {part!r} is not an integer or a range such as 1-8 or 128-1024*2")
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            op, step = m.group(3) or "+", int(m.group(4) or 1)
            if last < first:
                raise UsageError(f"{flag}: empty range {part!r}")
            i = first
            while i <= last:
                items.append(i)
                nxt = i + step if op == "+" else i * step
                if nxt <= i:
                    raise UsageError(f"{flag}: range {part!r} does not advance")
                i = nxt
                if len(items) > 10_000:
                    raise UsageError(f"{flag}: range {part!r} is too long")
    for v in items:
        if v < minimum:
            raise UsageError(f"{flag}: {v} is below the minimum {minimum}")
    # keep order, drop repeats
    return list(dict.fromkeys(items))


def parse_bool_list(text: str | bool | Sequence[bool], flag: str) -> list[bool]:
    """`"0,1"` / `"on,off"` -> [False, True] / [True, False]."""
    if isinstance(text, bool):
        return [text]
    if not isinstance(text, str):
        return [bool(v) for v in text]
    out: list[bool] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part in _ON:
            out.append(True)
        elif part in _OFF:
            out.append(False)
        else:
            raise UsageError(f"{flag}: expected on/off (or 1/0) values, got {part!r}")
    return list(dict.fromkeys(out))


def parse_flash_attn_list(text: str | bool | Sequence[bool | str], flag: str) -> list[int]:
    """`-fa on,off,auto` -> [1, 0, -1]: llama.cpp's flash_attn_type, as llama-bench records it
    (auto: llama.cpp decides when it creates the context)."""
    if isinstance(text, bool):
        return [int(text)]
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            out.append(int(item))
            continue
        word = str(item).strip().lower()
        if word in ("auto", "-1"):
            out.append(-1)
        elif word in _ON:
            out.append(1)
        elif word in _OFF:
            out.append(0)
        else:
            raise UsageError(f"{flag}: expected on, off or auto (or 1, 0, -1), got {word!r}")
    return list(dict.fromkeys(out))


def parse_pairs(items: Sequence[str] | Sequence[Sequence[int]], flag: str) -> list[tuple[int, int]]:
    """llama-bench's `-pg PP,TG`, one pair per flag: ["512,128", "64,16"] -> [(512, 128), (64, 16)]."""
    out: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, str):
            parts = [p.strip() for p in item.split(",")]
            if len(parts) != 2 or not all(re.fullmatch(r"[0-9]+", p) for p in parts):
                raise UsageError(f"{flag}: expected PP,TG (two integers >= 0, such as 512,128), got {item!r}")
            out.append((int(parts[0]), int(parts[1])))
        else:
            values = list(item)
            if len(values) != 2 or not all(isinstance(v, int) and v >= 0 for v in values):
                raise UsageError(f"{flag}: expected [PP, TG] (two integers >= 0), got {values!r}")
            out.append((values[0], values[1]))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class EngineParams:
    """What to measure: every list is swept, as llama-bench does."""

    n_prompt: tuple[int, ...] = (512,)
    n_gen: tuple[int, ...] = (128,)
    n_pg: tuple[tuple[int, int], ...] = ()  # -pg: prompt then generation, timed together
    n_depth: tuple[int, ...] = (0,)  # -d: tokens already in the context before the test
    repetitions: int = 5
    threads: tuple[int, ...] = (1,)
    n_gpu_layers: tuple[int, ...] = (0,)
    batch_size: tuple[int, ...] = (2048,)
    ubatch_size: tuple[int, ...] = (512,)
    flash_attn: tuple[int, ...] = (0,)  # llama.cpp's flash_attn_type: -1 auto, 0 off, 1 on
    n_ctx: int | None = None  # None: n_prompt + n_gen + n_depth of each test, as llama-bench sizes it
    warmup: bool = True
    repack: bool | None = None  # llama.cpp's extra (repacked/AMX) weight buffers; None: auto
    seed: int = 1  # the random tokens; llama-bench's std::rand() is unseeded (seed 1)

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise UsageError("-r/--repetitions: must be at least 1")
        if not any(self.n_prompt) and not any(self.n_gen) and not any(p + g for p, g in self.n_pg):
            raise UsageError("nothing to measure: -p and -n are both 0 and there is no -pg")


@dataclass(frozen=True)
class TestInstance:
    """One row of the result table."""

    n_prompt: int
    n_gen: int
    n_depth: int
    n_threads: int
    n_gpu_layers: int
    n_batch: int
    n_ubatch: int
    flash_attn: int
    n_ctx: int

    @property
    def name(self) -> str:
        return name_of_test(self.n_prompt, self.n_gen, self.n_depth)


def name_of_test(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    """llama-bench's test names: pp512, tg128, pp512+tg128, and ` @ d4096` at a depth."""
    if n_prompt > 0 and n_gen == 0:
        name = f"pp{n_prompt}"
    elif n_gen > 0 and n_prompt == 0:
        name = f"tg{n_gen}"
    else:
        name = f"pp{n_prompt}+tg{n_gen}"
    return f"{name} @ d{n_depth}" if n_depth > 0 else name


def expand(p: EngineParams) -> list[TestInstance]:
    """The sweep in llama-bench's order: n_gpu_layers (the model reloads only when it changes),
    n_batch, n_ubatch, flash_attn, threads, depth; then the pp tests, the tg tests, the pg pairs."""
    out: list[TestInstance] = []
    for ngl in p.n_gpu_layers:
        for nb in p.batch_size:
            for nub in p.ubatch_size:
                for fa in p.flash_attn:
                    for nt in p.threads:
                        for nd in p.n_depth:
                            tests = (
                                [(n, 0) for n in p.n_prompt if n > 0]
                                + [(0, n) for n in p.n_gen if n > 0]
                                + [pg for pg in p.n_pg if pg != (0, 0)]
                            )
                            for n_prompt, n_gen in tests:
                                need = n_prompt + n_gen + nd
                                n_ctx = p.n_ctx if p.n_ctx is not None else need
                                if need > n_ctx:
                                    raise UsageError(
                                        f"--ctx {n_ctx} is too small for "
                                        f"{name_of_test(n_prompt, n_gen, nd)} (needs {need})"
                                    )
                                out.append(TestInstance(n_prompt, n_gen, nd, nt, ngl, nb, nub, fa, n_ctx))
    return out
