"""The Responses API's request body (``POST /v1/responses``) as msgspec Structs.

The top level forbids unknown fields, as every dialect here does. Its ``input`` items, ``tools``
and ``tool_choice`` are unions whose members are told apart by ``type``, and a message item may
leave ``type`` out: they are decoded as plain objects first, then converted one by one
(``input_items``, ``tool_defs``, ``tool_choice``), so an error still names its path
(``input[2].content[0].text``). Fields that mean nothing on a local server are accepted and
listed in docs/dialects/responses.md; fields that would change the output and cannot be
honoured are refused with a 400 (``refuse_unsupported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.decoding import decode_body, validation_error

T = TypeVar("T")
Status = Literal["in_progress", "completed", "incomplete"]


# --- content parts ------------------------------------------------------------------------------


class InputText(msgspec.Struct, tag="input_text", forbid_unknown_fields=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", forbid_unknown_fields=True):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


class Refusal(msgspec.Struct, tag="refusal", forbid_unknown_fields=True):
    refusal: str


# Media parts are decoded only to be refused by name; their fields are not checked.
class InputImage(msgspec.Struct, tag="input_image"):
    pass


class InputFile(msgspec.Struct, tag="input_file"):
    pass


class InputAudio(msgspec.Struct, tag="input_audio"):
    pass


ContentPart = InputText | OutputText | Refusal | InputImage | InputFile | InputAudio


# --- input items --------------------------------------------------------------------------------


class MessageItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    type: Literal["message"] = "message"
    id: str | None = None
    status: Status | None = None
    phase: str | None = None  # "commentary" or "final_answer" on assistant messages: no meaning here


class FunctionCallItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    name: str
    arguments: str
    type: Literal["function_call"] = "function_call"
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class FunctionCallOutputItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    output: str | list[ContentPart]
    type: Literal["function_call_output"] = "function_call_output"
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class CustomToolCallItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    name: str
    input: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class CustomToolCallOutputItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    call_id: str
    output: str | list[ContentPart]
    type: Literal["custom_tool_call_output"] = "custom_tool_call_output"
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: Status | None = None
    caller: dict[str, Any] | None = None


class ReasoningPart(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    type: Literal["summary_text", "reasoning_text", "text"]


class ReasoningItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    summary: list[ReasoningPart] = []
    type: Literal["reasoning"] = "reasoning"
    id: str | None = None
    content: list[ReasoningPart] | None = None
    encrypted_content: str | None = None
    status: Status | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | CustomToolCallItem | CustomToolCallOutputItem | ReasoningItem
_ITEM_TYPES: dict[str, type[Any]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem,
    "custom_tool_call_output": CustomToolCallOutputItem,
    "reasoning": ReasoningItem,
}


# --- tools --------------------------------------------------------------------------------------

FunctionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Callers = list[Literal["direct", "programmatic"]]


class FunctionTool(msgspec.Struct, tag="function", kw_only=True, forbid_unknown_fields=True):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None
    # Accepted, no meaning here: who may call it, asynchronous results, tool search, output shape.
    allowed_callers: Callers | None = None
    async_: bool | None = msgspec.field(default=None, name="async")
    defer_loading: bool | None = None
    output_schema: dict[str, Any] | None = None


class TextFormat(msgspec.Struct, tag="text", forbid_unknown_fields=True):
    pass


class GrammarFormat(msgspec.Struct, tag="grammar", forbid_unknown_fields=True):
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(msgspec.Struct, tag="custom", kw_only=True, forbid_unknown_fields=True):
    """A tool whose input is free text, or text in a grammar's language (Codex's ``apply_patch``)."""

    name: FunctionName
    description: str | None = None
    format: TextFormat | GrammarFormat | None = None
    allowed_callers: Callers | None = None
    async_: bool | None = msgspec.field(default=None, name="async")
    defer_loading: bool | None = None


class NamespaceTool(msgspec.Struct, tag="namespace", kw_only=True, forbid_unknown_fields=True):
    """Function and custom tools grouped under a name; the client runs them, as any function."""

    name: FunctionName
    description: str | None = None
    tools: list[FunctionTool | CustomTool]


class HostedTool(msgspec.Struct, kw_only=True):
    """A tool OpenAI's servers run (web search, code interpreter...): nothing here can run it.
    Its settings are not checked."""

    type: str


# The hosted tools of the API (openai-python's ``ToolParam`` union): accepted, never shown to the model.
HOSTED_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "programmatic_tool_calling",
    }
)
ToolDef = FunctionTool | CustomTool | NamespaceTool | HostedTool
_TOOL_TYPES: dict[str, type[Any]] = {"function": FunctionTool, "custom": CustomTool, "namespace": NamespaceTool}


class NamedTool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``tool_choice`` naming one tool: ``{"type": "function" | "custom", "name": ...}``."""

    type: Literal["function", "custom"]
    name: str


class AllowedTools(msgspec.Struct, tag="allowed_tools", kw_only=True, forbid_unknown_fields=True):
    """``tool_choice`` limiting the model to some of the tools (by ``type`` and ``name``)."""

    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


ToolChoice = Literal["none", "auto", "required"] | NamedTool | AllowedTools


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


def _convert(value: Any, kind: type[T], path: str) -> T:
    """``msgspec.convert``, with a validation error's path rooted at ``path``."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" in message:
            message = message.replace(" - at `$", f" - at `$.{path}", 1)
        else:
            message = f"{message} - at `$.{path}`"
        raise validation_error(message) from None


def input_items(value: str | list[dict[str, Any]] | None) -> list[InputItem]:
    """``input`` as items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    items = []
    for index, raw in enumerate(value):
        kind = raw.get("type", "message")
        item_type = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
        if item_type is None:
            raise UnsupportedParameter(
                f"Input items of type {kind!r} are not supported here (supported: {', '.join(_ITEM_TYPES)}).",
                param=f"input[{index}].type",
            )
        items.append(_convert(raw, item_type, f"input[{index}]"))
    return items


def tool_defs(values: list[dict[str, Any]]) -> list[ToolDef]:
    tools: list[ToolDef] = []
    for index, raw in enumerate(values):
        kind = raw.get("type")
        if kind in HOSTED_TOOL_TYPES:
            tools.append(HostedTool(type=kind))
            continue
        tool_type = _TOOL_TYPES.get(kind) if isinstance(kind, str) else None
        if tool_type is None:
            raise InvalidRequest(f"Unknown tool type {kind!r}.", param=f"tools[{index}].type")
        tools.append(_convert(raw, tool_type, f"tools[{index}]"))
    return tools


def tool_choice(value: str | dict[str, Any] | None, tools: list[ToolDef]) -> ToolChoice:
    """The tool choice, checked against the tools: it may force only a tool the model can call."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise InvalidRequest(f"Invalid value for 'tool_choice': {value!r}.", param="tool_choice")
        return value  # type: ignore[return-value]
    kind = value.get("type")
    if kind == "allowed_tools":
        return _convert(value, AllowedTools, "tool_choice")
    if kind not in ("function", "custom"):
        raise UnsupportedParameter(
            f"tool_choice of type {kind!r} forces a tool that runs on OpenAI's servers; none runs here.",
            param="tool_choice",
        )
    named = _convert(value, NamedTool, "tool_choice")
    wanted = FunctionTool if named.type == "function" else CustomTool
    if not any(isinstance(t, wanted) and t.name == named.name for t in tools):
        raise InvalidRequest(f"tool_choice names the {named.type} tool '{named.name}', which is not in 'tools'.", param="tool_choice")
    return named
