"""OpenAI's API: chat completions, text completions, embeddings and the model list, in OpenAI's shapes."""

from __future__ import annotations

from starlette.routing import Route

from opta_lmx.gateway.endpoints import guarded, openai_error
from opta_lmx.gateway.openai.chat import chat_completions
from opta_lmx.gateway.openai.completions import CompletionRequest, completions
from opta_lmx.gateway.openai.embeddings import EmbeddingRequest, embeddings
from opta_lmx.gateway.openai.models import list_models
from opta_lmx.gateway.openai.requests import ChatCompletionRequest


def routes() -> list[Route]:
    """Each under ``/v1`` and, as LM Studio and vLLM also answer, without it."""
    endpoints = [
        ("/chat/completions", chat_completions, "POST", ChatCompletionRequest),
        ("/completions", completions, "POST", CompletionRequest),
        ("/embeddings", embeddings, "POST", EmbeddingRequest),
        ("/models", list_models, "GET", None),
    ]
    return [
        Route(prefix + path, guarded(endpoint, openai_error, body=body), methods=[method])
        for path, endpoint, method, body in endpoints
        for prefix in ("/v1", "")
    ]
