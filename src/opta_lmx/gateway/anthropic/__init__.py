"""Anthropic's Messages API (what Claude Code and the ``anthropic`` SDKs speak), in its shapes."""

from __future__ import annotations

from starlette.routing import Route

from opta_lmx.gateway.anthropic.errors import error_response
from opta_lmx.gateway.anthropic.messages import count_tokens, create_message
from opta_lmx.gateway.anthropic.requests import CountTokensRequest, MessagesRequest
from opta_lmx.gateway.endpoints import guarded


def routes() -> list[Route]:
    """Under ``/v1`` (the SDKs add ``?beta=true`` for beta features: the query is not part of the route)."""
    return [
        Route("/v1/messages", guarded(create_message, error_response, body=MessagesRequest), methods=["POST"]),
        Route(
            "/v1/messages/count_tokens", guarded(count_tokens, error_response, body=CountTokensRequest), methods=["POST"]
        ),
    ]
