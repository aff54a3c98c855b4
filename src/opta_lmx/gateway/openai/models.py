"""GET /v1/models: every configured model and alias, in OpenAI's list shape."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opta_lmx.gateway.state import GatewayState

_STARTED = int(time.time())


async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    names = [name for model in state.config.models for name in (model.name, *model.aliases)]
    data = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "opta-lmx"} for name in names]
    return JSONResponse({"object": "list", "data": data})
