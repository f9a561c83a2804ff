"""What the HTTP layer makes of the engine's chunks: tool calls out of text, and n choices in one answer.

- `shape_result()` / `shape_chunks()`: a chat answer (whole, or streamed) whose text is a tool call in
  the model's format becomes `message.tool_calls` (streamed: `delta.tool_calls`) with
  `finish_reason: "tool_calls"` (llmctl.serve.tools does the parsing).
- `JobGroup`: `n > 1` is n jobs submitted to the Scheduler (a batching engine runs them side by
  side), seen by the HTTP layer as one job: one cancel, merged chunks with each choice's `index`,
  usage added up (the prompt counted once, as OpenAI does).

Only the Scheduler protocol's Job interface is used: `wait_started`, iteration, `cancel`, `done`, `stats`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from llmctl.serve.engine import JobStats
from llmctl.serve.tools import StreamAssembler, ToolSpec, parse_output


def completion_logprobs(entries: list[dict], text_offset: int = 0) -> dict:
    """Per-token entries (`{"token", "logprob", "bytes", "top_logprobs"}`, the chat shape) -> the legacy
    completions shape; `text_offset`: where the first token's text starts."""
    offsets: list[int] = []
    at = text_offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def legacy_logprobs(item: dict, offset: list[int]) -> dict:
    """A completions chunk or result whose choices carry logprobs in the chat shape (`{"content":
    [entries]}`, as the engine writes them) -> the legacy completions shape (`tokens`,
    `token_logprobs`, `top_logprobs`, `text_offset`); `offset` holds the running text offset of a
    stream (in place)."""
    for choice in item.get("choices") or []:
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and "content" in lp:
            choice["logprobs"] = completion_logprobs(lp["content"] or [], offset[0])
            offset[0] = (
                choice["logprobs"]["text_offset"][-1] + len(choice["logprobs"]["tokens"][-1])
                if choice["logprobs"]["tokens"]
                else offset[0]
            )
    return item


