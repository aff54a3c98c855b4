"""``POST /v1/responses`` (streaming and not), ``GET`` and ``DELETE /v1/responses/{id}``.

A response goes through the shared generation path (``prepare_all``, ``merged``): one
``Generate``, the worker's chunks turned into items and events by ``OutputWriter``. A stream for
a model that is RUNNING starts after the worker accepted the request, so errors known before
generation (context too long, a grammar that does not compile) are HTTP errors; for a model that
must load first it starts at once with ``response.created`` and keep-alive comments while it
loads, and a failure then is ``response.failed``.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from opta_lmx.errors import ApiError, InvalidRequest
from opta_lmx.gateway.generation import KEEPALIVE_SECONDS, STREAM_HEADERS, Job, load_with_keepalives, merged, prepare_all, unless_disconnected
from opta_lmx.gateway.jobs import choices, resolve, sampling
from opta_lmx.gateway.link import Pending
from opta_lmx.gateway.responses.events import KEEPALIVE_LINE, OutputWriter
from opta_lmx.gateway.responses.objects import Envelope
from opta_lmx.gateway.responses.items import input_items
from opta_lmx.gateway.responses.requests import LOGPROBS, decode_request
from opta_lmx.gateway.responses.store import ResponseStore
from opta_lmx.gateway.responses.translate import item_messages, plan
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import ChatMessage, TokenChunk

log = logging.getLogger("opta_lmx.gateway")

Keep = Callable[[OutputWriter], None]


class ResponsesApi:
    """The routes' endpoints, over one store of recent responses."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def create_response(self, request: Request) -> Response:
        state: GatewayState = request.app.state.gateway
        parsed = decode_request(await request.body())
        body = parsed.body
        history: list[ChatMessage] = []
        if body.previous_response_id is not None:
            history = self.store.get(body.previous_response_id, param="previous_response_id").conversation
        target = resolve(state, body.model)
        planned = plan(parsed, history)
        with_logprobs = LOGPROBS in (body.include or ())
        params = sampling(
            target.preset,
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            logprobs=with_logprobs,
            top_logprobs=body.top_logprobs if with_logprobs else None,
        )
        jobs = choices(target.model.name, planned.fields, params)
        writer = OutputWriter(Envelope(parsed, target.model.name, params), planned.tools, planned.forced_custom, body.stream)

        def keep(done: OutputWriter) -> None:
            if body.store and done.final is not None and done.final["status"] != "failed":
                output = item_messages(input_items(done.final["output"]))
                self.store.put(done.final, planned.conversation + output)

        if body.stream:
            pendings = await prepare_all(state, jobs) if target.running else None
            lines = _events(state, jobs, pendings, writer, keep)
            return StreamingResponse(lines, media_type="text/event-stream", headers=STREAM_HEADERS)
        pendings = await prepare_all(state, jobs)
        done = await unless_disconnected(request, _collect(state, pendings, writer))
        if done is None:
            return Response(status_code=499)
        keep(writer)
        return JSONResponse(writer.final)

    async def retrieve_response(self, request: Request) -> Response:
        if request.query_params.get("stream", "false").lower() not in ("false", "0"):
            raise InvalidRequest("Streaming a stored response again is not supported: omit 'stream'.", param="stream")
        return JSONResponse(self.store.get(request.path_params["response_id"]).response)

    async def delete_response(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        self.store.get(response_id)  # 404 if it is not kept
        self.store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})


async def _collect(state: GatewayState, pendings: list[Pending], writer: OutputWriter) -> OutputWriter:
    async with aclosing(merged(state, pendings)) as messages:  # closed (cancelling) even if cancelled
        async for _, message in messages:
            if isinstance(message, TokenChunk):
                writer.feed(message)
            elif message is not None:
                writer.finish(message)
    return writer


async def _events(
    state: GatewayState, jobs: list[Job], pendings: list[Pending] | None, writer: OutputWriter, keep: Keep
) -> AsyncIterator[bytes]:
    yield writer.start()
    try:
        if pendings is None:
            loading: list[list[Pending]] = []
            async for line in load_with_keepalives(state, jobs, KEEPALIVE_LINE, loading):
                yield line
            pendings = loading[0]
        async with aclosing(merged(state, pendings, KEEPALIVE_SECONDS)) as messages:
            async for _, message in messages:
                if message is None:
                    yield KEEPALIVE_LINE
                elif isinstance(message, TokenChunk):
                    if events := writer.feed(message):
                        yield events
                else:
                    last = writer.finish(message)
                    keep(writer)  # before the last yield: a client that leaves now still stored it
                    yield last
    except ApiError as error:
        log.warning("response %s ended with %s: %s", writer.envelope.id, error.code, error.message)
        yield writer.fail(error)
