"""POST /v1/embeddings: vectors from an embedding model, in OpenAI's list shape.

``input`` is a string, a list of strings, a list of token ids or a list of such lists (at most
``MAX_INPUTS``; no empty string, as OpenAI refuses them too). ``encoding_format`` is ``float``
or ``base64`` (the float32 bytes, little-endian: what the OpenAI SDKs ask for by default).
``dimensions`` shortens and renormalises the vectors of models trained for it (Matryoshka; any
other model takes only its full size). An input over the model's context is a 400 naming its
index, unless the request sets ``truncate`` (an extension, TEI's and Ollama's name for it): then
it is cut to fit.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from opta_lmx.errors import InvalidRequest
from opta_lmx.gateway.decoding import decode_body
from opta_lmx.gateway.embedding import Vectors, embed
from opta_lmx.gateway.generation import unless_disconnected
from opta_lmx.gateway.state import GatewayState

# OpenAI's own limit on the inputs of one request.
MAX_INPUTS = 2048


class EmbeddingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    # msgspec takes one list type in a union; the mix of element kinds is checked in ``inputs``.
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None  # an end-user id for abuse monitoring: nothing to do here
    truncate: bool = False


_DECODER = msgspec.json.Decoder(EmbeddingRequest)
_ENCODER = msgspec.json.Encoder()


def inputs(value: str | list[str | int | list[int]]) -> dict[str, list[str] | list[list[int]]]:
    """The ``Embed`` field for ``input``: ``texts`` or ``token_ids``."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} inputs, got {len(value)}.", param="input")
    if all(isinstance(v, str) for v in value):
        empty = next((i for i, v in enumerate(value) if not v), None)
        if empty is not None:
            raise InvalidRequest(f"Input {empty} is an empty string.", param="input")
        return {"texts": value}  # type: ignore[dict-item]
    if all(isinstance(v, int) for v in value):
        return {"token_ids": [value]}  # type: ignore[list-item]
    if all(isinstance(v, list) and v for v in value):
        return {"token_ids": value}  # type: ignore[dict-item]
    raise InvalidRequest(
        "'input' must be a string, a list of strings, a list of token ids, or a list of non-empty such lists.",
        param="input",
    )


async def embeddings(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    body = decode_body(_DECODER, await request.body())
    work = embed(state, body.model, truncate=body.truncate, dimensions=body.dimensions, **inputs(body.input))
    vectors = await unless_disconnected(request, work)
    if vectors is None:
        return Response(status_code=499)
    return Response(_ENCODER.encode(embedding_list(vectors, body.encoding_format)), media_type="application/json")


def embedding_list(vectors: Vectors, encoding_format: str) -> dict[str, object]:
    rows = vectors.base64() if encoding_format == "base64" else vectors.floats()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": vectors.model,
        "usage": {"prompt_tokens": vectors.prompt_tokens, "total_tokens": vectors.prompt_tokens},
    }
