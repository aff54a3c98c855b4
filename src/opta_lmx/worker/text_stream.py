"""One request's generated text, made once, in the order every piece needs: the incremental
detokenizer, the reasoning split (thinking markers), the stop strings (held back while they could
still match, never emitted) and the tool calls (parsed out of the answer)."""

from __future__ import annotations

from typing import Any

from opta_lmx.proto import Finished, FromWorker, TokenChunk, TokenLogprobs, ToolCall
from opta_lmx.worker.reasoning import ReasoningSplitter
from opta_lmx.worker.stops import StopMatcher
from opta_lmx.worker.tool_calls import ToolCallSplitter


class TextStream:
    """Feed tokens; get back ``(reasoning, text, tool_calls)`` that is safe to emit now."""

    def __init__(
        self,
        detokenizer: Any,  # mlx-lm's streaming detokenizer
        stops: StopMatcher,
        reasoning: ReasoningSplitter | None,  # None: the model has no thinking markers
        tools: ToolCallSplitter | None,  # None: no tools, or the model has no tool-call format
    ) -> None:
        self._detokenizer = detokenizer
        self._stops = stops
        self._reasoning = reasoning
        self._tools = tools

    @property
    def stopped(self) -> bool:
        """A stop string was found: nothing more may be emitted."""
        return self._stops.stopped

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._stops.matched

    @property
    def called(self) -> bool:
        """At least one tool call was parsed."""
        return self._tools is not None and self._tools.called

    def feed(self, token: int) -> tuple[str, str, list[ToolCall]]:
        self._detokenizer.add_token(token)
        return self._answer(*self._split(self._detokenizer.last_segment))

    def token_chunk(self, request_id: int, token: int, entry: TokenLogprobs | None) -> TokenChunk | None:
        """Feed one generated token: the chunk to send for it, if there is anything to send (a
        token with its log probabilities always is)."""
        reasoning, text, calls = self.feed(token)
        if entry is None and not (text or reasoning or calls):
            return None
        return TokenChunk(request_id, text, 1, None if entry is None else [entry], reasoning, calls)

    def ending(
        self, request_id: int, reason: str, prompt_tokens: int, generated: int, cached_tokens: int
    ) -> list[FromWorker]:
        """The messages that end the request: what the text still held, then ``Finished``. The
        reason is "stop" when a stop string ended it (also one the held tail completed), and
        "tool_calls" when it stopped after calling tools."""
        reasoning, tail, calls = self.finish()
        if self.stopped:
            reason = "stop"
        if reason == "stop" and self.called:
            reason = "tool_calls"
        out: list[FromWorker] = []
        if tail or reasoning or calls:
            out.append(TokenChunk(request_id, tail, 0, None, reasoning, calls))
        stop = self.stop_sequence if reason == "stop" else None
        out.append(Finished(request_id, reason, prompt_tokens, generated, cached_tokens, stop))
        return out

    def finish(self) -> tuple[str, str, list[ToolCall]]:
        """What is held back, at the end of the generation."""
        reasoning, tail = "", ""
        # After a stop string nothing more may be emitted; otherwise the detokenizer may still
        # hold the tail of a multi-byte character, and the matcher a possible stop prefix.
        if not self._stops.stopped:
            self._detokenizer.finalize()
            reasoning, tail = self._split(self._detokenizer.last_segment, final=True)
            tail = self._stops.feed(tail)
            if not self._stops.stopped:
                tail += self._stops.flush()
        calls: list[ToolCall] = []
        if self._tools is not None:  # a call block left open is parsed, or given back as text
            tail, calls = self._tools.feed(tail)
            more_tail, more_calls = self._tools.flush()
            tail, calls = tail + more_tail, calls + more_calls
        return reasoning, tail, calls

    def _answer(self, reasoning: str, text: str) -> tuple[str, str, list[ToolCall]]:
        text = self._stops.feed(text)
        if self._tools is None:
            return reasoning, text, []
        text, calls = self._tools.feed(text)
        return reasoning, text, calls

    def _split(self, text: str, final: bool = False) -> tuple[str, str]:
        """(reasoning, answer) of a piece of text."""
        if self._reasoning is None:
            return "", text
        reasoning, answer = self._reasoning.feed(text)
        if final:
            more_reasoning, more_answer = self._reasoning.flush()
            reasoning, answer = reasoning + more_reasoning, answer + more_answer
        return reasoning, answer
