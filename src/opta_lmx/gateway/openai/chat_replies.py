"""Shapes of OpenAI chat completion responses, built from worker messages.

Kept apart from the routing so the per-token path (``chunk_line``) stays visible and cheap: a
stream's content chunk is encoded once, around a placeholder, and each token's line is that
template's two halves around the JSON-encoded text.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from opta_lmx.errors import ApiError
from opta_lmx.gateway.generation import Collected, StreamFormat
from opta_lmx.gateway.logprobs import logprob_entries
from opta_lmx.gateway.sse import data_event, json_line_safe
from opta_lmx.proto import Finished, TokenChunk, TokenLogprobs, ToolCall

DONE_LINE = b"data: [DONE]\n\n"

# Marks where the text goes in a content chunk's template; NULs never occur in a model name.
_PLACEHOLDER = "\x00opta-lmx-text\x00"


def usage(finished: list[Finished]) -> dict[str, Any]:
    """Of all choices: n choices of one prompt count the prompt once, as OpenAI does.
    ``cached_tokens`` are prompt tokens the engine's prompt cache supplied."""
    prompt = finished[0].prompt_tokens if finished else 0
    completion = sum(f.completion_tokens for f in finished)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": finished[0].cached_tokens if finished else 0},
    }


def finish_reason(finished: Finished) -> str:
    # "cancelled" never reaches a client: a cancelled request has no client left.
    return finished.finish_reason if finished.finish_reason in ("length", "tool_calls") else "stop"


def tool_calls_json(calls: list[ToolCall], first_index: int = 0, streamed: bool = False) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` entries; a stream's carry their index within the choice."""
    out = []
    for index, call in enumerate(calls, first_index):
        entry: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if streamed:
            entry["index"] = index
        out.append(entry)
    return out


class ChatStream:
    """Builds the SSE lines of one streamed chat completion (of one or more choices)."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._finished: list[Finished] = []
        self._calls: dict[int, int] = {}  # tool calls streamed so far, per choice
        template = self._line([_choice(0, {"content": _PLACEHOLDER}, None)])
        self._head, placeholder, self._tail = template.partition(json_line_safe(_PLACEHOLDER))
        assert placeholder, "the content chunk template lost its placeholder"

    def _line(self, choices: list[dict[str, Any]], usage_value: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage_value
        return data_event(chunk)

    def role_line(self, index: int = 0) -> bytes:
        return self._line([_choice(index, {"role": "assistant", "content": ""}, None)])

    def chunk_line(self, text: str) -> bytes:
        """The same bytes as ``_line([_choice(0, {"content": text}, None)])``, built per token."""
        return self._head + json_line_safe(text) + self._tail

    def delta_line(self, chunk: TokenChunk, index: int = 0) -> bytes:
        """Any chunk (reasoning, logprobs, tool calls, another choice's): built from a dict."""
        delta: dict[str, Any] = {}
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.text or not (chunk.reasoning or chunk.tool_calls):
            delta["content"] = chunk.text
        if chunk.tool_calls:
            first = self._calls.get(index, 0)
            self._calls[index] = first + len(chunk.tool_calls)
            delta["tool_calls"] = tool_calls_json(chunk.tool_calls, first, streamed=True)
        return self._line([_choice(index, delta, None, logprobs_json(chunk.logprobs))])

    def finish_line(self, finished: Finished, index: int = 0) -> bytes:
        self._finished.append(finished)
        return self._line([_choice(index, {}, finish_reason(finished))])

    def end_lines(self) -> bytes:
        """After every choice finished: the usage chunk if asked for, and ``[DONE]``."""
        if self.include_usage:
            return self._line([], usage(self._finished)) + DONE_LINE
        return DONE_LINE


def _choice(index: int, delta: dict[str, Any], reason: str | None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


def logprobs_json(entries: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` object of a choice (or of one chunk's tokens)."""
    return None if entries is None else {"content": logprob_entries(entries)}


def error_line(error: ApiError) -> bytes:
    """A terminal error event inside an already started stream (the SDKs raise on it)."""
    return data_event(error.body())


KEEPALIVE_LINE = b": keep-alive\n\n"  # an SSE comment: clients skip it
STREAM = StreamFormat("text/event-stream", KEEPALIVE_LINE, error_line)


def chat_completion(model: str, choices: list[Collected], with_logprobs: bool = False) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "message": _message(choice),
                "logprobs": logprobs_json(choice.logprobs) if with_logprobs else None,
                "finish_reason": finish_reason(choice.finished),
            }
            for index, choice in enumerate(choices)
        ],
        "usage": usage([c.finished for c in choices]),
    }


def _message(choice: Collected) -> dict[str, Any]:
    # With tool calls and no text, content is null, as OpenAI sends it.
    content = choice.text if choice.text or not choice.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = tool_calls_json(choice.tool_calls)
    return message
