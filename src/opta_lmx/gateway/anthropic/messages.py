"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API)."""

from __future__ import annotations

import logging
from contextlib import aclosing
from functools import partial
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.errors import ApiError
from opta_lmx.gateway.anthropic.errors import error_event
from opta_lmx.gateway.anthropic.replies import PING, STREAM, MessageStream, message
from opta_lmx.gateway.anthropic.requests import decode_count_request, decode_messages_request
from opta_lmx.gateway.anthropic.translate import generate_fields, sampling_params, shows_thinking
from opta_lmx.gateway.generation import KEEPALIVE_SECONDS, Collected, merged, respond
from opta_lmx.gateway.jobs import choices, resolve
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import Finished, SamplingParams, TokenChunk

log = logging.getLogger("opta_lmx.gateway")


async def create_message(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_messages_request(await request.body())
    target = resolve(state, body.model)
    jobs = choices(target.model.name, generate_fields(body), sampling_params(body, target.preset))
    thinking = shows_thinking(body)
    lines = partial(_stream, state, stream=MessageStream(body.model, thinking)) if body.stream else None
    whole = partial(_whole, body.model, thinking)
    return await respond(request, state, jobs, target.running, lines, whole, STREAM)


def _whole(model: str, thinking: bool, collected: list[Collected]) -> dict[str, Any]:
    return message(model, collected[0], thinking)


async def count_tokens(request: Request) -> Response:
    """The prompt's length in the model's own template and tokenizer; nothing is generated."""
    state: GatewayState = request.app.state.gateway
    body = decode_count_request(await request.body())
    target = resolve(state, body.model)
    jobs = choices(target.model.name, {**generate_fields(body), "count_only": True}, SamplingParams())
    return await respond(request, state, jobs, target.running, None, _count, STREAM)


def _count(collected: list[Collected]) -> dict[str, int]:
    return {"input_tokens": collected[0].finished.prompt_tokens}


async def _stream(state: GatewayState, pendings: list[Pending], stream: MessageStream) -> AsyncIterator[bytes]:
    (pending,) = pendings
    assert pending.started is not None
    yield stream.start(pending.started)
    try:
        async with aclosing(merged(state, pendings, KEEPALIVE_SECONDS)) as messages:
            async for _, item in messages:
                if item is None:
                    yield PING
                elif isinstance(item, TokenChunk):
                    yield stream.chunk(item)
                elif isinstance(item, Finished):
                    yield stream.finish(item)
    except ApiError as error:
        log.warning("stream %s ended with %s: %s", stream.id, error.code, error.message)
        yield error_event(error)
