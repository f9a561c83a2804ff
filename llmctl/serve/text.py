"""Generated tokens -> text, and text -> OpenAI's response shapes.

`TextStream` turns token pieces (bytes) into text as they come: a UTF-8 character split across
tokens waits for its last byte; text that could be the start of a stop string is held back until
it is known not to be one; a stop string ends the text before it. The chunk and result shapes are
the ones llama-cpp-python's create_completion / create_chat_completion return (streamed or not),
with `usage` on the last chunk.
"""

from __future__ import annotations

import codecs
import time
import uuid
from typing import Any


class TextStream:
    def __init__(self, stops: tuple[str, ...] | list[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def add(self, piece: bytes) -> str:
        """Add one token's bytes; returns the text that may be sent now ("" while held back)."""
        if self.stopped:
            return ""
        before = len(self.text)
        self.text += self._decoder.decode(piece)
        return self._release(before, final=False)

    def finish(self) -> str:
        """The end of the generation: what is left to send."""
        if self.stopped:
            return ""
        before = len(self.text)
        self.text += self._decoder.decode(b"", final=True)
        return self._release(before, final=True)

    def _release(self, before: int, final: bool) -> str:
        if self.stops:
            start = max(0, before - self._longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                final = True
        end = len(self.text)
        if not final and self.stops:
            end -= self._held_back()
        if end <= self.sent:
            return ""
        out = self.text[self.sent : end]
        self.sent = end
        return out

    def _held_back(self) -> int:
        """How many trailing characters could begin a stop string."""
        text = self.text
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best


class Shaper:
    """OpenAI-shaped chunks and results for one request (ids and `created` fixed at the start)."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.chat = endpoint == "chat"
        self.model = model
        self.created = int(time.time())
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + str(uuid.uuid4())

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def role(self) -> dict[str, Any]:
        return self._chunk({"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None})

    @staticmethod
    def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        """Per-token logprobs (`{"token", "logprob", "bytes", "top_logprobs"}` each), as OpenAI's
        chat `logprobs.content`."""
        return None if entries is None else {"content": entries}

    def delta(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        lp = self._logprobs(logprobs)
        if self.chat:
            return self._chunk({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": None})
        return self._chunk({"text": text, "index": 0, "logprobs": lp, "finish_reason": None})

    def final(
        self, finish_reason: str, usage: dict[str, int], logprobs: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        lp = self._logprobs(logprobs)
        if self.chat:
            chunk = self._chunk({"index": 0, "delta": {}, "logprobs": lp, "finish_reason": finish_reason})
        else:
            chunk = self._chunk({"text": "", "index": 0, "logprobs": lp, "finish_reason": finish_reason})
        chunk["usage"] = usage
        return chunk

    def result(
        self, text: str, finish_reason: str, usage: dict[str, int], logprobs: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        lp = self._logprobs(logprobs)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": lp,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"text": text, "index": 0, "logprobs": lp, "finish_reason": finish_reason}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }
