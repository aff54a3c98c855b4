"""The Starlette application: routes and the one place API errors become HTTP responses."""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opta_lmx.errors import ApiError, InvalidRequest
from opta_lmx.gateway.chat import chat_completions
from opta_lmx.gateway.state import GatewayState
from opta_lmx.gateway.text_completions import completions

log = logging.getLogger("opta_lmx.gateway")

_STARTED = int(time.time())


def api_error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = InvalidRequest(exc.detail or "request not allowed")
    error.status = exc.status_code
    error.code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return api_error_response(error)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug: log the traceback here, give the client the error shape, never a bare 500 page.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    error = ApiError(f"Internal error: {type(exc).__name__}. The server log has the details.")
    return api_error_response(error)


async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    data = []
    for model in state.config.models:
        status = state.models.get(model.name)
        loaded = "loaded" if status is not None and status.state == "RUNNING" else "not-loaded"  # LM Studio's words
        for name in (model.name, *model.aliases):
            data.append({"id": name, "object": "model", "created": _STARTED, "owned_by": "opta-lmx", "state": loaded})
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    models = {}
    for model in state.config.models:
        status = state.models.get(model.name)
        models[model.name] = status.state if status else "UNKNOWN"
    ok = not state.shutting_down
    body = {"status": "ok" if ok else "shutting_down", "models": models}
    return JSONResponse(body, status_code=200 if ok else 503)


def create_app(state: GatewayState) -> Starlette:
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    app.state.gateway = state
    return app
