"""POST /v1/rerank (also /rerank and /v2/rerank): documents ordered by relevance to a query, in
the Cohere/Jina shape that vLLM, llama.cpp and LocalAI serve.

``documents`` are strings or ``{"text": ...}`` objects; ``top_n`` keeps the best n;
``return_documents`` (default true, as Jina and vLLM have it) puts each document's text in its
result. How the scores are made depends on the model, and the answer says which (``method``):
a cross-encoder scores each (query, document) pair (the sigmoid of its logit, 0 to 1); an
embedding model gives the cosine similarity of the query's and the document's vectors (-1 to 1).
A model that generates text is refused with a 400. ``truncate`` (an extension) cuts documents
that do not fit the model's context instead of refusing them. Errors are in OpenAI's shape, as
vLLM and LocalAI answer them on this route.
"""

from __future__ import annotations

import secrets
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.embedding import Vectors, embed
from opta_lmx.gateway.endpoints import guarded, openai_error
from opta_lmx.gateway.generation import unless_disconnected
from opta_lmx.gateway.state import GatewayState

# Cohere's limit on the documents of one request.
MAX_DOCUMENTS = 1000


class Document(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class RerankRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    query: str
    documents: list[str | Document]
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool = True
    truncate: bool = False


_DECODER = msgspec.json.Decoder(RerankRequest)
_ENCODER = msgspec.json.Encoder()


def document_texts(body: RerankRequest) -> list[str]:
    if not body.query:
        raise InvalidRequest("'query' must not be empty.", param="query")
    if not body.documents:
        raise InvalidRequest("'documents' must not be empty.", param="documents")
    if len(body.documents) > MAX_DOCUMENTS:
        raise InvalidRequest(f"At most {MAX_DOCUMENTS} documents per request, got {len(body.documents)}.", param="documents")
    return [d if isinstance(d, str) else d.text for d in body.documents]


async def rerank(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_body(_DECODER, await request.body())
    texts = document_texts(body)
    work = embed(state, body.model, texts=texts, query=body.query, truncate=body.truncate)
    scores = await unless_disconnected(request, work)
    if scores is None:
        return Response(status_code=499)
    reply = ranking(scores, texts, body.top_n, body.return_documents)
    return Response(_ENCODER.encode(reply), media_type="application/json")


def ranking(scores: Vectors, texts: list[str], top_n: int | None, return_documents: bool) -> dict[str, object]:
    """Results best first (ties keep the documents' order), at most ``top_n`` of them."""
    values = [row[0] for row in scores.floats()]
    order = sorted(range(len(values)), key=lambda i: -values[i])[:top_n]
    results: list[dict[str, object]] = []
    for index in order:
        result: dict[str, object] = {"index": index, "relevance_score": values[index]}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return {
        "id": f"rerank-{secrets.token_hex(12)}",
        "model": scores.model,
        "method": scores.method,
        "results": results,
        "usage": {"prompt_tokens": scores.prompt_tokens, "total_tokens": scores.prompt_tokens},
    }


def routes() -> list[Route]:
    return [
        Route(path, guarded(rerank, openai_error, body=RerankRequest), methods=["POST"]) for path in ("/v1/rerank", "/rerank", "/v2/rerank")
    ]
