"""Ollama's reply objects: one per streamed NDJSON line, and the final ``done`` one with its
counts and durations (nanoseconds, as Ollama reports them).

``/api/chat`` puts the text in ``message.content``; ``/api/generate`` in ``response``. Streamed
lines carry each piece; the last line has ``done: true``, ``done_reason`` and the metrics. A reply
that is not streamed is that last object with every piece joined.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from opta_lmx.errors import ApiError
from opta_lmx.gateway.generation import StreamFormat
from opta_lmx.gateway.logprobs import logprob_entries
from opta_lmx.gateway.sse import json_line_safe
from opta_lmx.proto import Finished, TokenChunk, TokenLogprobs, ToolCall

Kind = Literal["chat", "generate"]


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC, as Go writes ``time.Time`` (``...Z``)."""
    moment = datetime.now(timezone.utc) if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def error_line(error: ApiError) -> bytes:
    """An error inside a started stream: Ollama's clients raise on a line with ``error``."""
    return json_line_safe({"error": error.message}) + b"\n"


# NDJSON has no comment line: nothing is sent while a model loads or a prompt is prefilled
# (a blank line would break line-by-line JSON readers), as Ollama itself does.
STREAM = StreamFormat("application/x-ndjson", None, error_line)


class Timer:
    """When a request began, its model was ready and its prompt accepted, its first token came,
    and it finished: Ollama's ``load``, ``prompt_eval`` and ``eval`` durations."""

    def __init__(self) -> None:
        self.start = self.loaded = self.first = time.monotonic_ns()

    def mark_loaded(self) -> None:
        self.loaded = self.first = time.monotonic_ns()

    def mark_token(self) -> None:
        if self.first == self.loaded:
            self.first = time.monotonic_ns()

    def metrics(self, finished: Finished) -> dict[str, int]:
        end = time.monotonic_ns()
        return {
            "total_duration": end - self.start,
            "load_duration": self.loaded - self.start,
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": self.first - self.loaded,
            "eval_count": finished.completion_tokens,
            "eval_duration": end - self.first,
        }


def done_reason(finished: Finished) -> str:
    # Ollama says "stop" also after tool calls.
    return "length" if finished.finish_reason == "length" else "stop"


def tool_calls_json(calls: list[ToolCall], first_index: int = 0) -> list[dict[str, Any]]:
    """Ollama's ``tool_calls``: the arguments as an object (the worker checked they are JSON)."""
    return [
        {"id": call.id, "function": {"index": index, "name": call.name, "arguments": _arguments(call.arguments)}}
        for index, call in enumerate(calls, first_index)
    ]


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:  # never from the worker's parser; kept visible rather than dropped
        return {"arguments": text}



class Reply:
    """Builds one request's reply objects. ``thinking``: whether reasoning text is shown (the
    request did not say ``think: false``)."""

    def __init__(self, kind: Kind, model: str, thinking: bool = True, logprobs: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.thinking = thinking
        self.logprobs = logprobs
        self._calls = 0  # tool calls so far, for their indexes

    def _object(self, text: str, reasoning: str, calls: list[ToolCall]) -> dict[str, Any]:
        reply: dict[str, Any] = {"model": self.model, "created_at": timestamp()}
        reasoning = reasoning if self.thinking else ""
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if reasoning:
                message["thinking"] = reasoning
            if calls:
                message["tool_calls"] = tool_calls_json(calls, self._calls)
                self._calls += len(calls)
            reply["message"] = message
        else:
            reply["response"] = text
            if reasoning:
                reply["thinking"] = reasoning
        return reply

    def piece(self, chunk: TokenChunk) -> dict[str, Any] | None:
        """A streamed line for ``chunk``; None if it has nothing to show (hidden reasoning)."""
        if not (
            chunk.text or chunk.tool_calls or (chunk.reasoning and self.thinking) or (self.logprobs and chunk.logprobs)
        ):
            return None
        reply = self._object(chunk.text, chunk.reasoning, chunk.tool_calls)
        reply["done"] = False
        if self.logprobs and chunk.logprobs:
            reply["logprobs"] = logprob_entries(chunk.logprobs)
        return reply

    def done(
        self,
        finished: Finished,
        timer: Timer,
        text: str = "",
        reasoning: str = "",
        calls: list[ToolCall] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
    ) -> dict[str, Any]:
        """The last object: ``done``, why, the metrics; with the whole output when not streamed."""
        reply = self._object(text, reasoning, calls or [])
        reply.update(done=True, done_reason=done_reason(finished), **timer.metrics(finished))
        if self.logprobs and logprobs:
            reply["logprobs"] = logprob_entries(logprobs)
        return reply

    def status(self, reason: Literal["load", "unload"]) -> dict[str, Any]:
        """The answer to a request that only loads or unloads its model."""
        reply = self._object("", "", [])
        reply.update(done=True, done_reason=reason)
        return reply
