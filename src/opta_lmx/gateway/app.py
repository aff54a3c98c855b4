"""The Starlette application: every dialect's routes, and the errors no route answered."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway import anthropic, openai, rerank
from opta_lmx.gateway.endpoints import openai_error
from opta_lmx.gateway.state import GatewayState


async def _on_http_error(request: Request, exc: Exception) -> Response:
    # No route, or not this method: the OpenAI shape, which most clients of a local server read.
    assert isinstance(exc, HTTPException)
    error = InvalidRequest(exc.detail or "request not allowed")
    error.status = exc.status_code
    error.code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return openai_error(error)


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
    routes = [*openai.routes(), *anthropic.routes(), *rerank.routes(), Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _on_http_error})
    app.state.gateway = state
    return app
