"""POST /v1/chat/completions: validate, resolve the model and preset, generate, shape the reply."""

from __future__ import annotations

import logging
from contextlib import aclosing
from functools import partial
from typing import Any, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.config import ModelConfig, Preset
from opta_lmx.errors import ApiError, ModelNotFound, ServerShuttingDown
from opta_lmx.gateway.completions import ChatStream, chat_completion, error_line
from opta_lmx.gateway.generation import Job, merged, respond
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.schemas import (
    ChatCompletionRequest,
    GenerationFields,
    NamedToolChoice,
    decode_chat_request,
    logit_bias_ids,
    message_text,
    stop_list,
)
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import ChatMessage, Finished, SamplingParams, TokenChunk, Tool, ToolCall

log = logging.getLogger("opta_lmx.gateway")

_NO_PRESET = Preset()
_json = msgspec.json.Encoder()


def resolve(state: GatewayState, name: str) -> tuple[ModelConfig, Preset, bool]:
    """The model (by name or alias), its preset, and whether its worker is RUNNING now."""
    if state.shutting_down:
        raise ServerShuttingDown("The server is shutting down; retry shortly.")
    model = state.config.model(name)
    status = state.models.get(model.name) if model is not None else None
    if model is None or status is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    preset = state.config.presets.get(model.preset) if model.preset else None
    return model, preset or _NO_PRESET, status.state == "RUNNING"


async def chat_completions(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_chat_request(await request.body())
    model, preset, running = resolve(state, body.model)
    fields = {"messages": _messages(body), **_constraints(body)}
    params = sampling_params(body, preset)
    jobs = [Job(model.name, {**fields, "params": nth_seed(params, i)}) for i in range(body.n)]
    lines = None
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        lines = partial(_stream, state, stream=ChatStream(model.name, include_usage))
    whole = partial(chat_completion, model.name, with_logprobs=body.logprobs is True)
    return await respond(request, state, jobs, running, lines, whole, error_line)


def _messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    # "developer" is the newer name of "system"; templates know only the latter.
    return [
        ChatMessage(
            role="system" if m.role == "developer" else m.role,
            content=message_text(m),
            tool_calls=[ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()],
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in body.messages
    ]


def _constraints(body: ChatCompletionRequest) -> dict[str, Any]:
    """The ``Generate`` fields for ``response_format`` and the tools."""
    fields: dict[str, Any] = {}
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        fields["json_schema"] = '{"type": "object"}'
    elif response_format is not None and response_format.type == "json_schema":
        schema = response_format.json_schema.schema if response_format.json_schema else None
        fields["json_schema"] = _json.encode(schema if schema is not None else {"type": "object"}).decode()
    choice = body.tool_choice
    if not body.tools or choice == "none":  # "none": the model is not told of the tools at all
        return fields
    tools = [Tool(t.function.name, t.function.description, t.function.parameters or {}) for t in body.tools]
    if isinstance(choice, NamedToolChoice):  # one named function: a required call of that one
        tools = [t for t in tools if t.name == choice.function.name]
    fields["tools"] = tools
    fields["tool_choice"] = "required" if choice == "required" or isinstance(choice, NamedToolChoice) else "auto"
    # A named function is one call of it, as OpenAI's forced choice is.
    fields["parallel_tool_calls"] = body.parallel_tool_calls is not False and not isinstance(choice, NamedToolChoice)
    return fields


def nth_seed(params: SamplingParams, index: int) -> SamplingParams:
    """The ``index``-th of n choices: n choices from one seeded request must differ from each
    other, and still be reproducible."""
    if params.seed is None or index == 0:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def sampling_params(body: GenerationFields, preset: Preset) -> SamplingParams:
    """The request's sampling values; where it has none, the model's preset's; else the API's.

    ``body`` is a chat or a text completion request (they share these fields)."""
    return SamplingParams(
        max_tokens=_first(getattr(body, "max_completion_tokens", None), body.max_tokens, preset.max_tokens),
        temperature=_first(body.temperature, preset.temperature, 1.0),
        top_p=_first(body.top_p, preset.top_p, 1.0),
        stop=stop_list(body.stop) if body.stop is not None else list(preset.stop or []),
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=logit_bias_ids(body.logit_bias or {}),
        logprobs=body.logprobs is True,  # chat's flag (completions' integer form is refused)
        top_logprobs=getattr(body, "top_logprobs", None) or 0,
    )


async def _stream(state: GatewayState, pendings: list[Pending], stream: ChatStream) -> AsyncIterator[bytes]:
    try:
        for index in range(len(pendings)):
            yield stream.role_line(index)
        async with aclosing(merged(state, pendings)) as messages:
            async for index, message in messages:
                if isinstance(message, TokenChunk):
                    if message.reasoning or message.logprobs is not None or message.tool_calls:
                        yield stream.delta_line(message, index)
                    elif index == 0:
                        yield stream.chunk_line(message.text)
                    else:
                        yield stream.delta_line(message, index)
                elif isinstance(message, Finished):
                    yield stream.finish_line(message, index)
        yield stream.end_lines()
    except ApiError as error:
        log.warning("stream %s ended with %s: %s", stream.id, error.code, error.message)
        yield error_line(error)
