"""Route endpoints guarded by their dialect's error shape.

Each dialect answers errors in its own shape (OpenAI's ``{"error": {...}}``, Anthropic's
``{"type": "error", ...}``, Ollama's ``{"error": "..."}``): ``guarded`` wraps a dialect's endpoint
so that an ``ApiError`` it raises (a refused key among them), or a bug, becomes that dialect's
error response. A bug is
logged with its traceback and answered as an internal error, never a bare 500 page.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opta_lmx.errors import ApiError
from opta_lmx.gateway.access import check_access

log = logging.getLogger("opta_lmx.gateway")

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[ApiError], Response]


def openai_error(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def internal_error(exc: Exception) -> ApiError:
    return ApiError(f"Internal error: {type(exc).__name__}. The server log has the details.")


def guarded(endpoint: Endpoint, render: ErrorResponse, admin: bool = False, body: type | None = None) -> Endpoint:
    """``endpoint`` behind the access checks (``access.py``; ``admin``: the admin key's), with
    its errors in ``render``'s shape. ``body`` is the Struct its request body decodes into (the
    OpenAPI document describes it)."""

    async def guarded_endpoint(request: Request) -> Response:
        try:
            check_access(request, request.app.state.gateway.config.server, admin)
            return await endpoint(request)
        except ApiError as error:
            return render(error)
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return render(internal_error(exc))

    guarded_endpoint.__name__ = endpoint.__name__
    guarded_endpoint.__doc__ = endpoint.__doc__
    guarded_endpoint.request_body = body  # type: ignore[attr-defined]
    return guarded_endpoint
