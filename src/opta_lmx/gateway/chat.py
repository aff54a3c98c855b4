"""POST /v1/chat/completions: validate, resolve the model, forward, stream or collect.

Errors before the first byte are HTTP statuses; after it, a final error event in the stream
(Starlette's rule). A client that goes away cancels its generation on the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from opta_lmx.config import Preset
from opta_lmx.errors import (
    ApiError,
    GenerationTimeout,
    ModelNotFound,
    ServerShuttingDown,
    failure_to_error,
)
from opta_lmx.gateway.completions import ChatStream, chat_completion, error_line
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.schemas import (
    ChatCompletionRequest,
    decode_chat_request,
    logit_bias_ids,
    message_text,
    stop_list,
)
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import ChatMessage, Failed, Finished, FromWorker, SamplingParams, Started, TokenChunk

log = logging.getLogger("opta_lmx.gateway")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_NO_PRESET = Preset()
_LOADING_KEEPALIVE = 2.0


async def chat_completions(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    if state.shutting_down:
        raise ServerShuttingDown("The server is shutting down; retry shortly.")
    body = decode_chat_request(await request.body())
    model = state.config.model(body.model)
    status = state.models.get(model.name) if model is not None else None
    if model is None or status is None:
        raise ModelNotFound(f"The model '{body.model}' does not exist.", param="model")
    preset = state.config.presets.get(model.preset) if model.preset else None
    job = _Job(model.name, _messages(body), _params(body, preset or _NO_PRESET))
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        stream = ChatStream(model.name, include_usage)
        if status.state != "RUNNING":
            # A load can take long: answer now and keep the connection warm with SSE comments.
            return _sse(_stream_after_load(state, job, stream))
        pending = await _prepare(state, job)
        return _sse(_stream(state, pending, stream))
    pending = await _prepare(state, job)
    try:
        return await _collect_unless_disconnected(request, state, pending, model.name)
    except BaseException:
        state.link.cancel(pending)
        raise


def _sse(lines: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers=_SSE_HEADERS)


class _Job(NamedTuple):
    """What is sent to a worker: the resolved model name and the request in wire form."""

    model: str
    messages: list[ChatMessage]
    params: SamplingParams


async def _prepare(state: GatewayState, job: _Job) -> Pending:
    """Load the model if needed, send the request, and wait for the worker to accept it."""
    settings = state.config
    status = await state.models.ready(job.model, settings.server.ready_wait, settings.supervisor.load_timeout)
    pending = await state.link.open(status.identity, messages=job.messages, params=job.params)
    try:
        first = await _next(state, pending)
        if not isinstance(first, Started):
            raise failure_to_error("engine_error", f"unexpected first message {type(first).__name__}")
    except BaseException:
        state.link.cancel(pending)
        raise
    return pending


async def _stream_after_load(state: GatewayState, job: _Job, stream: ChatStream) -> AsyncIterator[bytes]:
    preparing = asyncio.ensure_future(_prepare(state, job))
    try:
        while True:
            done, _ = await asyncio.wait({preparing}, timeout=_LOADING_KEEPALIVE)
            if done:
                break
            yield b": loading model\n\n"
        pending = preparing.result()
    except ApiError as error:
        yield error_line(error)
        return
    finally:
        if not preparing.done():
            preparing.cancel()
    async for line in _stream(state, pending, stream):
        yield line


def _messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    # "developer" is the newer name of "system"; templates know only the latter.
    return [
        ChatMessage(role="system" if m.role == "developer" else m.role, content=message_text(m))
        for m in body.messages
    ]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _params(body: ChatCompletionRequest, preset: Preset) -> SamplingParams:
    """The request's sampling values; where it has none, the model's preset's; else the API's."""
    return SamplingParams(
        max_tokens=_first(body.max_completion_tokens, body.max_tokens, preset.max_tokens),
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
    )


async def _next(state: GatewayState, pending: Pending) -> FromWorker:
    """The next worker message; a terminal Failed or a gateway-side error is raised."""
    try:
        async with asyncio.timeout(state.config.server.inter_token_timeout):
            message = await pending.queue.get()
    except TimeoutError:
        raise GenerationTimeout(
            f"No output from the model for {state.config.server.inter_token_timeout:g}s."
        ) from None
    if isinstance(message, ApiError):
        raise message
    if isinstance(message, Failed):
        raise failure_to_error(message.code, message.message)
    return message


async def _stream(state: GatewayState, pending: Pending, stream: ChatStream) -> AsyncIterator[bytes]:
    try:
        yield stream.role_line()
        while True:
            message = await _next(state, pending)
            if isinstance(message, TokenChunk):
                yield stream.chunk_line(message.text)
            elif isinstance(message, Finished):
                yield stream.finish_lines(message)
                return
    except ApiError as error:
        log.warning("stream %s ended with %s: %s", stream.id, error.code, error.message)
        yield error_line(error)
    finally:
        # Also reached when the client disconnects (the generator is cancelled or closed).
        state.link.cancel(pending)


async def _collect(state: GatewayState, pending: Pending, model: str) -> Response:
    parts: list[str] = []
    while True:
        message = await _next(state, pending)
        if isinstance(message, TokenChunk):
            parts.append(message.text)
        elif isinstance(message, Finished):
            return JSONResponse(chat_completion(model, "".join(parts), message))


async def _collect_unless_disconnected(
    request: Request, state: GatewayState, pending: Pending, model: str
) -> Response:
    """Collect the whole answer, but stop (and cancel on the worker) if the client leaves."""
    collect = asyncio.ensure_future(_collect(state, pending, model))
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
    if collect.done() and not collect.cancelled():
        return collect.result()
    state.link.cancel(pending)
    return Response(status_code=499)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
