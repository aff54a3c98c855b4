"""OpenAI request bodies as msgspec Structs: the decoder validates, and names the path on error.

Unknown fields are refused (``forbid_unknown_fields``); fields we know but do not honour yet are
declared so that ``unsupported_parameters`` can name them instead of ignoring them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter


class TextPart(msgspec.Struct, tag="text", forbid_unknown_fields=True):
    text: str


class ImagePart(msgspec.Struct, tag="image_url", forbid_unknown_fields=True):
    image_url: dict[str, Any]


class AudioPart(msgspec.Struct, tag="input_audio", forbid_unknown_fields=True):
    input_audio: dict[str, Any]


ContentPart = TextPart | ImagePart | AudioPart


class ChatMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]

# Parameters we accept only at their neutral value (what the API does when they are left out).
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "response_format": None,
    "tools": None,
    "tool_choice": None,
    "parallel_tool_calls": None,
}


class ChatCompletionRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    user: str | None = None
    n: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    logit_bias: dict[str, Bias] | None = None
    # Not in OpenAI's API; what vLLM, llama.cpp and LM Studio accept under the same names.
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


_DECODER = msgspec.json.Decoder(ChatCompletionRequest)
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`(?: - at `\$\.?(.*)`)?")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`(?: - at `\$\.?(.*)`)?")
_AT_PATH = re.compile(r" - at `\$\.?(.*)`$")


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate; raises ``InvalidRequest``/``UnsupportedParameter`` naming the field."""
    try:
        request = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    unsupported_parameters(request)
    if request.logit_bias:
        logit_bias_ids(request.logit_bias)
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
    return request


def _join(path: str | None, field: str) -> str:
    return f"{path}.{field}" if path else field


def validation_error(message: str) -> InvalidRequest | UnsupportedParameter:
    if match := _UNKNOWN_FIELD.search(message):
        param = _join(match.group(2), match.group(1))
        return UnsupportedParameter(f"Unsupported parameter: '{param}' is not supported.", param=param)
    if match := _MISSING_FIELD.search(message):
        param = _join(match.group(2), match.group(1))
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    match = _AT_PATH.search(message)
    param = match.group(1) if match else None
    return InvalidRequest(f"Invalid value for '{param}': {message}" if param else message, param=param)


def unsupported_parameters(request: ChatCompletionRequest) -> None:
    for name, neutral in _NEUTRAL.items():
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise UnsupportedParameter(
                f"Unsupported parameter: '{name}' = {value!r} is not supported by this server yet.",
                param=name,
            )
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for part in message.content:
                if not isinstance(part, TextPart):
                    kind = "images" if isinstance(part, ImagePart) else "audio"
                    raise UnsupportedParameter(
                        f"This model does not accept {kind}: only text content is supported.",
                        param=f"messages[{index}].content",
                    )


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
