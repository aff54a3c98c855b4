"""Anthropic Messages request bodies as msgspec Structs (``POST /v1/messages`` and
``/v1/messages/count_tokens``).

Unknown top-level fields are refused, as Anthropic's API refuses them. Fields that Claude Code
and the SDKs send but that mean nothing for a local model (``metadata``, ``cache_control``,
``context_management``, ``service_tier``, ``output_config.effort`` …) are declared, accepted and
documented as having no effect. Content blocks the models cannot take (images, documents) are
declared so they can be refused by name rather than as unknown.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.bounds import MAX_MESSAGES, MAX_STOPS, MAX_TOOLS, MaxTokens, StopString
from opta_lmx.gateway.decoding import decode_body


class CacheControl(msgspec.Struct):
    type: str = "ephemeral"
    ttl: str | None = None


class TextBlock(msgspec.Struct, tag="text", forbid_unknown_fields=True):
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(msgspec.Struct, tag="image"):
    source: dict[str, Any]


class DocumentBlock(msgspec.Struct, tag="document"):
    source: dict[str, Any]


class ToolUseBlock(msgspec.Struct, tag="tool_use", forbid_unknown_fields=True):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None


class ToolResultBlock(msgspec.Struct, tag="tool_result", forbid_unknown_fields=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", forbid_unknown_fields=True):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", forbid_unknown_fields=True):
    data: str


Block = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class OutputFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, forbid_unknown_fields=True):
    effort: str | None = None  # no local meaning: a model's effort is its weights
    format: OutputFormat | None = None


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    # "system" inside messages: Claude Code's mid-conversation system turns (folded into the system prompt).
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]
    # Per-turn settings (Claude Code sends the turn's effort): no local effect.
    output_config: OutputConfig | None = None


class ToolDef(msgspec.Struct, forbid_unknown_fields=True):
    """A client tool (``type`` absent or "custom"); hosted tools carry another ``type``."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None
    defer_loading: bool | None = None
    eager_input_streaming: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    allowed_callers: list[str] | None = None


class ToolChoice(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields ``count_tokens`` takes: what shapes the prompt."""

    model: str
    messages: Annotated[list[MessageIn], Meta(min_length=1, max_length=MAX_MESSAGES)]
    # Text blocks only (checked after decoding): a union, so each block's "type" is required.
    system: str | list[Block] | None = None
    tools: Annotated[list[ToolDef], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None
    # Accepted with no local effect.
    cache_control: CacheControl | None = None
    context_management: dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    speed: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


class MessagesRequest(CountTokensRequest, kw_only=True, forbid_unknown_fields=True):
    max_tokens: MaxTokens
    stream: bool = False
    # Newer SDKs no longer send these; older clients and other tools still do.
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    stop_sequences: Annotated[list[StopString], Meta(max_length=MAX_STOPS)] | None = None
    # Accepted with no local effect.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    container: Any = None
    diagnostics: Any = None
    inference_geo: str | None = None


_MESSAGES = msgspec.json.Decoder(MessagesRequest)
_COUNT = msgspec.json.Decoder(CountTokensRequest)


def decode_messages_request(body: bytes) -> MessagesRequest:
    request = decode_body(_MESSAGES, body)
    check(request)
    return request


def decode_count_request(body: bytes) -> CountTokensRequest:
    request = decode_body(_COUNT, body)
    check(request)
    return request


def check(request: CountTokensRequest) -> None:
    """What Anthropic's API refuses beyond the types, and what the models cannot take."""
    if isinstance(request.system, list) and any(not isinstance(block, TextBlock) for block in request.system):
        raise InvalidRequest("'system' takes text blocks only.", param="system")
    if request.mcp_servers:
        raise UnsupportedParameter("MCP servers are not supported: the server cannot call them.", param="mcp_servers")
    for index, message in enumerate(request.messages):
        for part, block in enumerate(message.content if isinstance(message.content, list) else ()):
            blocks = block.content if isinstance(block, ToolResultBlock) and isinstance(block.content, list) else [block]
            for inner in blocks:
                if isinstance(inner, (ImageBlock, DocumentBlock)):
                    kind = "images" if isinstance(inner, ImageBlock) else "documents"
                    raise UnsupportedParameter(
                        f"This model does not accept {kind}: only text content is supported.",
                        param=f"messages.{index}.content.{part}",
                    )
    choice = request.tool_choice
    if choice is None or choice.type in ("auto", "none"):
        return
    if not request.tools:
        raise InvalidRequest(f"tool_choice of type '{choice.type}' needs 'tools'.", param="tool_choice")
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs a 'name'.", param="tool_choice.name")
        if all(tool.name != choice.name for tool in request.tools):
            raise InvalidRequest(f"tool_choice names '{choice.name}', which is not in 'tools'.", param="tool_choice.name")
