"""Shapes of OpenAI chat completion responses, built from worker messages.

Kept apart from the routing so the per-token path (``chunk_line``) stays visible and cheap: a
stream's content chunk is encoded once, around a placeholder, and each token's line is that
template's two halves around the JSON-encoded text.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from opta_lmx.errors import ApiError
from opta_lmx.proto import Finished, TokenChunk, TokenLogprobs

_json = msgspec.json.Encoder()

DONE_LINE = b"data: [DONE]\n\n"

# Marks where the text goes in a content chunk's template; NULs never occur in a model name.
_PLACEHOLDER = "\x00opta-lmx-text\x00"
# JSON allows these raw in a string, but line-splitting clients (``str.splitlines``, which httpx's
# ``aiter_lines`` follows) break an SSE line at them: send them escaped. UTF-8 never has these
# byte sequences inside another character, so replacing the bytes is exact.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def _json_line_safe(value: Any) -> bytes:
    """``value`` as JSON with no character that a line-splitting client reads as a line break."""
    data = _json.encode(value)
    if b"\xc2\x85" in data or b"\xe2\x80" in data:
        for raw, escaped in _LINE_BREAKS:
            data = data.replace(raw, escaped)
    return data


def _event(value: Any) -> bytes:
    return b"data: " + _json_line_safe(value) + b"\n\n"


def usage(finished: Finished) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens`` are prompt tokens the engine's prompt cache supplied."""
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.cached_tokens},
    }


def finish_reason(finished: Finished) -> str:
    # "cancelled" never reaches a client: a cancelled request has no client left.
    return "length" if finished.finish_reason == "length" else "stop"


class ChatStream:
    """Builds the SSE lines of one streamed chat completion."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        template = self._line([_choice({"content": _PLACEHOLDER}, None)])
        self._head, placeholder, self._tail = template.partition(_json_line_safe(_PLACEHOLDER))
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
        return _event(chunk)

    def role_line(self) -> bytes:
        return self._line([_choice({"role": "assistant", "content": ""}, None)])

    def chunk_line(self, text: str) -> bytes:
        """The same bytes as ``_line([_choice({"content": text}, None)])``, built per token."""
        return self._head + _json_line_safe(text) + self._tail

    def delta_line(self, chunk: TokenChunk) -> bytes:
        """A chunk that carries reasoning or logprobs: the general path, built from a dict."""
        delta: dict[str, Any] = {}
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.text or not chunk.reasoning:
            delta["content"] = chunk.text
        return self._line([_choice(delta, None, logprobs_json(chunk.logprobs))])

    def finish_lines(self, finished: Finished) -> bytes:
        lines = self._line([_choice({}, finish_reason(finished))])
        if self.include_usage:
            lines += self._line([], usage(finished))
        return lines + DONE_LINE


def _choice(delta: dict[str, Any], reason: str | None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


def logprobs_json(entries: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` object of a choice (or of one chunk's tokens)."""
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top],
            }
            for e in entries
        ]
    }


def error_line(error: ApiError) -> bytes:
    """A terminal error event inside an already started stream (the SDKs raise on it)."""
    return _event(error.body())


def chat_completion(
    model: str, text: str, finished: Finished, reasoning: str = "", logprobs: list[TokenLogprobs] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs_json(logprobs),
                "finish_reason": finish_reason(finished),
            }
        ],
        "usage": usage(finished),
    }
