"""GET /v1/models: every model served (configured, and found on disk) and alias, in OpenAI's list shape."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opta_lmx.gateway.state import GatewayState

_STARTED = int(time.time())


async def list_models(request: Request) -> Response:
    """Each entry says whether the model is loaded now, in LM Studio's words."""
    state: GatewayState = request.app.state.gateway
    data = []
    for model in state.config.models:
        status = state.models.get(model.name)
        loaded = "loaded" if status is not None and status.state == "RUNNING" else "not-loaded"
        for name in (model.name, *model.aliases):
            data.append({"id": name, "object": "model", "created": _STARTED, "owned_by": "opta-lmx", "state": loaded})
    return JSONResponse({"object": "list", "data": data})
