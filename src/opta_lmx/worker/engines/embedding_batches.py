"""What every embedding engine does the same way, whatever runs its model: the ``Embed`` requests,
the queue of their inputs, batches under bounds, and the replies (vectors, scores against a query,
shorter Matryoshka vectors); cancel and abort. The MLX encoder (``embedding.py``) and llama.cpp's
pooled embeddings (``gguf_embedding.py``) differ only in how a text becomes tokens and how a batch
of inputs becomes rows, which a subclass supplies.

Batching: ``embed`` tokenizes a request's inputs and queues them; each ``step`` runs one pass over
the queue's first inputs, whichever requests they belong to, while there are at most
``batch_inputs`` of them and the batch stays within ``batch_tokens`` tokens (counted padded to the
longest input when the engine pads, summed when each input is a sequence of its own; an input
longer than that goes alone). A request is answered in the step that finishes its last input.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from opta_lmx.proto import Embed, Embeddings, Failed, Finished, FromWorker, Generate
from opta_lmx.worker.engines.base import Refused

COSINE = "cosine"
CROSS_ENCODER = "cross_encoder"


class InputError(ValueError):
    """An input the model cannot take; ``code`` is the ``Failed`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class EmbedRequest:
    request_id: int
    prompt_tokens: int
    dimensions: int | None
    method: str  # "" (vectors), COSINE or CROSS_ENCODER
    rows: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0


@dataclass
class EmbedInput:
    """One input of a request, ready for the model: its token ids, special tokens in, and (for
    BERT) their token type ids."""

    request: EmbedRequest
    index: int
    ids: list[int]
    type_ids: list[int]


# An input as a subclass encodes it: (token ids, token type ids).
Encoded = tuple[list[int], list[int]]


@dataclass(frozen=True)
class EmbedderShape:
    """What the shared code needs to know of a model and its bounds."""

    ctx_len: int  # the longest input, in tokens
    dimensions: int  # of a vector (1 for a cross-encoder's score)
    vocab_size: int
    batch_inputs: int
    batch_tokens: int
    padded: bool  # a batch costs its longest input times its inputs (else the sum of its inputs)
    cross_encoder: bool = False
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()  # empty: any size up to the full one


class BatchedEmbedder:
    """The ``Engine`` and ``Embedder`` contracts for a model that makes one row per input.

    A subclass calls ``__init__`` with its model's name and shape, and supplies ``_encode_text``
    (a text, with its special tokens, cut to fit when ``truncate``), ``_forward`` (a batch of
    inputs to one row each: a vector, or a cross-encoder's logit), ``memory`` and ``trim``; a
    cross-encoder also ``_encode_pairs``.
    """

    def __init__(self, model_name: str, shape: EmbedderShape) -> None:
        self.model_name = model_name
        self.shape = shape
        self.ctx_len = shape.ctx_len
        self.cross_encoder = shape.cross_encoder
        self.dimensions = shape.dimensions
        self._queue: deque[EmbedInput] = deque()
        self._requests: dict[int, EmbedRequest] = {}
        self.embedded = 0  # inputs through the model since start
        self.batches = 0

    @property
    def active(self) -> int:
        return len(self._requests)

    @property
    def progress(self) -> int:
        return self.embedded

    # -- what a subclass supplies -------------------------------------------------------------

    def _encode_text(self, text: str, what: str, truncate: bool) -> Encoded:
        raise NotImplementedError

    def _encode_pairs(self, query: str, texts: list[str], truncate: bool) -> list[Encoded]:
        raise NotImplementedError

    def _forward(self, batch: list[EmbedInput]) -> np.ndarray:
        raise NotImplementedError

    # -- what an embedding model refuses ---------------------------------------------------

    def _writes_no_text(self) -> str:
        kind = "a cross-encoder (it scores documents for a query)" if self.cross_encoder else "an embedding model"
        return f"The model '{self.model_name}' is {kind}; it does not generate text."

    def prompt_tokens(self, request: Generate) -> list[int]:
        raise Refused(self._writes_no_text())

    def submit(self, request: Generate) -> list[FromWorker]:
        return [Failed(request.request_id, "invalid_request", self._writes_no_text())]

    # -- Embed ------------------------------------------------------------------------------

    def embed(self, request: Embed) -> list[FromWorker]:
        rid = request.request_id
        try:
            method = self._method(request)
            dimensions = self._check_dimensions(request.dimensions, method)
            inputs = self._encode(request)
        except InputError as error:
            return [Failed(rid, error.code, str(error))]
        tokens = sum(len(ids) for ids, _ in inputs)
        state = EmbedRequest(rid, tokens, dimensions, method, rows=[None] * len(inputs), left=len(inputs))
        if not inputs:
            return [self._reply(state)]
        self._requests[rid] = state
        self._queue.extend(EmbedInput(state, i, ids, types) for i, (ids, types) in enumerate(inputs))
        return []

    def _method(self, request: Embed) -> str:
        if request.query is None:
            if self.cross_encoder:
                raise InputError(
                    "invalid_request",
                    f"The model '{self.model_name}' is a cross-encoder: it scores documents for a "
                    "query and makes no embeddings (use the rerank API).",
                )
            return ""
        if request.token_ids:
            raise InputError("invalid_request", "scoring against a query takes texts, not token ids")
        return CROSS_ENCODER if self.cross_encoder else COSINE

    def _check_dimensions(self, dimensions: int | None, method: str) -> int | None:
        full = self.dimensions
        if dimensions is None or dimensions == full:
            return None
        if method:
            raise InputError("unsupported_parameter", "'dimensions' applies to embeddings, not to scores.")
        if not 1 <= dimensions <= full:
            raise InputError("invalid_request", f"'dimensions' must be between 1 and {full}, got {dimensions}.")
        if not self.shape.matryoshka:
            raise InputError(
                "unsupported_parameter",
                f"The model '{self.model_name}' was not trained for shorter vectors (Matryoshka): "
                f"'dimensions' must be left out or be its full size, {full}.",
            )
        allowed = self.shape.matryoshka_dimensions
        if allowed and dimensions not in allowed:
            sizes = ", ".join(str(d) for d in allowed)
            raise InputError("invalid_request", f"'dimensions' must be one of {sizes} for this model.")
        return dimensions

    def _encode(self, request: Embed) -> list[Encoded]:
        """Each input ready for the model; for a cosine score, the query first."""
        truncate = request.truncate
        if request.token_ids:
            return [self._given_ids(ids, i, truncate) for i, ids in enumerate(request.token_ids)]
        if request.query is None:
            return [self._encode_text(text, f"input {i}", truncate) for i, text in enumerate(request.texts)]
        if self.cross_encoder:
            return self._encode_pairs(request.query, request.texts, truncate)
        query = self._encode_text(request.query, "the query", truncate)
        return [query] + [self._encode_text(t, f"document {i}", truncate) for i, t in enumerate(request.texts)]

    def _given_ids(self, ids: list[int], index: int, truncate: bool) -> Encoded:
        """Token ids are the model's input as they are (special tokens included by the client)."""
        vocab = self.shape.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError("invalid_request", f"Input {index} has token id {bad}, outside the vocabulary (0-{vocab - 1}).")
        if len(ids) > self.ctx_len:
            if not truncate:
                raise self._too_long(f"input {index}", len(ids))
            ids = ids[: self.ctx_len]
        return list(ids), [0] * len(ids)

    def _too_long(self, what: str, count: int) -> InputError:
        return InputError(
            "context_length_exceeded",
            f"{what[0].upper()}{what[1:]} has {count} tokens, more than the model's maximum of "
            f"{self.ctx_len} (ask for truncation to cut it).",
        )

    # -- the batch ---------------------------------------------------------------------------

    def step(self) -> list[FromWorker]:
        batch = self._take_batch()
        if not batch:
            return []
        try:
            rows = self._forward(batch)
        except Exception as exc:  # a fault fails the requests this pass carried; the queue goes on
            return self._fail([item.request for item in batch], f"{type(exc).__name__}: {exc}")
        self.embedded += len(batch)
        self.batches += 1
        replies: list[FromWorker] = []
        for item, row in zip(batch, rows):
            request = item.request
            request.rows[item.index] = row
            request.left -= 1
            if request.left == 0 and self._requests.pop(request.request_id, None) is not None:
                replies.append(self._reply(request))
        return replies

    def _fail(self, requests: list[EmbedRequest], message: str) -> list[FromWorker]:
        failed = {r.request_id for r in requests if self._requests.pop(r.request_id, None) is not None}
        return [Failed(rid, "engine_error", message) for rid in sorted(failed)]

    def _take_batch(self) -> list[EmbedInput]:
        """The queue's first inputs that fit the batch bounds (always at least one), skipping
        those of requests that were cancelled."""
        shape = self.shape
        batch: list[EmbedInput] = []
        longest = total = 0
        while self._queue and len(batch) < shape.batch_inputs:
            item = self._queue[0]
            if item.request.request_id not in self._requests:
                self._queue.popleft()
                continue
            length = max(longest, len(item.ids))
            cost = length * (len(batch) + 1) if shape.padded else total + len(item.ids)
            if batch and cost > shape.batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest, total = length, total + len(item.ids)
        return batch

    def _reply(self, request: EmbedRequest) -> Embeddings:
        rows = np.stack(request.rows) if request.rows else np.zeros((0, self.dimensions), np.float32)
        if request.method == CROSS_ENCODER:
            rows = 1.0 / (1.0 + np.exp(-rows))
        elif request.method == COSINE:
            unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            rows = (unit[1:] @ unit[0])[:, None]
        elif request.dimensions is not None:
            rows = rows[:, : request.dimensions]
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        vectors = np.ascontiguousarray(rows, dtype="<f4")
        return Embeddings(request.request_id, vectors.tobytes(), vectors.shape[1], request.prompt_tokens, request.method)

    # -- the rest of the contract ----------------------------------------------------------

    def cancel(self, request_id: int) -> list[FromWorker]:
        """Its queued inputs are skipped when their turn comes."""
        if self._requests.pop(request_id, None) is None:
            return []
        return [Finished(request_id, "cancelled", 0, 0)]

    def abort_all(self, code: str, message: str) -> list[FromWorker]:
        replies: list[FromWorker] = [Failed(rid, code, message) for rid in self._requests]
        self._requests.clear()
        self._queue.clear()
        return replies
