"""What one HTTP request did, noted as it happens and counted once when it ends.

``RequestMetrics`` (ASGI middleware) opens a ``RequestRecord`` for every HTTP request and makes
it the current one (a context variable: the tasks a request starts inherit it); the shared
generation path notes the resolved model, its generations and a stream's late error on it
(``note_jobs``, ``note_pendings``, ``note_error``: no-ops outside a request). When the response
ends (its last byte, or the client leaving), the record goes to ``GatewayMetrics.observe_request``.
Nothing is observed per token: the worker's ``Finished`` carries the counts, and the pending
request keeps the times of its first token and of its end.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opta_lmx.errors import ApiError

if TYPE_CHECKING:
    from opta_lmx.gateway.link import Pending
    from opta_lmx.gateway.metrics.registry import GatewayMetrics

# The status counted for a request whose client left before its response was complete
# (nginx's convention; the generation path answers a non-streamed one so too).
CLIENT_CLOSED = 499


class RequestRecord:
    """``arrived`` (monotonic seconds); ``model``: the model the request resolved to ("" if it
    resolved to none); ``pendings``: its generations, one per choice; ``error``: an error that
    ended a response after its headers were sent (the stream's terminal error event)."""

    __slots__ = ("arrived", "model", "pendings", "error", "count_only", "disconnected")

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.model = ""
        self.pendings: list[Pending] = []
        self.error: ApiError | None = None
        self.count_only = False
        self.disconnected = False


_current: ContextVar[RequestRecord | None] = ContextVar("opta_lmx_request", default=None)


def note_jobs(model: str, count_only: bool) -> None:
    """The request generates with ``model`` (``count_only``: it only counts prompt tokens)."""
    record = _current.get()
    if record is not None:
        record.model = model
        record.count_only = count_only


def note_pendings(pendings: list[Pending]) -> None:
    """The request's generations, accepted by the worker."""
    record = _current.get()
    if record is not None:
        record.pendings.extend(pendings)


def note_error(error: ApiError) -> None:
    """An error that ends the request's generation (streamed ones are sent after a 200)."""
    record = _current.get()
    if record is not None:
        record.error = error


class RequestMetrics:
    """Counts every HTTP request into ``metrics`` when its response ends."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(time.monotonic())
        status = 0
        complete = False

        async def counted_send(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            try:
                await send(message)
            except BaseException:
                record.disconnected = True
                raise

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                record.disconnected = True
            return message

        token = _current.set(record)
        try:
            await self.app(scope, watched_receive, counted_send)
        finally:
            _current.reset(token)
            self.metrics.observe_request(record, scope, _final_status(record, status, complete))


def _final_status(record: RequestRecord, status: int, complete: bool) -> int:
    """The status the client effectively got: a stream's terminal error counts as that error's
    status; a response the client did not wait for counts as 499."""
    if record.disconnected and not complete:
        return CLIENT_CLOSED
    if status == 200 and record.error is not None:
        return record.error.status
    return status or 500
