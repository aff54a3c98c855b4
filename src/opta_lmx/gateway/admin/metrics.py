"""``GET /metrics`` (Prometheus's text format) and ``GET /admin/metrics.json`` (a summary per
model), from one registry: both read the supervisor's figures first (``metrics/live.py``)."""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.gateway.admin.control import json_response, state_of
from opta_lmx.gateway.metrics import live
from opta_lmx.gateway.metrics.summary import summary


async def prometheus(request: Request) -> Response:
    state = state_of(request)
    text = state.metrics.render(await live.gather(state))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def metrics_json(request: Request) -> Response:
    state = state_of(request)
    metrics = state.metrics
    metrics.live.figures = await live.gather(state)
    return json_response(summary(metrics.registry.collect()))
