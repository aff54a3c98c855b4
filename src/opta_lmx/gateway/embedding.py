"""The path every embedding and rerank route shares: resolve the model, load it if needed, send
one ``Embed``, await its one reply.

A dialect decodes its own body and shapes its own answer; this module is what lies between.
The worker answers ``Embeddings`` or ``Failed`` (the wrong kind of model, an input over the
context, ``dimensions`` the model was not trained for: 400s); a worker that dies or stays silent
past the inter-token timeout is the same 503/504 a generation gets, and a request past the
model's queue (``batch_size`` + ``max_queued`` in flight) the same 429. A caller that is cancelled
(its client went away) cancels the request on the worker.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import NamedTuple

from opta_lmx.errors import EngineFailure
from opta_lmx.gateway.generation import Job, admit, first_reply
from opta_lmx.gateway.jobs import resolve
from opta_lmx.gateway.state import GatewayState
from opta_lmx.proto import Embed, Embeddings

# The float32 values travel little-endian; ``array`` reads them in the machine's order.
_SWAP = sys.byteorder != "little"


class Vectors(NamedTuple):
    """What the model made: ``count`` rows of ``dimensions`` float32 values (little-endian
    bytes, in input order), or one relevance score per document; ``model`` is the name the
    model is configured under; ``method`` says how scores were made (``cosine``,
    ``cross_encoder``; empty for embeddings)."""

    model: str
    data: bytes
    dimensions: int
    prompt_tokens: int
    method: str

    @property
    def count(self) -> int:
        return len(self.data) // (4 * self.dimensions) if self.dimensions else 0

    def floats(self) -> list[list[float]]:
        values = array("f", self.data)
        if _SWAP:
            values.byteswap()
        flat, size = values.tolist(), self.dimensions
        return [flat[i : i + size] for i in range(0, len(flat), size)]

    def base64(self) -> list[str]:
        """Each row as OpenAI's ``encoding_format: base64`` has it: its float32 bytes."""
        size = 4 * self.dimensions
        return [base64.b64encode(self.data[i : i + size]).decode() for i in range(0, len(self.data), size)]


async def embed(
    state: GatewayState,
    model: str,
    *,
    texts: list[str] | None = None,
    token_ids: list[list[int]] | None = None,
    truncate: bool = False,
    dimensions: int | None = None,
    query: str | None = None,
) -> Vectors:
    """``texts`` or ``token_ids`` through the model named ``model`` (a name or an alias): their
    vectors, or with a ``query`` their relevance scores. Raises the ``ApiError`` to answer."""
    target = resolve(state, model)
    fields = {"texts": texts or [], "token_ids": token_ids or [], "truncate": truncate, "dimensions": dimensions, "query": query}
    job = Job(target.model.name, fields)
    (reservation,) = admit(state, [job])
    _, reply = await first_reply(state, job, Embed, reservation)
    if not isinstance(reply, Embeddings):
        raise EngineFailure(f"unexpected reply to an embedding request: {type(reply).__name__}")
    return Vectors(target.model.name, reply.vectors, reply.dimensions, reply.prompt_tokens, reply.method)


async def embed_texts(
    state: GatewayState, model: str, texts: list[str], *, truncate: bool = False, dimensions: int | None = None
) -> tuple[list[list[float]], int]:
    """The vectors of ``texts`` (as lists of floats, in order) and the tokens they took: what a
    dialect without a binary encoding (Ollama's ``/api/embed``) answers with."""
    vectors = await embed(state, model, texts=texts, truncate=truncate, dimensions=dimensions)
    return vectors.floats(), vectors.prompt_tokens
