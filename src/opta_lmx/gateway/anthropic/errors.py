"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``, with the status."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from opta_lmx.errors import ApiError
from opta_lmx.gateway.sse import named_event

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    507: "overloaded_error",
}


def error_body(error: ApiError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _TYPES.get(error.status, "api_error"), "message": error.message}}


def error_response(error: ApiError) -> Response:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers())


def error_event(error: ApiError) -> bytes:
    """The ``error`` event that ends a stream that had already begun."""
    return named_event("error", error_body(error))
