"""The Starlette application: every dialect's routes, and the errors no route answered."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opta_lmx.config import ServerConfig
from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway import admin, anthropic, ollama, openai, rerank, responses
from opta_lmx.gateway.anthropic.errors import error_response as anthropic_error
from opta_lmx.gateway.endpoints import openai_error
from opta_lmx.gateway.limits import BodyLimit
from opta_lmx.gateway.metrics.registry import GatewayMetrics, dialect_of
from opta_lmx.gateway.metrics.requests import RequestMetrics
from opta_lmx.gateway.openapi import openapi_json
from opta_lmx.gateway.state import GatewayState


_ERROR_SHAPES = {"ollama": ollama.ollama_error, "anthropic": anthropic_error}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """No route, or not this method: the shape of the dialect the path belongs to
    (``metrics.registry.dialect_of``, which labels its metrics too; OpenAI's, which most clients
    of a local server read, where no dialect claims it), with the exception's
    headers (a 405 lists the allowed methods in ``Allow``)."""
    assert isinstance(exc, HTTPException)
    error = InvalidRequest(exc.detail or "request not allowed")
    error.status = exc.status_code
    error.code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    render = _ERROR_SHAPES.get(dialect_of(request.url.path), openai_error)
    response = render(error)
    response.headers.update(exc.headers or {})
    return response


async def health(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    models = {}
    for model in state.config.models:
        status = state.models.get(model.name)
        models[model.name] = status.state if status else "UNKNOWN"
    ok = not state.shutting_down
    body = {"status": "ok" if ok else "shutting_down", "models": models}
    return JSONResponse(body, status_code=200 if ok else 503)


def _middleware(server: ServerConfig, metrics: GatewayMetrics) -> list[Middleware]:
    stack = [Middleware(BodyLimit, limit=server.max_body_bytes)]
    if server.cors_origins:  # answers the browsers' preflights; origins not listed get no headers
        stack.insert(0, Middleware(CORSMiddleware, allow_origins=server.cors_origins, allow_methods=["*"], allow_headers=["*"]))
    stack.insert(0, Middleware(RequestMetrics, metrics=metrics))  # outermost: sees every answer
    return stack


def create_app(state: GatewayState) -> Starlette:
    routes = [
        *openai.routes(),
        *anthropic.routes(),
        *ollama.routes(),
        *responses.routes(),
        *rerank.routes(),
        *admin.routes(),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=_middleware(state.config.server, state.metrics),
        exception_handlers={HTTPException: _on_http_error},
    )
    app.state.gateway = state
    return app
