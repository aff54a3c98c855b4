"""Shapes of OpenAI chat completion responses, built from worker messages.

Kept apart from the routing so the per-token path (``chunk_line``) stays visible and cheap.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from opta_lmx.errors import ApiError
from opta_lmx.proto import Finished

_json = msgspec.json.Encoder()

DONE_LINE = b"data: [DONE]\n\n"


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
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

    def _line(self, choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> bytes:
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
        return b"data: " + _json.encode(chunk) + b"\n\n"

    def role_line(self) -> bytes:
        return self._line([_choice({"role": "assistant", "content": ""}, None)])

    def chunk_line(self, text: str) -> bytes:
        return self._line([_choice({"content": text}, None)])

    def finish_lines(self, finished: Finished) -> bytes:
        lines = self._line([_choice({}, finish_reason(finished))])
        if self.include_usage:
            lines += self._line([], usage(finished))
        return lines + DONE_LINE


def _choice(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}


def error_line(error: ApiError) -> bytes:
    """A terminal error event inside an already started stream (the SDKs raise on it)."""
    return b"data: " + _json.encode(error.body()) + b"\n\n"


def chat_completion(model: str, text: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(finished),
            }
        ],
        "usage": usage(finished),
    }
