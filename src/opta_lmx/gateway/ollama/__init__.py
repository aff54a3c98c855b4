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
from opta_lmx.gateway.ollama.embed import EmbeddingsRequest, EmbedRequest, embed, embeddings
from opta_lmx.gateway.ollama.generate import generate
from opta_lmx.gateway.ollama.models import ps, root, show, tags, version
from opta_lmx.gateway.ollama.pull import DeleteRequest, PullRequest, delete, pull
from opta_lmx.gateway.ollama.requests import ChatRequest, GenerateRequest, ShowRequest

# Routes for what Opta-LMX does another way or not at all: models come from the Hugging Face hub
# or the config file, not from Ollama's registry or Modelfiles.
_NOT_IMPLEMENTED = {
    "/api/push": ("POST", "models are pulled from the Hugging Face hub or configured, not pushed to a registry"),
    "/api/create": ("POST", "models are configured in the server's config file ([[models]])"),
    "/api/copy": ("POST", "another name for a model is an alias in the server's config file"),
}


def ollama_error(error: ApiError) -> Response:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers())


def _not_implemented(path: str, why: str) -> Endpoint:
    async def not_implemented(request: Request) -> Response:
        raise EndpointNotImplemented(f"{path} is not implemented by this server: {why}.")

    not_implemented.not_implemented = True  # type: ignore[attr-defined]  # the OpenAPI document says so
    return not_implemented


def routes() -> list[Route]:
    endpoints: list[tuple[str, Endpoint, list[str], type | None]] = [
        ("/", root, ["GET"], None),  # Starlette answers HEAD for GET routes: clients probe with either
        ("/api/version", version, ["GET"], None),
        ("/api/tags", tags, ["GET"], None),
        ("/api/show", show, ["POST"], ShowRequest),
        ("/api/ps", ps, ["GET"], None),
        ("/api/chat", chat, ["POST"], ChatRequest),
        ("/api/generate", generate, ["POST"], GenerateRequest),
        ("/api/embed", embed, ["POST"], EmbedRequest),
        ("/api/embeddings", embeddings, ["POST"], EmbeddingsRequest),
        ("/api/pull", pull, ["POST"], PullRequest),
        ("/api/delete", delete, ["DELETE"], DeleteRequest),
        *((path, _not_implemented(path, why), [method], None) for path, (method, why) in _NOT_IMPLEMENTED.items()),
        (
            "/api/blobs/{digest}",
            _not_implemented("/api/blobs", "models are configured, not uploaded"),
            ["HEAD", "POST"],
            None,
        ),
    ]
    return [
        Route(path, guarded(endpoint, ollama_error, body=body), methods=methods)
        for path, endpoint, methods, body in endpoints
    ]
