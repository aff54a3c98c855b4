"""The embedding engine: a BERT-family encoder (``bert.py``) that answers ``Embed`` requests.

An embedding model (``BertModel`` with sentence-transformers' files) makes one vector per
input, pooled and normalised as its files say (``pooling.py``); with a query, each input's score
is the cosine similarity of its vector and the query's. A cross-encoder
(``BertForSequenceClassification``) makes no vectors: it scores (query, input) pairs, the
sigmoid of its logit.

Batching: ``embed`` tokenizes the inputs and queues them; each ``step`` runs one forward pass over
the queue's first inputs, whichever requests they belong to, padded to the longest, while there
are at most ``options.batch_size`` of them and the padded batch stays within
``options.prefill_step_size`` tokens (a longer input goes alone). A request is answered in the
step that finishes its last input. Padding is masked, so an input's vector does not depend on
what it was batched with (within float rounding).

It keeps the ``Engine`` contract (heartbeats, memory, trim, abort, cancel) and refuses
``Generate``: an embedding model writes no text.
"""

from __future__ import annotations

import gc
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import Encoding, Tokenizer

from opta_lmx.config import EngineOptions
from opta_lmx.proto import Embed, Embeddings, Failed, Finished, FromWorker, Generate, MemoryReading
from opta_lmx.worker.engines.base import Refused
from opta_lmx.worker.engines.bert import load_bert
from opta_lmx.worker.engines.pooling import SentenceConfig, normalized, pool

COSINE = "cosine"
CROSS_ENCODER = "cross_encoder"


