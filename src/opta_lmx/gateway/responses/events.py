"""The output of one response, built from the worker's chunks: its items and, when it streams,
the Responses API's events in their order.

Every event carries ``type`` and a ``sequence_number`` that grows by one. The order clients rely
on (Codex, openai-python's stream accumulator): ``response.created``, ``response.in_progress``;
per item ``response.output_item.added`` before any delta, then its deltas, its ``.done`` events
and ``response.output_item.done``; items one after another; finally exactly one of
``response.completed``, ``response.incomplete`` (``max_output_tokens`` reached) or
``response.failed`` (after an ``error`` event).

Items: reasoning text opens a ``reasoning`` item, answer text a ``message`` (text that is only
whitespace waits until more text comes, so a line break between reasoning and a tool call opens no
empty message), each parsed tool call is a complete ``function_call`` or ``custom_tool_call``;
under a forced custom tool the whole answer text is that call's input.
"""

from __future__ import annotations

from typing import Any

from opta_lmx.errors import ApiError
from opta_lmx.gateway.responses.objects import (
    Envelope,
    call_item,
    custom_input,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    usage,
)
from opta_lmx.gateway.responses.translate import CallTarget, ToolSet
from opta_lmx.gateway.logprobs import logprob_entries
from opta_lmx.gateway.sse import named_event
from opta_lmx.proto import Finished, TokenChunk, ToolCall

KEEPALIVE_LINE = b": keep-alive\n\n"  # an SSE comment: clients skip it


class _OpenItem:
    """The item being written: a message, a reasoning item or a forced custom tool call."""

    def __init__(self, kind: str, index: int, target: CallTarget | None = None) -> None:
        self.kind = kind
        self.index = index
        self.id = new_id({"message": "msg", "reasoning": "rs", "custom": "ctc"}[kind])
        self.call_id = new_id("call") if kind == "custom" else ""
        self.target = target
        self.parts: list[str] = []
        self.logprobs: list[dict[str, Any]] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def item(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, status, [output_text(self.text, self.logprobs)])
        if self.kind == "reasoning":
            return reasoning_item(self.id, status, [{"type": "reasoning_text", "text": self.text}])
        assert self.target is not None
        return call_item(self.id, self.call_id, self.target, self.text, status)

    def empty(self) -> dict[str, Any]:
        """The item as ``output_item.added`` shows it, before any delta."""
        if self.kind == "message":
            return message_item(self.id, "in_progress", [])
        if self.kind == "reasoning":
            return reasoning_item(self.id, "in_progress", [])
        assert self.target is not None
        return call_item(self.id, self.call_id, self.target, "", "in_progress")


