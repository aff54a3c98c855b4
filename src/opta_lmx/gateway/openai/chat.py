"""POST /v1/chat/completions: validate, resolve the model and preset, generate, shape the reply."""

from __future__ import annotations

import logging
from contextlib import aclosing
from functools import partial
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.config import Preset
from opta_lmx.errors import ApiError
from opta_lmx.gateway.generation import KEEPALIVE_SECONDS, merged, respond
from opta_lmx.gateway.jobs import choices, constraints, resolve, sampling, thinking
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.openai.chat_replies import KEEPALIVE_LINE, STREAM, ChatStream, chat_completion, error_line
from opta_lmx.gateway.openai.requests import (
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


async def chat_completions(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_chat_request(await request.body())
    target = resolve(state, body.model)
    wanted = None if body.reasoning_effort is None else body.reasoning_effort != "none"
    fields = {"messages": _messages(body), **_constraints(body), **thinking(wanted)}
    jobs = choices(target.model.name, fields, sampling_params(body, target.preset), body.n)
    lines = None
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        lines = partial(_stream, state, stream=ChatStream(target.model.name, include_usage))
    whole = partial(chat_completion, target.model.name, with_logprobs=body.logprobs is True)
    return await respond(request, state, jobs, target.running, lines, whole, STREAM)


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


def _json_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return response_format.schema or {"type": "object"}
    schema = response_format.json_schema.schema if response_format.json_schema else None
    return schema if schema is not None else {"type": "object"}


def _constraints(body: ChatCompletionRequest) -> dict[str, Any]:
    """The ``Generate`` fields for ``response_format`` and the tools."""
    tools = [Tool(t.function.name, t.function.description, t.function.parameters or {}) for t in body.tools or ()]
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    mode = choice if isinstance(choice, str) else "auto"
    return constraints(_json_schema(body), tools, mode, named, body.parallel_tool_calls is not False)


def sampling_params(body: GenerationFields, preset: Preset) -> SamplingParams:
    """The request's sampling values over its model's preset. ``body`` is a chat or a text
    completion request (they share these fields)."""
    return sampling(
        preset,
        max_tokens=getattr(body, "max_completion_tokens", None) or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop_list(body.stop) if body.stop is not None else None,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=logit_bias_ids(body.logit_bias or {}),
        logprobs=body.logprobs is True,  # chat's flag (completions' integer form is refused)
        top_logprobs=getattr(body, "top_logprobs", None),
    )


async def _stream(state: GatewayState, pendings: list[Pending], stream: ChatStream) -> AsyncIterator[bytes]:
    try:
        for index in range(len(pendings)):
            yield stream.role_line(index)
        async with aclosing(merged(state, pendings, KEEPALIVE_SECONDS)) as messages:
            async for index, message in messages:
                if message is None:
                    yield KEEPALIVE_LINE
                elif isinstance(message, TokenChunk):
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