class InputError(ValueError):
    """An input the model cannot take; ``code`` is the ``Failed`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Request:
    request_id: int
    prompt_tokens: int
    dimensions: int | None
    method: str  # "" (vectors), COSINE or CROSS_ENCODER
    rows: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0


@dataclass
class _Input:
    request: _Request
    index: int
    ids: list[int]
    type_ids: list[int]


class EmbeddingEngine:
    """A BERT-family encoder behind the ``Engine`` contract, answering ``Embed`` in batches."""

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        location = Path(path)
        self.model_name = model_name
        self._model = load_bert(location)
        self._config = self._model.config
        self._sentence = SentenceConfig.read(location)
        self._tokenizer = _load_tokenizer(location)
        positions = self._config.max_position_embeddings
        self.ctx_len = min(positions, self._sentence.max_length or positions)
        self.cross_encoder = self._config.cross_encoder
        self.dimensions = 1 if self.cross_encoder else self._config.hidden_size * len(self._sentence.modes)
        self._batch_inputs = options.batch_size
        self._batch_tokens = options.prefill_step_size
        self._pad = self._tokenizer.token_to_id("[PAD]") or 0
        self._queue: deque[_Input] = deque()
        self._requests: dict[int, _Request] = {}
        self.embedded = 0  # inputs through the model since start
        self.batches = 0

    @property
    def active(self) -> int:
        return len(self._requests)

    @property
    def progress(self) -> int:
        return self.embedded

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
        state = _Request(rid, tokens, dimensions, method, rows=[None] * len(inputs), left=len(inputs))
        if not inputs:
            return [self._reply(state)]
        self._requests[rid] = state
        self._queue.extend(_Input(state, i, ids, types) for i, (ids, types) in enumerate(inputs))
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
        allowed = self._sentence.matryoshka_dimensions
        if not self._sentence.matryoshka:
            raise InputError(
                "unsupported_parameter",
                f"The model '{self.model_name}' was not trained for shorter vectors (Matryoshka): "
                f"'dimensions' must be left out or be its full size, {full}.",
            )
        if allowed and dimensions not in allowed:
            sizes = ", ".join(str(d) for d in allowed)
            raise InputError("invalid_request", f"'dimensions' must be one of {sizes} for this model.")
        return dimensions

    def _encode(self, request: Embed) -> list[tuple[list[int], list[int]]]:
        """Each input as (token ids, token type ids) ready for the model, special tokens in."""
        if request.token_ids:
            return [self._given_ids(ids, i, request.truncate) for i, ids in enumerate(request.token_ids)]
        if request.query is None:
            return [self._single(text, f"input {i}", request.truncate) for i, text in enumerate(request.texts)]
        if self.cross_encoder:
            query = self._tokenizer.encode(request.query, add_special_tokens=False)
            return [self._pair(query, text, i, request.truncate) for i, text in enumerate(request.texts)]
        query_input = self._single(request.query, "the query", request.truncate)
        return [query_input] + [self._single(t, f"document {i}", request.truncate) for i, t in enumerate(request.texts)]

    def _too_long(self, what: str, count: int) -> InputError:
        return InputError(
            "context_length_exceeded",
            f"{what[0].upper()}{what[1:]} has {count} tokens, more than the model's maximum of "
            f"{self.ctx_len} (ask for truncation to cut it).",
        )

    def _single(self, text: str, what: str, truncate: bool) -> tuple[list[int], list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        room = self.ctx_len - self._specials(pair=False)
        if len(encoding.ids) > room:
            if not truncate:
                raise self._too_long(what, len(encoding.ids) + self._specials(pair=False))
            encoding.truncate(room)
        return _ids(self._tokenizer.post_process(encoding, None, True))

    def _pair(self, query: Encoding, text: str, index: int, truncate: bool) -> tuple[list[int], list[int]]:
        document = self._tokenizer.encode(text, add_special_tokens=False)
        room = self.ctx_len - self._specials(pair=True) - len(query.ids)
        if len(document.ids) > room:
            if not truncate or room < 1:
                what = "the query" if room < 1 else f"the query with document {index}"
                raise self._too_long(what, len(query.ids) + len(document.ids) + self._specials(pair=True))
            document.truncate(room)
        return _ids(self._tokenizer.post_process(query, document, True))

    def _given_ids(self, ids: list[int], index: int, truncate: bool) -> tuple[list[int], list[int]]:
        vocab = self._config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError("invalid_request", f"Input {index} has token id {bad}, outside the vocabulary (0-{vocab - 1}).")
        if len(ids) > self.ctx_len:
            if not truncate:
                raise self._too_long(f"input {index}", len(ids))
            ids = ids[: self.ctx_len]
        return list(ids), [0] * len(ids)

    def _specials(self, pair: bool) -> int:
        processor = self._tokenizer.post_processor
        return processor.num_special_tokens_to_add(pair) if processor is not None else 0

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

    def _fail(self, requests: list[_Request], message: str) -> list[FromWorker]:
        failed = {r.request_id for r in requests if self._requests.pop(r.request_id, None) is not None}
        return [Failed(rid, "engine_error", message) for rid in sorted(failed)]

    def _take_batch(self) -> list[_Input]:
        """The queue's first inputs that fit the batch bounds (always at least one), skipping
        those of requests that were cancelled."""
        batch: list[_Input] = []
        longest = 0
        while self._queue and len(batch) < self._batch_inputs:
            item = self._queue[0]
            if item.request.request_id not in self._requests:
                self._queue.popleft()
                continue
            length = max(longest, len(item.ids))
            if batch and length * (len(batch) + 1) > self._batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest = length
        return batch

    def _forward(self, batch: list[_Input]) -> np.ndarray:
        """One row per input: its vector, or (cross-encoder) its relevance logit."""
        length = max(len(item.ids) for item in batch)
        ids = mx.array([item.ids + [self._pad] * (length - len(item.ids)) for item in batch])
        types = mx.array([item.type_ids + [0] * (length - len(item.type_ids)) for item in batch])
        attention = mx.array([[1] * len(item.ids) + [0] * (length - len(item.ids)) for item in batch])
        hidden = self._model(ids, types, attention)
        if self.cross_encoder:
            out = self._model.relevance(hidden)[:, None]
        else:
            out = pool(hidden, attention, self._sentence.modes)
            if self._sentence.normalize:
                out = normalized(out)
        return np.array(out.astype(mx.float32))

    def _reply(self, request: _Request) -> Embeddings:
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

    def memory(self) -> MemoryReading:
        return MemoryReading(
            mlx_active=mx.get_active_memory(), mlx_cache=mx.get_cache_memory(), mlx_peak=mx.get_peak_memory()
        )

    def trim(self) -> None:
        gc.collect()
        mx.clear_cache()

    def close(self) -> None:
        """Nothing outlives an embedding worker: no cache is kept between requests."""


def _ids(encoding: Encoding) -> tuple[list[int], list[int]]:
    return list(encoding.ids), list(encoding.type_ids)


def _load_tokenizer(path: Path) -> Tokenizer:
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"no tokenizer.json in {path} (the embedding engine reads the fast tokenizer's file)")
    tokenizer = Tokenizer.from_file(str(file))
    # The file may carry a fixed padding and truncation (all-MiniLM-L6-v2's: 128): the engine
    # pads its batches itself and refuses, or truncates on request, what is too long.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
