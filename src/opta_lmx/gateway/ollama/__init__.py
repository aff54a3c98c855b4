"""Ollama's API (``/api/*``): chat and generate as NDJSON streams or one object, the model
routes, and Ollama's error shape, ``{"error": "message"}``, with the status Ollama would use.
docs/dialects/ollama.md says what is supported and what is refused."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opta_lmx.errors import ApiError, EndpointNotImplemented
from opta_lmx.gateway.endpoints import Endpoint, guarded
from opta_lmx.gateway.ollama.chat import chat
from opta_lmx.gateway.ollama.generate import generate
from opta_lmx.gateway.ollama.models import ps, root, show, tags, version

# Routes for what Opta-LMX does elsewhere or not at all: models come from its config file, and
# embeddings are not served yet.
_NOT_IMPLEMENTED = {
    "/api/pull": ("POST", "models are configured in the server's config file ([[models]] path), not pulled"),
    "/api/push": ("POST", "models are configured in the server's config file, not pushed to a registry"),
    "/api/create": ("POST", "models are configured in the server's config file ([[models]])"),
    "/api/copy": ("POST", "another name for a model is an alias in the server's config file"),
    "/api/delete": ("DELETE", "models are configured in the server's config file; remove them there"),
    "/api/embed": ("POST", "embeddings are not served yet"),
    "/api/embeddings": ("POST", "embeddings are not served yet"),
}


def ollama_error(error: ApiError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers())


def _not_implemented(path: str, why: str) -> Endpoint:
    async def not_implemented(request: Request) -> Response:
        raise EndpointNotImplemented(f"{path} is not implemented by this server: {why}.")

    return not_implemented


def routes() -> list[Route]:
    endpoints = [
        ("/", root, ["GET"]),  # Starlette answers HEAD for GET routes: clients probe with either
        ("/api/version", version, ["GET"]),
        ("/api/tags", tags, ["GET"]),
        ("/api/show", show, ["POST"]),
        ("/api/ps", ps, ["GET"]),
        ("/api/chat", chat, ["POST"]),
        ("/api/generate", generate, ["POST"]),
        *((path, _not_implemented(path, why), [method]) for path, (method, why) in _NOT_IMPLEMENTED.items()),
        (
            "/api/blobs/{digest}",
            _not_implemented("/api/blobs", "models are configured, not uploaded"),
            ["HEAD", "POST"],
        ),
    ]
    return [Route(path, guarded(endpoint, ollama_error), methods=methods) for path, endpoint, methods in endpoints]