async def legacy_chunks(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    offset = [0]
    async for chunk in chunks:
        yield legacy_logprobs(chunk, offset)


def shape_result(result: dict, spec: ToolSpec | None, fmt: str) -> dict:
    """A whole chat completion: its text parsed for tool calls (in place; returned)."""
    if spec is None or not spec.offered:
        return result
    for choice in result.get("choices") or []:
        message = choice.get("message") or {}
        parsed = parse_output(message.get("content") or "", spec, fmt)
        if parsed.calls:
            message["content"] = parsed.content
            message["tool_calls"] = [c.openai() for c in parsed.calls]
            choice["finish_reason"] = "tool_calls"
        else:
            message["content"] = parsed.content
    return result


async def shape_chunks(chunks: AsyncIterator[dict], spec: ToolSpec | None, fmt: str) -> AsyncIterator[dict]:
    """Streamed chat chunks with the text of tool calls turned into `delta.tool_calls`."""
    if spec is None or not spec.offered:
        async for chunk in chunks:
            yield chunk
        return
    assembler = StreamAssembler(spec, fmt)
    held: list[dict] = []  # logprobs of text not passed on yet: they go with the next chunk out

    def logprobs() -> dict | None:
        out = {"content": list(held)} if held else None
        held.clear()
        return out

    async for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices:
            yield chunk
            continue
        choice = choices[0]
        held += (choice.get("logprobs") or {}).get("content") or []
        delta = choice.get("delta") or {}
        text = delta.get("content")
        finish = choice.get("finish_reason")
        pieces = assembler.feed(text) if text else []
        if finish is not None:
            rest, called = assembler.finish()
            pieces += rest
            if called:
                finish = "tool_calls"
        others = {k: v for k, v in delta.items() if k != "content"}  # the role, on the first chunk
        if others and not pieces:
            yield {**chunk, "choices": [{**choice, "delta": others, "finish_reason": None, "logprobs": None}]}
            others = {}
        usage = chunk.get("usage")
        plain = {k: v for k, v in chunk.items() if k != "usage"}
        for piece in pieces:
            yield {
                **plain,
                "choices": [{**choice, "delta": {**others, **piece}, "finish_reason": None, "logprobs": logprobs()}],
            }
            others = {}
        if finish is not None:
            last = {**plain, "choices": [{**choice, "delta": {}, "finish_reason": finish, "logprobs": logprobs()}]}
            if usage is not None:
                last["usage"] = usage
            yield last


@dataclass(frozen=True)
class Shaping:
    """What one choice's output goes through on its way to the client: tool calls parsed out of a
    chat answer's text (`spec`, in tool format `fmt`), and completions' logprobs in their legacy shape."""

    spec: ToolSpec | None = None
    fmt: str = "generic"
    legacy_logprobs: bool = False

    def chunks(self, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        if self.spec is not None:
            chunks = shape_chunks(chunks, self.spec, self.fmt)
        if self.legacy_logprobs:
            chunks = legacy_chunks(chunks)
        return chunks

    def whole(self, result: dict) -> dict:
        result = shape_result(result, self.spec, self.fmt)
        return legacy_logprobs(result, [0]) if self.legacy_logprobs else result


def _index(chunk: dict, i: int) -> dict:
    for choice in chunk.get("choices") or []:
        choice["index"] = i
    return chunk


def _add_usage(total: dict | None, usage: dict | None, first: bool) -> dict | None:
    if usage is None:
        return total
    if total is None:
        return dict(usage)
    out = dict(total)
    out["completion_tokens"] = out.get("completion_tokens", 0) + usage.get("completion_tokens", 0)
    out["total_tokens"] = out.get("prompt_tokens", 0) + out["completion_tokens"]
    return out


class JobGroup:
    """n jobs as one (see the module docstring). `shaping` turns each job's output into what the
    client sees for its choice; the group sets the choice index."""

    def __init__(self, jobs: list[Any], stream: bool, shaping: Shaping | None = None) -> None:
        self.jobs = jobs
        self.stream = stream
        self._shaping = shaping or Shaping()

    @property
    def done(self) -> bool:
        return all(j.done for j in self.jobs)

    def cancel(self) -> None:
        for j in self.jobs:
            j.cancel()

    @property
    def request(self) -> Any:
        return self.jobs[0].request

    @property
    def stats(self) -> JobStats:
        """The choices' stats as one request's: the prompt once, the completions added up."""
        all_ = [j.stats for j in self.jobs]
        started = [s.started for s in all_ if s.started is not None]
        first = [s.first_token for s in all_ if s.first_token is not None]
        finished = [s.finished for s in all_ if s.finished is not None]
        return JobStats(
            submitted=min(s.submitted for s in all_),
            started=min(started) if len(started) == len(all_) else None,
            first_token=min(first) if first else None,
            finished=max(finished) if len(finished) == len(all_) else None,
            prompt_tokens=all_[0].prompt_tokens,
            completion_tokens=sum(s.completion_tokens for s in all_),
            cancelled=any(s.cancelled for s in all_),
        )

    async def wait_started(self, timeout: float) -> None:
        try:
            await asyncio.gather(*(j.wait_started(timeout) for j in self.jobs))
        except BaseException:
            self.cancel()
            raise

    def __aiter__(self) -> AsyncIterator[dict]:
        return self._streamed() if self.stream else self._whole()

    async def _whole(self) -> AsyncIterator[dict]:
        async def last(job: Any) -> dict | None:
            out = None
            async for item in job:
                out = item
            return out

        results = await asyncio.gather(*(last(j) for j in self.jobs))
        if any(r is None for r in results):
            return
        merged = copy.copy(results[0])
        assert merged is not None
        merged["choices"] = []
        usage: dict | None = None
        for i, r in enumerate(results):
            assert r is not None
            r = self._shaping.whole(r)
            merged["choices"] += _index(r, i)["choices"]
            usage = _add_usage(usage, r.get("usage"), i == 0)
        if usage is not None:
            merged["usage"] = usage
        yield merged

    async def _streamed(self) -> AsyncIterator[dict]:
        queue: asyncio.Queue = asyncio.Queue()
        end = object()

        async def pump(i: int, job: Any) -> None:
            try:
                source: AsyncIterator[dict] = self._shaping.chunks(job.__aiter__())
                async for chunk in source:
                    await queue.put((i, chunk))
                await queue.put((i, end))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
                await queue.put((i, exc))

        tasks = [asyncio.ensure_future(pump(i, j)) for i, j in enumerate(self.jobs)]
        open_ = len(self.jobs)
        usage: dict | None = None
        try:
            while open_:
                i, item = await queue.get()
                if item is end:
                    open_ -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                chunk = _index(dict(item), i)
                if "usage" in chunk:
                    usage = _add_usage(usage, chunk.pop("usage"), False)
                    if open_ == 1 and usage is not None:  # the last choice's last chunk: the request's usage
                        chunk["usage"] = usage
                yield chunk
        finally:
            for t in tasks:
                t.cancel()
