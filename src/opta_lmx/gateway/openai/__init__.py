"""OpenAI's API: chat completions, text completions, embeddings and the model list, in OpenAI's shapes."""

from __future__ import annotations

from starlette.routing import Route

from opta_lmx.gateway.endpoints import guarded, openai_error
from opta_lmx.gateway.openai.chat import chat_completions
from opta_lmx.gateway.openai.completions import completions
from opta_lmx.gateway.openai.embeddings import embeddings
from opta_lmx.gateway.openai.models import list_models


def routes() -> list[Route]:
    """Each under ``/v1`` and, as LM Studio and vLLM also answer, without it."""
    endpoints = [
        ("/chat/completions", chat_completions, "POST"),
        ("/completions", completions, "POST"),
        ("/embeddings", embeddings, "POST"),
        ("/models", list_models, "GET"),
    ]
    return [
        Route(prefix + path, guarded(endpoint, openai_error), methods=[method])
        for path, endpoint, method in endpoints
        for prefix in ("/v1", "")
    ]
