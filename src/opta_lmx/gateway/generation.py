"""The path every generating route shares: load, send, await acceptance, then stream or collect.

Errors before the first byte are HTTP statuses; after it, a final error event in the stream
(Starlette's rule). A client that goes away cancels its generations on the worker. A request
with several choices (``n``, or a list of prompts) sends one ``Generate`` per choice; the worker
batches them.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from opta_lmx.errors import ApiError, GenerationTimeout, QueueFull, WorkerUnavailable, failure_to_error
from opta_lmx.gateway.link import Pending, Reservation
from opta_lmx.gateway.metrics.requests import note_error, note_jobs, note_pendings
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import Embed, Failed, Finished, FromWorker, Generate, Started, TokenChunk, TokenLogprobs, ToolCall



class Job(NamedTuple):
    """One choice to generate: the resolved model and the ``Generate`` fields (no request id)."""

    model: str
    fields: dict[str, Any]


class Collected(NamedTuple):
    text: str
    finished: Finished
    logprobs: list[TokenLogprobs] | None
    reasoning: str = ""
    tool_calls: list[ToolCall] = []


# Times a request refused by a draining worker is sent again, to the model loaded once more.
_DRAIN_RETRIES = 2
# How long the supervisor's STOPPING event may take to follow a draining worker's refusal.
_DRAIN_NOTICE_SECONDS = 5.0


async def prepare(state: GatewayState, job: Job, reservation: Reservation | None = None) -> Pending:
    """Load the model if needed, send the request, and wait for the worker to accept it."""
    pending, first = await first_reply(state, job, reservation=reservation)
    if not isinstance(first, Started):
        state.link.cancel(pending)
        raise failure_to_error("engine_error", f"unexpected first message {type(first).__name__}")
    pending.started = first
    return pending


async def first_reply(
    state: GatewayState, job: Job, kind: type[Generate | Embed] = Generate, reservation: Reservation | None = None
) -> tuple[Pending, FromWorker | None]:
    """Load the model if needed, send ``job`` as a ``kind``, and the worker's first reply to it
    (a ``Generate``'s ``Started``; an ``Embed``'s ``Embeddings``); a failure is raised.

    A worker that began to drain (evicted, unloaded, swapped) as the request reached it refuses
    it untouched; the request then waits for the drain and goes to the model loaded again.
    ``reservation`` (from ``admit``) is its place in the model's count until it is sent."""
    settings = state.config
    try:
        for attempt in range(_DRAIN_RETRIES + 1):
            status = await state.models.ready(job.model, settings.server.ready_wait, settings.supervisor.load_timeout)
            pending = await state.link.open(status.identity, kind, reservation, **job.fields)
            try:
                return pending, await next_message(state, pending)
            except WorkerUnavailable:
                state.link.cancel(pending)
                if attempt == _DRAIN_RETRIES:
                    raise
                await state.models.wait_draining(job.model, status.identity, _DRAIN_NOTICE_SECONDS)
            except BaseException:
                state.link.cancel(pending)
                raise
        raise AssertionError("unreachable")
    finally:
        if reservation is not None:  # never sent (no load, a timeout, the client left)
            state.link.release(reservation)


def admit(state: GatewayState, jobs: list[Job]) -> list[Reservation]:
    """Room for the jobs in their model's queue (a place for each, counted from now, also while
    the model loads), or ``QueueFull`` (429 with Retry-After)."""
    model = state.config.model(jobs[0].model)
    if model is None:  # removed by a reload since it was resolved: the load path says so
        return [Reservation(jobs[0].model, held=False) for _ in jobs]
    limit = state.config.request_limit(model)
    if state.link.in_flight_for(model.name) + len(jobs) > limit:
        raise QueueFull(
            f"The model '{model.name}' has {limit} requests in flight or waiting, its limit "
            "(batch_size + max_queued); retry shortly."
        )
    return state.link.reserve(model.name, len(jobs))


