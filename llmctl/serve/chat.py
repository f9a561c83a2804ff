"""Chat messages -> prompt text and stop strings, with llama-cpp-python's chat formats.

The same formatter llama-cpp-python's create_chat_completion would use for the configured
`chat_format` (`gemma`, `chatml`, `llama-3`, ...: every format registered with a plain formatter),
or, without one, what `Llama` picks: the GGUF's own chat template when llama-cpp-python does not
recognise it as one of its formats, else `llama-2`. Formats that are whole handlers (function
calling, vision) are refused at start-up: this server serves text only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ChatFormatError(ValueError):
    pass


@dataclass(frozen=True)
class FormattedChat:
    prompt: str
    stops: tuple[str, ...]
    add_bos: bool  # False when the template wrote the BOS itself


class ChatTemplate:
    """One resolved chat format: `format(messages)` -> FormattedChat."""

    def __init__(self, name: str, formatter: Any) -> None:
        self.name = name
        self._formatter = formatter

    def format(self, messages: list[dict[str, Any]]) -> FormattedChat:
        if self.name == "gemma":
            messages = fold_system_into_first_user(messages)
        result = self._formatter(messages=messages)
        stop = result.stop
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return FormattedChat(result.prompt, tuple(s for s in stops if s), not result.added_special)


def fold_system_into_first_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma has no system turn. llama-cpp-python's `gemma` format drops system messages without a
    word; Gemma's own chat template (and llama-server) puts the system text at the head of the first
    user turn, followed by a blank line. Do that."""
    system = [m for m in messages if m.get("role") == "system"]
    if not system:
        return messages
    text = "\n\n".join(_text_of(m.get("content")) for m in system)
    rest = [m for m in messages if m.get("role") != "system"]
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                merged: Any = [{"type": "text", "text": text + "\n\n"}, *content]
            else:
                merged = text + "\n\n" + (content or "")
            return [*rest[:i], {**m, "content": merged}, *rest[i + 1 :]]
    return [{"role": "user", "content": text}, *rest]


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _formatter_of(handler: Any) -> Any:
    """The plain formatter inside a handler made by llama-cpp-python's register_chat_format."""
    code = getattr(handler, "__code__", None)
    if code is None or handler.__closure__ is None or "chat_formatter" not in code.co_freevars:
        return None
    return handler.__closure__[code.co_freevars.index("chat_formatter")].cell_contents


def resolve(
    chat_format: str | None, metadata: dict[str, str], bos_text: str, eos_text: str, eos_id: int
) -> ChatTemplate:
    from llama_cpp import llama_chat_format as F

    templates = {
        name[len("tokenizer.") :]: t for name, t in metadata.items() if name.startswith("tokenizer.chat_template.")
    }
    if "tokenizer.chat_template" in metadata:
        templates["chat_template.default"] = metadata["tokenizer.chat_template"]
    if chat_format is None:
        if "chat_template.default" in templates:
            chat_format = F.guess_chat_format_from_gguf_metadata(metadata) or "chat_template.default"
        else:
            chat_format = "llama-2"
    if chat_format in templates:
        jinja = F.Jinja2ChatFormatter(
            template=templates[chat_format], eos_token=eos_text, bos_token=bos_text, stop_token_ids=[eos_id]
        )
        return ChatTemplate(chat_format, jinja)
    try:
        handler = F.get_chat_completion_handler(chat_format)
    except Exception:  # noqa: BLE001 - LlamaChatCompletionHandlerNotFoundException, a bare Exception
        raise ChatFormatError(f"unknown chat_format {chat_format!r}") from None
    formatter = _formatter_of(handler)
    if formatter is None:
        raise ChatFormatError(
            f"chat_format {chat_format!r} is a special handler (tools or images), not a text "
            "chat format; llmctl serve takes text formats such as gemma, chatml, llama-3"
        )
    return ChatTemplate(chat_format, formatter)
