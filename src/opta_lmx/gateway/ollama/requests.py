"""Ollama request bodies (``/api/chat``, ``/api/generate``, ``/api/show``) as msgspec Structs.

Fields follow Ollama's ``api/types.go``. Ollama ignores fields it does not know; here an unknown
field is refused, naming it (a typo in ``options`` would otherwise change nothing, silently).
``null`` is accepted wherever Ollama's Go decoder accepts it (it reads as the zero value).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from opta_lmx.errors import InvalidRequest, UnsupportedParameter
from opta_lmx.gateway.bounds import MAX_MESSAGES, MAX_STOPS, MAX_TOOLS, Seed, StopString
from opta_lmx.gateway.decoding import decode_body

ROLES = ("system", "user", "assistant", "tool")
# Ollama's integers are Go's int (64 bits); larger ones would not fit the worker's messages either.
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
ThinkLevel = Literal["low", "medium", "high", "max"]
Unused = Any  # an option accepted and ignored: its type is not checked either


class Options(msgspec.Struct, forbid_unknown_fields=True):
    """Ollama's ``options``. Sampling options are honoured; see ``options.sampling_params`` for
    the ones accepted only at values that change nothing, and docs/dialects/ollama.md."""

    num_predict: Int | None = None
    temperature: Annotated[float, Meta(ge=0.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    seed: Seed | None = None
    stop: StopString | Annotated[list[StopString], Meta(max_length=MAX_STOPS)] | None = None
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_last_n: Int | None = None
    typical_p: float | None = None
    num_ctx: Annotated[int, Meta(ge=1, le=2**63 - 1)] | None = None
    # How the model runs, not what it writes: each engine decides these itself.
    num_batch: Unused = None
    num_gpu: Unused = None
    main_gpu: Unused = None
    num_thread: Unused = None
    use_mmap: Unused = None
    num_keep: Unused = None
    draft_num_predict: Unused = None
    # Options Ollama's own Options no longer has (it ignores them too, with a warning).
    numa: Unused = None
    low_vram: Unused = None
    f16_kv: Unused = None
    logits_all: Unused = None
    vocab_only: Unused = None
    use_mlock: Unused = None
    embedding_only: Unused = None
    tfs_z: Unused = None
    mirostat: Unused = None
    mirostat_tau: Unused = None
    mirostat_eta: Unused = None
    penalize_newline: Unused = None


class ToolCallFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}
    index: Int | None = None


class ToolCallIn(msgspec.Struct, forbid_unknown_fields=True):
    function: ToolCallFunction
    id: str | None = None
    type: Literal["function"] | None = None


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ToolFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(msgspec.Struct, forbid_unknown_fields=True):
    function: ToolFunction
    type: Literal["function"] = "function"
    items: Any = None  # in Ollama's Tool type, unused by it


class GenerationRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``/api/chat`` and ``/api/generate`` share."""

    model: str
    stream: bool | None = None  # Ollama streams unless told not to
    format: str | dict[str, Any] | None = None
    keep_alive: float | str | None = None
    options: Options | None = None
    think: bool | ThinkLevel | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    debug_render_only: bool | None = msgspec.field(default=None, name="_debug_render_only")


class ChatRequest(GenerationRequest, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[Message], Meta(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[ToolDef], Meta(max_length=MAX_TOOLS)] | None = None


class GenerateRequest(GenerationRequest, kw_only=True, forbid_unknown_fields=True):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class ShowRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str | None = None
    name: str | None = None  # Ollama's older spelling of ``model``
    verbose: bool | None = None
    system: str | None = None
    template: str | None = None
    options: dict[str, Any] | None = None


_CHAT = msgspec.json.Decoder(ChatRequest)
_GENERATE = msgspec.json.Decoder(GenerateRequest)
_SHOW = msgspec.json.Decoder(ShowRequest)


def decode_chat(body: bytes) -> ChatRequest:
    request = decode_body(_CHAT, body)
    _check_common(request)
    for index, message in enumerate(request.messages or ()):
        message.role = message.role.lower()  # as Ollama reads roles
        if message.role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{index}].role': '{message.role}' is not one of {', '.join(ROLES)}.",
                param=f"messages[{index}].role",
            )
        if message.images:
            raise UnsupportedParameter(
                f"'{request.model}' does not support images: only text content is supported.",
                param=f"messages[{index}].images",
            )
    return request


def decode_generate(body: bytes) -> GenerateRequest:
    request = decode_body(_GENERATE, body)
    _check_common(request)
    if request.raw and (request.template or request.system or request.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    refusals = {
        "suffix": (request.suffix, f"'{request.model}' does not support insert (a suffix after the response)."),
        "template": (request.template, "A template override is not supported: the model's own chat template is used."),
        "context": (
            request.context,
            "'context' (an earlier /api/generate's tokens) is not supported: send the conversation to /api/chat.",
        ),
        "images": (request.images, f"'{request.model}' does not support images: only text is supported."),
    }
    for param, (value, message) in refusals.items():
        if value:
            raise UnsupportedParameter(message, param=param)
    return request


def decode_show(body: bytes) -> str:
    """The model name an ``/api/show`` request asks about."""
    request = decode_body(_SHOW, body)
    name = request.model or request.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    return name


def _check_common(request: GenerationRequest) -> None:
    if not request.model:
        raise InvalidRequest("model is required", param="model")
    if isinstance(request.format, str) and request.format not in ("", "json"):
        raise InvalidRequest(f'invalid format {request.format!r}: use "json" or a JSON schema', param="format")
    if request.debug_render_only:
        raise UnsupportedParameter("'_debug_render_only' is not supported.", param="_debug_render_only")
    for name in ("truncate", "shift"):
        if getattr(request, name):
            raise UnsupportedParameter(
                f"'{name}: true' is not supported: a prompt longer than the model's context is refused, "
                "never cut, and a generation ends at the context's end. Leave it unset or false.",
                param=name,
            )
    keep_alive_seconds(request.keep_alive)  # refused here, before anything is loaded


def json_schema(format: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema ``format`` asks for: ``"json"`` is any JSON object, as in Ollama."""
    if isinstance(format, dict):
        return format
    return {"type": "object"} if format == "json" else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: float | str | None) -> float | None:
    """``keep_alive`` in seconds: a number of seconds or a Go duration ("5m", "1h30m", "0");
    negative means forever (-1). None if the request has none."""
    if value is None:
        return None
    seconds = _parse_duration(value) if isinstance(value, str) else value
    if math.isnan(seconds):
        raise InvalidRequest("Invalid value for 'keep_alive': not a number.", param="keep_alive")
    return -1.0 if seconds < 0 or math.isinf(seconds) else float(seconds)


def _parse_duration(text: str) -> float:
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    try:
        return sign * float(body)  # a bare number: seconds (Go wants a unit; clients send "300")
    except ValueError:
        pass
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise InvalidRequest(
            f'Invalid value for \'keep_alive\': {text!r} is not a duration (e.g. "5m", "1h30m", 300, -1).',
            param="keep_alive",
        )
    return sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
