"""OpenAI request bodies (chat and text completions) as msgspec Structs: the decoder validates, and names the path on error.

Unknown fields are refused (``forbid_unknown_fields``); fields we know but do not honour yet are
declared so that ``unsupported_parameters`` can name them instead of ignoring them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.bounds import MAX_LOGIT_BIAS, MAX_MESSAGES, MAX_TOOLS, MaxTokens, Seed, StopString
from opta_lmx.gateway.decoding import decode_body


class TextPart(msgspec.Struct, tag="text", forbid_unknown_fields=True):
    text: str


class ImagePart(msgspec.Struct, tag="image_url", forbid_unknown_fields=True):
    image_url: dict[str, Any]


class AudioPart(msgspec.Struct, tag="input_audio", forbid_unknown_fields=True):
    input_audio: dict[str, Any]


ContentPart = TextPart | ImagePart | AudioPart


class FunctionCallIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: str  # JSON text, as the API returned it


class ToolCallIn(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    function: FunctionCallIn
    type: Literal["function"] = "function"


class ChatMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # the call a tool turn answers
    refusal: str | None = None


FunctionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class FunctionDef(msgspec.Struct, forbid_unknown_fields=True):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class ToolDef(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class NamedToolChoice(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None  # OpenAI requires it; it changes nothing here
    description: str | None = None
    schema: dict[str, Any] | None = None  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None
    # ``json_object`` with a schema: vLLM's and llama.cpp's extension, which instructor sends.
    schema: dict[str, Any] | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]

MAX_CHOICES = 16


class GenerationFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields chat and text completions share, with the same meaning and bounds."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    stop: StopString | Annotated[list[StopString], Meta(max_length=4)] | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] = 1
    user: str | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Bias], Meta(max_length=MAX_LOGIT_BIAS)] | None = None
    # Not in OpenAI's API; what vLLM, llama.cpp and LM Studio accept under the same names.
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None


class ChatCompletionRequest(GenerationFields, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # "none" asks a reasoning model not to reason (its template's enable_thinking); the levels
    # above it are not told apart: the model reasons as its weights do.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


_DECODER = msgspec.json.Decoder(ChatCompletionRequest)


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate, also OpenAI's cross-field rules."""
    request = decode_body(_DECODER, body)
    unsupported_parameters(request)
    check_tools(request)
    if request.response_format is not None and request.response_format.type == "json_schema":
        if request.response_format.json_schema is None:
            raise InvalidRequest(
                "response_format of type 'json_schema' needs a 'json_schema' object.", param="response_format.json_schema"
            )
    if request.logit_bias:
        logit_bias_ids(request.logit_bias)
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    return request


def unsupported_parameters(request: ChatCompletionRequest) -> None:
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for part in message.content:
                if not isinstance(part, TextPart):
                    kind = "images" if isinstance(part, ImagePart) else "audio"
                    raise UnsupportedParameter(
                        f"This model does not accept {kind}: only text content is supported.",
                        param=f"messages[{index}].content",
                    )


def check_tools(request: ChatCompletionRequest) -> None:
    """OpenAI's rules: content is required except in an assistant turn that calls tools; a tool
    turn names its call; tool_choice needs tools, and names one of them."""
    for index, message in enumerate(request.messages):
        if message.content is None and not (message.role == "assistant" and (message.tool_calls or message.refusal)):
            raise InvalidRequest(
                f"Invalid value for 'messages[{index}].content': a {message.role} message needs content.",
                param=f"messages[{index}].content",
            )
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{index}].tool_call_id'.", param=f"messages[{index}].tool_call_id"
            )
        if message.tool_calls is not None and message.role != "assistant":
            raise InvalidRequest("Only assistant messages may have 'tool_calls'.", param=f"messages[{index}].tool_calls")
    choice = request.tool_choice
    if choice is None or choice == "none":
        return
    if not request.tools:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and all(t.function.name != choice.function.name for t in request.tools):
        raise InvalidRequest(f"tool_choice names '{choice.function.name}', which is not in 'tools'.", param="tool_choice")


def message_text(message: ChatMessageIn) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def logit_bias_ids(bias: dict[str, float]) -> dict[int, float]:
    """OpenAI sends token ids as JSON object keys, so as strings."""
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids (integers).", param="logit_bias") from None
