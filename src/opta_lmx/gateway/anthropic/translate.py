"""An Anthropic Messages request as ``Generate`` fields: the conversation as chat messages, the
tools, what constrains the output, and the sampling values.

- The system prompt is ``system`` (a string or text blocks) followed by the ``role: "system"``
  turns inside ``messages`` (Claude Code sends those), in order.
- Claude Code's system prompt begins with a line that changes with every request
  (``x-anthropic-billing-header: …``). It says nothing to the model, and a prompt that differs in
  its first tokens can reuse no cached prefix: it is left out before the prompt is rendered.
- ``tool_result`` blocks become ``tool`` turns answering their ``tool_use_id``; ``tool_use`` blocks
  become the assistant turn's tool calls; ``thinking`` blocks in the history are dropped, as the
  templates of reasoning models drop earlier reasoning.
- Hosted tools (a ``type`` other than "custom": web search, code execution …) cannot run here and
  are not shown to the model; naming one in ``tool_choice`` is refused.
"""

from __future__ import annotations

import json
from typing import Any

from opta_lmx.config import Preset
from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.anthropic.requests import (
    Block,
    CountTokensRequest,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from opta_lmx.gateway.jobs import constraints, sampling, thinking
from opta_lmx.proto import ChatMessage, SamplingParams, Tool, ToolCall

VOLATILE_PREFIX = "x-anthropic-billing-header:"


def generate_fields(request: CountTokensRequest) -> dict[str, Any]:
    """The ``Generate`` fields that shape the prompt and constrain the output."""
    wanted = None if request.thinking is None else request.thinking.type != "disabled"
    return {"messages": chat_messages(request), **_constraints(request), **thinking(wanted)}


def chat_messages(request: CountTokensRequest) -> list[ChatMessage]:
    system = system_prompt(request)
    out = [ChatMessage("system", system)] if system else []
    for message in request.messages:
        if message.role == "system":
            continue
        if isinstance(message.content, str):
            out.append(ChatMessage(message.role, message.content))
        elif message.role == "user":
            out.extend(_user_turns(message.content))
        else:
            out.append(_assistant_turn(message.content))
    return out


def system_prompt(request: CountTokensRequest) -> str:
    parts = _texts(request.system) if request.system is not None else []
    for message in request.messages:
        if message.role == "system":
            parts.extend(_texts(message.content))
    return "\n\n".join(part for part in (_stable(p) for p in parts) if part)


def _stable(text: str) -> str:
    """``text`` without the per-request billing line."""
    if not text.startswith(VOLATILE_PREFIX):
        return text
    _, _, rest = text.partition("\n")
    return rest


def _texts(content: str | list[Any]) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [block.text for block in content if isinstance(block, TextBlock)]


def _user_turns(blocks: list[Block]) -> list[ChatMessage]:
    """Tool results first (Anthropic puts them first in a user turn), then the user's text."""
    turns = [
        ChatMessage("tool", _result_text(block), tool_call_id=block.tool_use_id)
        for block in blocks
        if isinstance(block, ToolResultBlock)
    ]
    text = "".join(_texts(blocks))
    if text or not turns:
        turns.append(ChatMessage("user", text))
    return turns


def _result_text(block: ToolResultBlock) -> str:
    text = block.content if isinstance(block.content, str) else "".join(_texts(block.content))
    return f"Error: {text}" if block.is_error else text


def _assistant_turn(blocks: list[Block]) -> ChatMessage:
    calls = [ToolCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False)) for b in blocks if isinstance(b, ToolUseBlock)]
    return ChatMessage("assistant", "".join(_texts(blocks)), tool_calls=calls)


def _constraints(request: CountTokensRequest) -> dict[str, Any]:
    config = request.output_config
    output_format = config.format if config is not None and config.format is not None else request.output_format
    schema = output_format.schema if output_format is not None else None
    tools = [
        Tool(tool.name, tool.description, tool.input_schema or {})
        for tool in request.tools or ()
        if tool.type in (None, "custom")
    ]
    choice = request.tool_choice
    if choice is None:
        return constraints(schema, tools)
    if choice.type == "tool" and all(tool.name != choice.name for tool in tools):
        raise InvalidRequest(
            f"tool_choice names '{choice.name}', a hosted tool, which this server cannot run.", param="tool_choice.name"
        )
    mode = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}[choice.type]
    named = choice.name if choice.type == "tool" else None
    return constraints(schema, tools, mode, named, not choice.disable_parallel_tool_use)  # type: ignore[arg-type]


def sampling_params(request: MessagesRequest, preset: Preset) -> SamplingParams:
    return sampling(
        preset,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=list(request.stop_sequences) if request.stop_sequences is not None else None,
        top_k=request.top_k,
    )


def shows_thinking(request: CountTokensRequest) -> bool:
    """Whether a reasoning model's reasoning comes back as ``thinking`` blocks: only when the
    request asked for thinking, as with Anthropic's models."""
    return request.thinking is not None and request.thinking.type != "disabled"

