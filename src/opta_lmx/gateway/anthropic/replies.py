"""Anthropic Messages replies built from worker messages: the whole ``message`` object, and the
event stream (``message_start``, content blocks one after another, ``message_delta``,
``message_stop``).

Blocks come in the order the model wrote them: ``thinking`` (a reasoning model's reasoning, when
the request asked for thinking), ``text``, then one ``tool_use`` block per call. A tool call's
input arrives whole from the worker (it is parsed once its block is closed), so it streams as one
``input_json_delta``.

Usage: ``input_tokens`` are the prompt tokens computed for this request and
``cache_read_input_tokens`` the ones the prompt cache supplied (Anthropic counts them apart; their
sum is the prompt). Nothing is written to a cache on request, so ``cache_creation_input_tokens``
is 0.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from opta_lmx.gateway.anthropic.errors import error_event
from opta_lmx.gateway.generation import Collected, StreamFormat
from opta_lmx.gateway.sse import named_event
from opta_lmx.proto import Finished, Started, TokenChunk, ToolCall

PING = named_event("ping", {"type": "ping"})
STREAM = StreamFormat("text/event-stream", PING, error_event)


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def stop_reason(finished: Finished) -> str:
    if finished.finish_reason == "length":
        return "max_tokens"
    if finished.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def usage(prompt_tokens: int, cached_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached_tokens,
        "output_tokens": output_tokens,
    }


def tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}


def _input(arguments: str) -> Any:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}  # parsed calls carry JSON; anything else has no object to give
    return value if isinstance(value, dict) else {}


def message(model: str, collected: Collected, thinking: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking and collected.reasoning:
        content.append({"type": "thinking", "thinking": collected.reasoning, "signature": ""})
    if collected.text or not collected.tool_calls:
        content.append({"type": "text", "text": collected.text})
    content.extend(tool_use(call) for call in collected.tool_calls)
    finished = collected.finished
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finished),
        "stop_sequence": finished.stop_sequence,
        "usage": usage(finished.prompt_tokens, finished.cached_tokens, finished.completion_tokens),
    }


class MessageStream:
    """The events of one streamed message, block by block."""

    def __init__(self, model: str, thinking: bool) -> None:
        self.id = message_id()
        self.model = model
        self.thinking = thinking
        self._open: str | None = None  # the type of the block being written
        self._index = -1

    def start(self, started: Started) -> bytes:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(started.prompt_tokens, started.cached_tokens, 0),
        }
        return named_event("message_start", {"type": "message_start", "message": message})

    def chunk(self, chunk: TokenChunk) -> bytes:
        out = []
        if chunk.reasoning and self.thinking:
            out.append(self._delta("thinking", {"type": "thinking_delta", "thinking": chunk.reasoning}))
        if chunk.text:
            out.append(self._delta("text", {"type": "text_delta", "text": chunk.text}))
        for call in chunk.tool_calls:
            out.append(self._close())
            out.append(self._block_start({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}))
            arguments = json.dumps(_input(call.arguments), ensure_ascii=False)
            out.append(self._event("content_block_delta", delta={"type": "input_json_delta", "partial_json": arguments}))
            self._open = "tool_use"
        return b"".join(out)

    def finish(self, finished: Finished) -> bytes:
        out = []
        if self._index < 0:  # nothing was written: a reply always has a content block
            out.append(self._block_start({"type": "text", "text": ""}))
            self._open = "text"
        out.append(self._close())
        delta = {"stop_reason": stop_reason(finished), "stop_sequence": finished.stop_sequence}
        cumulative = usage(finished.prompt_tokens, finished.cached_tokens, finished.completion_tokens)
        out.append(named_event("message_delta", {"type": "message_delta", "delta": delta, "usage": cumulative}))
        out.append(named_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        opening = b""
        if self._open != kind:
            opening = self._close() + self._block_start(
                {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            )
            self._open = kind
        return opening + self._event("content_block_delta", delta=delta)

    def _block_start(self, block: dict[str, Any]) -> bytes:
        self._index += 1
        return self._event("content_block_start", content_block=block)

    def _close(self) -> bytes:
        """End the open block (a thinking block ends with its signature)."""
        kind, self._open = self._open, None
        if kind is None:
            return b""
        signature = b""
        if kind == "thinking":
            signature = self._event("content_block_delta", delta={"type": "signature_delta", "signature": ""})
        return signature + self._event("content_block_stop")

    def _event(self, name: str, **fields: Any) -> bytes:
        return named_event(name, {"type": name, "index": self._index, **fields})