class OutputWriter:
    """Feed the worker's chunks and its ``Finished``; get back the events to send (``b""`` when
    not streaming) and, at the end, the whole response."""

    def __init__(
        self,
        envelope: Envelope,
        tools: ToolSet,
        forced: CallTarget | None = None,
        streaming: bool = True,
    ) -> None:
        self.envelope = envelope
        self._tools = tools
        self._forced = forced
        self._streaming = streaming
        self._sequence = 0
        self.items: list[dict[str, Any]] = []  # done, in output order
        self._open: _OpenItem | None = None
        self._held = ""  # answer text that is only whitespace so far
        self._held_logprobs: list[dict[str, Any]] = []
        self._tokens = 0
        self._reasoning_tokens = 0  # tokens up to the last one that carried reasoning
        self.final: dict[str, Any] | None = None  # the response, once it ended

    # --- events ---

    def _event(self, kind: str, **fields: Any) -> bytes:
        if not self._streaming:
            return b""
        event = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return named_event(kind, event)

    def start(self) -> bytes:
        response = self.envelope.response("in_progress", [])
        return self._event("response.created", response=response) + self._event("response.in_progress", response=response)

    def feed(self, chunk: TokenChunk) -> bytes:
        self._tokens += chunk.n_tokens
        out = []
        if chunk.reasoning:
            self._reasoning_tokens = self._tokens
            out.append(self._delta("reasoning", chunk.reasoning, []))
        if chunk.text:
            logprobs = logprob_entries(chunk.logprobs) if chunk.logprobs else []
            out.append(self._answer(chunk.text, logprobs))
        for call in chunk.tool_calls:
            out.append(self._call(call))
        return b"".join(out)

    def finish(self, finished: Finished) -> bytes:
        """The last events: the open item done, then ``response.completed`` or (when the output
        reached its token limit) ``response.incomplete``."""
        incomplete = finished.finish_reason == "length"
        out = []
        if self._open is None and not self.items:  # nothing written: the reply is still one item
            out.append(self._open_item("custom" if self._forced else "message"))
            out.append(self._delta_open(self._take_held()))
        out.append(self._close("incomplete" if incomplete else "completed"))
        status = "incomplete" if incomplete else "completed"
        self.final = self.envelope.response(
            status, self.items, usage(finished, self._reasoning_tokens), incomplete_reason="max_output_tokens" if incomplete else None
        )
        out.append(self._event(f"response.{status}", response=self.final))
        return b"".join(out)

    def fail(self, error: ApiError) -> bytes:
        """After the stream started: an ``error`` event, then ``response.failed`` with what was
        written so far (the open item marked incomplete)."""
        closed = self._close("incomplete")
        body = {"code": error.code or "server_error", "message": error.message}
        if error.param is not None:
            body["param"] = error.param
        self.final = self.envelope.response("failed", self.items, error=body)
        return (
            closed
            + self._event("error", code=body["code"], message=error.message, param=error.param)
            + self._event("response.failed", response=self.final)
        )

    # --- items ---

    def _answer(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        if self._forced is not None:
            return self._delta("custom", text, logprobs)
        if self._open is not None and self._open.kind == "message":
            return self._delta_open(text, logprobs)
        if not text.strip():
            self._held += text
            self._held_logprobs += logprobs
            return b""
        held_logprobs = self._held_logprobs
        return self._delta("message", self._take_held() + text, held_logprobs + logprobs)

    def _take_held(self) -> str:
        held, self._held, self._held_logprobs = self._held, "", []
        return held

    def _delta(self, kind: str, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        """``text`` for an item of ``kind``, opening one (and closing another) first if needed."""
        opened = b""
        if self._open is None or self._open.kind != kind:
            opened = self._close("completed") + self._open_item(kind)
        return opened + self._delta_open(text, logprobs)

    def _open_item(self, kind: str) -> bytes:
        item = self._open = _OpenItem(kind, len(self.items), self._forced if kind == "custom" else None)
        added = self._event("response.output_item.added", output_index=item.index, item=item.empty())
        if kind == "custom":
            return added
        part = output_text("", []) if kind == "message" else {"type": "reasoning_text", "text": ""}
        return added + self._event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0, part=part)

    def _delta_open(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> bytes:
        item = self._open
        assert item is not None
        item.parts.append(text)
        if not text:
            return b""
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "custom":
            return self._event("response.custom_tool_call_input.delta", **where, delta=text)
        if item.kind == "reasoning":
            return self._event("response.reasoning_text.delta", **where, content_index=0, delta=text)
        item.logprobs += logprobs or []
        return self._event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=logprobs or [])

    def _close(self, status: str) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        done = item.item(status)
        self.items.append(done)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "custom":
            out = self._event("response.custom_tool_call_input.done", **where, input=item.text)
        elif item.kind == "reasoning":
            out = self._event("response.reasoning_text.done", **where, content_index=0, text=item.text) + self._event(
                "response.content_part.done", **where, content_index=0, part=done["content"][0]
            )
        else:
            out = self._event(
                "response.output_text.done", **where, content_index=0, text=item.text, logprobs=item.logprobs
            ) + self._event("response.content_part.done", **where, content_index=0, part=done["content"][0])
        return out + self._event("response.output_item.done", output_index=item.index, item=done)

    def _call(self, call: ToolCall) -> bytes:
        """A parsed tool call: a whole item at once (the worker parses a call when it is complete)."""
        self._take_held()  # the line break before a call is the tool-call format's, not text
        out = self._close("completed")
        target = self._tools.target(call.name)
        payload = custom_input(call) if target.kind == "custom" else call.arguments
        item_id = new_id("ctc" if target.kind == "custom" else "fc")
        index = len(self.items)
        where = {"item_id": item_id, "output_index": index}
        done = call_item(item_id, call.id, target, payload, "completed")
        self.items.append(done)
        out += self._event("response.output_item.added", output_index=index, item=call_item(item_id, call.id, target, "", "in_progress"))
        if target.kind == "custom":
            out += self._event("response.custom_tool_call_input.delta", **where, delta=payload)
            out += self._event("response.custom_tool_call_input.done", **where, input=payload)
        else:
            out += self._event("response.function_call_arguments.delta", **where, delta=payload)
            out += self._event("response.function_call_arguments.done", **where, name=target.name, arguments=payload)
        return out + self._event("response.output_item.done", output_index=index, item=done)
