"""Tool calls in generated text: the block between the model's tool-call markers is parsed into
``ToolCall``s (with the tool parser mlx-lm picked for the model) instead of being sent as text.

A block that does not parse is given back as text, markers included, so nothing the model wrote
is lost; OpenAI clients then see it as ordinary content.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Callable

from opta_lmx.proto import ToolCall
from opta_lmx.worker.markers import MarkerSplitter, Piece

log = logging.getLogger("opta_lmx.worker")

# mlx-lm's tool parsers: (block text, tools) -> {"name", "arguments"} or a list of them.
ToolParser = Callable[[str, Any], Any]


class ToolCallSplitter:
    """Feed answer text; get back ``(content, tool_calls)`` that is safe to emit now."""

    def __init__(self, start: str, end: str, parse: ToolParser, tools: list[dict[str, Any]]) -> None:
        self._start = start
        self._end = end
        self._splitter = MarkerSplitter(start, end)
        self._parse = parse
        self._tools = tools
        self._block: list[str] = []
        # Trailing whitespace outside the blocks is held until text follows it: the line breaks
        # around and between calls are the format's, not content.
        self._space = ""
        self.called = False  # at least one call was parsed: the finish reason is "tool_calls"

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        return self._take(self._splitter.feed(text), final=False)

    def flush(self) -> tuple[str, list[ToolCall]]:
        return self._take(self._splitter.flush(), final=True)

    def _take(self, pieces: list[Piece], final: bool) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        calls: list[ToolCall] = []
        for piece in pieces:
            if piece.inside:
                self._block.append(piece.text)
                if piece.closes:
                    self._close(content, calls, closed=True)
            else:
                text = self._space + piece.text
                ready = text.rstrip()
                content.append(ready)
                self._space = text[len(ready) :]
        if final:
            if self._splitter.inside:  # cut off (length) or ended without the end marker
                self._close(content, calls, closed=False)
            elif not self.called:
                content.append(self._space)
            self._space = ""
        return "".join(content), calls

    def _close(self, content: list[str], calls: list[ToolCall], closed: bool) -> None:
        text, self._block = "".join(self._block), []
        space, self._space = self._space, ""  # the line break before a call is the format's
        parsed = self._parsed(text)
        if parsed is None:
            content.append(space + self._start + text + (self._end if closed else ""))
            return
        calls.extend(parsed)
        self.called = True

    def _parsed(self, text: str) -> list[ToolCall] | None:
        try:
            result = self._parse(text, self._tools)
            items = result if isinstance(result, list) else [result]
            return [_tool_call(item) for item in items]
        except Exception as exc:  # parsers raise ValueError, JSONDecodeError, KeyError, ...
            log.info("tool call did not parse (%s: %s); sent as text", type(exc).__name__, exc)
            return None


def _tool_call(item: dict[str, Any]) -> ToolCall:
    name = item["name"]
    if not isinstance(name, str) or not name:
        raise ValueError("a tool call needs a function name")
    arguments = item.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(item.get("id") or f"call_{secrets.token_hex(12)}", name, arguments)


def template_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """``ChatMessage``s as chat templates expect them: tool calls with their arguments as objects
    (templates write them with ``tojson``), tool results with their call's id."""
    out: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        out.append(entry)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: the template gets what the client sent


def tool_splitter(tokenizer: Any, tools: list[Any]) -> ToolCallSplitter | None:
    """The splitter for a request offering ``tools``, from what ``tokenizer`` (either engine's)
    knows of its model's tool-call markers and parser; None when there is nothing to split."""
    if not tools or not tokenizer.has_tool_calling:
        return None
    start, end = tokenizer.tool_call_start or "", tokenizer.tool_call_end or ""
    return ToolCallSplitter(start, end, tokenizer.tool_parser, template_tools(tools))


def template_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """``Tool``s in OpenAI's (and the templates') ``{"type": "function", "function": ...}`` shape."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                **({"description": t.description} if t.description is not None else {}),
                "parameters": t.parameters or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]
