"""``GET /admin/events``: the supervisor's status events as server-sent events.

Each client gets the current status of every model first, then every change, as
``event: model_status`` with ``id:`` the supervisor's sequence number and the ``ModelStatus`` as
JSON (a removed model comes with ``"removed": true``). A client that reads slowly cannot make the
gateway hold more than one waiting status per model for it: a newer status of a model replaces
one not sent yet. The latest state is never lost, and what happened in between stays in it
(``restarts``, ``stops``, ``last_exit``; ``gateway/status_feed.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from opta_lmx.gateway.sse import named_event
from opta_lmx.proto import ModelStatus

if TYPE_CHECKING:
    from opta_lmx.gateway.state import GatewayState

# An SSE comment this often keeps proxies and clients from timing out a quiet stream.
KEEPALIVE_SECONDS = 15.0
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def events(request: Request) -> Response:
    return StreamingResponse(_lines(request.app.state.gateway), media_type="text/event-stream", headers=_HEADERS)


def _event(status: ModelStatus) -> bytes:
    return f"id: {status.seq}\n".encode() + named_event("model_status", status)


async def _lines(state: GatewayState) -> AsyncIterator[bytes]:
    feed = state.feed
    subscription = feed.subscribe()  # before the snapshot: nothing falls between the two
    sent: dict[str, int] = {}  # the seq last sent per model; an older or equal one is not sent again
    try:
        for status in state.models.statuses():
            sent[status.name] = status.seq
            yield _event(status)
        while not subscription.closed:
            statuses = await subscription.next(KEEPALIVE_SECONDS)
            if statuses is None:
                if not subscription.closed:
                    yield b": keep-alive\n\n"
                continue
            for status in statuses:
                if status.seq > sent.get(status.name, 0):
                    sent[status.name] = status.seq
                    yield _event(status)
    finally:
        feed.unsubscribe(subscription)
