"""The Responses API's request body (``POST /v1/responses``) as msgspec Structs.

The top level forbids unknown fields, as every dialect here does. Its ``input`` items, ``tools``
and ``tool_choice`` are decoded as plain objects first, then converted one by one by their
``type`` (items.py, tools.py), so an error still names its path. Fields that mean nothing on a
local server are accepted and listed in docs/dialects/responses.md; fields that would change the
output and cannot be honoured are refused with a 400 (``refuse_unsupported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.responses.items import InputItem, input_items
from opta_lmx.gateway.responses.tools import ToolChoice, ToolDef, tool_choice, tool_defs


# --- the request --------------------------------------------------------------------------------


class JsonFormat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None  # OpenAI requires it for json_schema; it changes nothing here
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: JsonFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, no effect: see the docs


class ReasoningConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Accepted, no effect: a local model reasons as its chat template makes it (see the docs).
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    mode: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_obfuscation: bool | None = None  # padding against side channels on OpenAI's network


Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
LOGPROBS = "message.output_text.logprobs"


class CreateResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    include: list[Includable] | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    # Accepted, no meaning on a local server (see the docs).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    client_metadata: dict[str, Any] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None  # counts hosted tool calls: none run here
    # Refused when set (``refuse_unsupported``).
    conversation: Any = None
    prompt: Any = None


_DECODER = msgspec.json.Decoder(CreateResponse)


class ResponseRequest(msgspec.Struct, frozen=True):
    """A decoded, checked request: the body and its typed items, tools and tool choice."""

    body: CreateResponse
    items: list[InputItem]
    tools: list[ToolDef]
    tool_choice: ToolChoice


def decode_request(data: bytes) -> ResponseRequest:
    """Decode and check ``POST /v1/responses``; raises ``InvalidRequest``/``UnsupportedParameter``."""
    body = decode_body(_DECODER, data)
    refuse_unsupported(body)
    if body.input is None and body.previous_response_id is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    items = input_items(body.input)
    tools = tool_defs(body.tools or [])
    choice = tool_choice(body.tool_choice, tools)
    text_format = body.text.format if body.text is not None else None
    if text_format is not None and text_format.type == "json_schema" and text_format.schema is None:
        raise InvalidRequest("text.format of type 'json_schema' needs a 'schema'.", param="text.format.schema")
    return ResponseRequest(body, items, tools, choice)


def refuse_unsupported(body: CreateResponse) -> None:
    """What would change the output and cannot be honoured here."""
    if body.background:
        raise UnsupportedParameter("Background responses are not supported: use stream or wait for the reply.", param="background")
    if body.conversation is not None:
        raise UnsupportedParameter(
            "Conversations are not stored here: send the history in 'input' or use 'previous_response_id'.",
            param="conversation",
        )
    if body.prompt is not None:
        raise UnsupportedParameter("Stored prompt templates are not supported: send 'instructions' and 'input'.", param="prompt")
    if body.truncation == "auto":
        raise UnsupportedParameter(
            "truncation 'auto' is not supported: a conversation longer than the model's context fails with "
            "context_length_exceeded instead of being cut.",
            param="truncation",
        )
