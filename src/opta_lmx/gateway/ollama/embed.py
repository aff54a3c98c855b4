"""``POST /api/embed`` and the older ``POST /api/embeddings``, on the embeddings path every
dialect shares (``gateway/embedding.py``).

``/api/embed`` takes ``input`` (a string or a list of strings; empty: the model is only loaded,
as Ollama does), ``truncate`` (default true: an input longer than the context is cut; false: it
is refused), ``dimensions`` (Matryoshka models only), ``keep_alive`` and ``options`` (checked,
and otherwise without effect: nothing is sampled). It answers ``{"model", "embeddings",
"total_duration", "load_duration", "prompt_eval_count"}``, durations in nanoseconds.
``/api/embeddings`` takes one ``prompt`` (cut to the context if longer) and answers
``{"embedding": [...]}``.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.embedding import embed_texts
from opta_lmx.gateway.generation import unless_disconnected
from opta_lmx.gateway.ollama.requests import Options, keep_alive_seconds
from opta_lmx.gateway.ollama.serving import resolve_ollama, set_keep_alive
from opta_lmx.gateway.openai.embeddings import MAX_INPUTS
from opta_lmx.gateway.state import GatewayState


class EmbedRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str = ""
    input: str | Annotated[list[str], Meta(max_length=MAX_INPUTS)] = ""
    truncate: bool | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    keep_alive: float | str | None = None
    options: Options | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str = ""
    prompt: str = ""
    keep_alive: float | str | None = None
    options: Options | None = None


_EMBED = msgspec.json.Decoder(EmbedRequest)
_EMBEDDINGS = msgspec.json.Decoder(EmbeddingsRequest)


async def embed(request: Request) -> Response:
    began = time.monotonic_ns()
    body = decode_body(_EMBED, await request.body())
    texts = [body.input] if isinstance(body.input, str) else body.input
    texts = [] if texts == [""] else texts
    empty = next((i for i, text in enumerate(texts) if not text), None)
    if empty is not None:
        raise InvalidRequest(f"input {empty} is an empty string", param=f"input[{empty}]")
    state: GatewayState = request.app.state.gateway
    name, loaded = await _ready(state, body.model, body.keep_alive)
    vectors: list[list[float]] = []
    tokens = 0
    if texts:
        work = embed_texts(state, name, texts, truncate=body.truncate is not False, dimensions=body.dimensions)
        result = await unless_disconnected(request, work)
        if result is None:
            return Response(status_code=499)
        vectors, tokens = result
    end = time.monotonic_ns()
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": end - began,
            "load_duration": loaded - began,
            "prompt_eval_count": tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    body = decode_body(_EMBEDDINGS, await request.body())
    state: GatewayState = request.app.state.gateway
    name, _ = await _ready(state, body.model, body.keep_alive)
    if not body.prompt:
        return JSONResponse({"embedding": []})  # Ollama's answer to an empty prompt: the model is loaded
    work = embed_texts(state, name, [body.prompt], truncate=True)
    result = await unless_disconnected(request, work)
    if result is None:
        return Response(status_code=499)
    [vector], _ = result
    return JSONResponse({"embedding": vector})


async def _ready(state: GatewayState, model: str, keep_alive: float | str | None) -> tuple[str, int]:
    """The model's name once it is loaded, and when that was (``time.monotonic_ns``)."""
    if not model:
        raise InvalidRequest("model is required", param="model")
    seconds = keep_alive_seconds(keep_alive)
    target = resolve_ollama(state, model)
    await set_keep_alive(state, target, seconds)
    settings = state.config
    await state.models.ready(target.model.name, settings.server.ready_wait, settings.supervisor.load_timeout)
    return target.model.name, time.monotonic_ns()