async def prepare_all(state: GatewayState, jobs: list[Job]) -> list[Pending]:
    """Every choice accepted, or none: the ones already sent are cancelled on a failure."""
    note_jobs(jobs[0].model, bool(jobs[0].fields.get("count_only")))
    reservations = admit(state, jobs)
    try:
        if len(jobs) == 1:
            pendings = [await prepare(state, jobs[0], reservations[0])]
            note_pendings(pendings)
            return pendings
        results = await asyncio.gather(*(prepare(state, j, r) for j, r in zip(jobs, reservations)), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for result in results:
                if isinstance(result, Pending):
                    state.link.cancel(result)
            raise failure
        note_pendings(results)  # type: ignore[arg-type]
        return list(results)  # type: ignore[arg-type]
    finally:
        for reservation in reservations:  # a choice cancelled before it began holds its own
            state.link.release(reservation)


async def next_message(state: GatewayState, pending: Pending, keepalive: float | None = None) -> FromWorker | None:
    """The next worker message; a terminal Failed or a gateway-side error is raised. With
    ``keepalive``, None after that many seconds without one (the stream says something to keep
    its client from timing out); the inter-token timeout counts on across those."""
    try:
        message = pending.queue.get_nowait()  # under load one is often waiting: no timer to arm
    except asyncio.QueueEmpty:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = state.config.server.inter_token_timeout
        left = limit - (now - pending.silent_since) if pending.silent_since is not None else limit
        try:
            async with asyncio.timeout(min(left, keepalive) if keepalive else left):
                message = await pending.queue.get()
        except TimeoutError:
            if keepalive and loop.time() - (pending.silent_since or now) < limit:
                if pending.silent_since is None:
                    pending.silent_since = now
                return None
            raise GenerationTimeout(f"No output from the model for {limit:g}s.") from None
    pending.silent_since = None
    if isinstance(message, ApiError):
        raise message
    if isinstance(message, Failed):
        raise failure_to_error(message.code, message.message)
    if not pending.first_at and type(message) is TokenChunk:  # for the metrics
        pending.first_at = time.monotonic()
    elif type(message) is Finished:
        pending.finished, pending.ended_at = message, time.monotonic()
    return message


Item = tuple[int, TokenChunk | Finished | None]


async def merged(state: GatewayState, pendings: list[Pending], keepalive: float | None = None) -> AsyncIterator[Item]:
    """Each choice's chunks and its Finished, tagged with the choice's index, as they come; with
    ``keepalive``, ``(index, None)`` after that many seconds without any (see ``next_message``).

    Raises the first error of any choice; all choices are cancelled on the way out.
    """
    try:
        if len(pendings) == 1:  # the common case, without a task per choice
            while True:
                message = await next_message(state, pendings[0], keepalive)
                if message is None or isinstance(message, (TokenChunk, Finished)):
                    yield 0, message
                    if isinstance(message, Finished):
                        return
        async for item in _interleave(state, pendings, keepalive):
            yield item
    except ApiError as error:
        note_error(error)
        raise
    finally:
        for pending in pendings:
            state.link.cancel(pending)


async def _interleave(state: GatewayState, pendings: list[Pending], keepalive: float | None) -> AsyncIterator[Item]:
    out: asyncio.Queue[Item | ApiError] = asyncio.Queue()

    async def pump(index: int, pending: Pending) -> None:
        try:
            while True:
                message = await next_message(state, pending, keepalive)
                if message is None or isinstance(message, (TokenChunk, Finished)):
                    out.put_nowait((index, message))
                    if isinstance(message, Finished):
                        return
        except ApiError as error:
            out.put_nowait(error)

    pumps = [asyncio.ensure_future(pump(i, p)) for i, p in enumerate(pendings)]
    try:
        remaining = len(pendings)
        while remaining:
            item = await out.get()
            if isinstance(item, ApiError):
                raise item
            if isinstance(item[1], Finished):
                remaining -= 1
            yield item
    finally:
        for task in pumps:
            task.cancel()


async def collect_all(state: GatewayState, pendings: list[Pending]) -> list[Collected]:
    parts: list[list[str]] = [[] for _ in pendings]
    logprobs: list[list[TokenLogprobs]] = [[] for _ in pendings]
    reasoning: list[list[str]] = [[] for _ in pendings]
    calls: list[list[ToolCall]] = [[] for _ in pendings]
    finished: list[Finished | None] = [None] * len(pendings)
    async with aclosing(merged(state, pendings)) as messages:  # closed (cancelling) even if cancelled
        async for index, message in messages:
            if isinstance(message, TokenChunk):
                parts[index].append(message.text)
                reasoning[index].append(message.reasoning)
                calls[index].extend(message.tool_calls)
                if message.logprobs:
                    logprobs[index].extend(message.logprobs)
            elif message is not None:
                finished[index] = message
    return [
        Collected("".join(p), f, lp, "".join(r), c)
        for p, f, lp, r, c in zip(parts, finished, logprobs, reasoning, calls)
        if f is not None
    ]


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any | None:
    """``work``'s result, or None (it is cancelled) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class StreamFormat(NamedTuple):
    """How a dialect streams: its media type, what it sends to keep a quiet stream alive (None:
    nothing, so a stream for a model still loading waits for it before answering), and its
    terminal error line."""

    media_type: str
    keepalive: bytes | None
    error_line: Callable[[ApiError], bytes]


# Seconds without output before a stream sends its keep-alive line (a cold load, a long prefill).
KEEPALIVE_SECONDS = 2.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Lines = Callable[[list[Pending]], AsyncIterator[bytes]]


async def respond(
    request: Request,
    state: GatewayState,
    jobs: list[Job],
    running: bool,
    stream: Lines | None,
    whole: Callable[[list[Collected]], Any],
    form: StreamFormat,
) -> Response:
    """A route's answer: a stream (``stream`` shapes its lines) or one JSON object (``whole``
    shapes it from every choice's collected output); 499 if the client left."""
    if stream is not None:
        if not running and form.keepalive is not None:
            # A load can take long: answer now and keep the connection warm meanwhile.
            lines = after_load(state, jobs, stream, form)
        else:
            lines = stream(await prepare_all(state, jobs))
        return StreamingResponse(lines, media_type=form.media_type, headers=STREAM_HEADERS)
    pendings = await prepare_all(state, jobs)
    collected = await unless_disconnected(request, collect_all(state, pendings))
    if collected is None:
        return Response(status_code=499)
    return JSONResponse(whole(collected))


async def after_load(state: GatewayState, jobs: list[Job], stream: Lines, form: StreamFormat) -> AsyncIterator[bytes]:
    """For a model that is not loaded yet: keep-alive lines while it loads, then the stream."""
    assert form.keepalive is not None
    loaded: list[list[Pending]] = []
    try:
        async for line in load_with_keepalives(state, jobs, form.keepalive, loaded):
            yield line
    except ApiError as error:
        yield form.error_line(error)
        return
    async for line in stream(loaded[0]):
        yield line


async def load_with_keepalives(state: GatewayState, jobs: list[Job], keepalive: bytes, out: list[list[Pending]]) -> AsyncIterator[bytes]:
    """``keepalive`` every ``KEEPALIVE_SECONDS`` while the model loads and the worker accepts the
    jobs; then the accepted requests are appended to ``out``. Raises (and counts) what
    ``prepare_all`` raises; requests accepted after the client left are cancelled."""
    preparing = asyncio.ensure_future(prepare_all(state, jobs))
    try:
        while not (await asyncio.wait({preparing}, timeout=KEEPALIVE_SECONDS))[0]:
            yield keepalive
        try:
            out.append(preparing.result())
        except ApiError as error:
            note_error(error)
            raise
    finally:
        if not preparing.done():
            preparing.cancel()
        elif not out and not preparing.cancelled() and preparing.exception() is None:
            for pending in preparing.result():  # accepted, but the client left: stop them
                state.link.cancel(pending)
