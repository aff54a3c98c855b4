"""OpenAI's Responses API (what Codex speaks): create (streaming and not), retrieve and delete, in
OpenAI's shapes and error shape, over the shared generation path."""

from __future__ import annotations

from starlette.routing import Route

from opta_lmx.gateway.endpoints import guarded, openai_error
from opta_lmx.gateway.responses.endpoints import ResponsesApi
from opta_lmx.gateway.responses.requests import CreateResponse
from opta_lmx.gateway.responses.store import ResponseStore


def routes() -> list[Route]:
    """Each under ``/v1`` and without it, as the OpenAI routes; one store of recent responses
    shared by them."""
    api = ResponsesApi(ResponseStore())
    endpoints = [
        ("/responses", api.create_response, "POST", CreateResponse),
        ("/responses/{response_id}", api.retrieve_response, "GET", None),
        ("/responses/{response_id}", api.delete_response, "DELETE", None),
    ]
    return [
        Route(prefix + path, guarded(endpoint, openai_error, body=body), methods=[method])
        for path, endpoint, method, body in endpoints
        for prefix in ("/v1", "")
    ]
