"""The embedding engine: a BERT-family encoder (``bert.py``) that answers ``Embed`` requests.

An embedding model (``BertModel`` with sentence-transformers' files) makes one vector per
input, pooled and normalised as its files say (``pooling.py``); with a query, each input's score
is the cosine similarity of its vector and the query's. A cross-encoder
(``BertForSequenceClassification``) makes no vectors: it scores (query, input) pairs, the
sigmoid of its logit.

Batching (``embedding_batches``, shared with the GGUF embedding engine): each ``step`` runs one
forward pass over the queue's first inputs, whichever requests they belong to, padded to the
longest, at most ``options.batch_size`` of them and ``options.prefill_step_size`` padded tokens (a
longer input goes alone). Padding is masked, so an input's vector does not depend on what it was
batched with (within float rounding).

It keeps the ``Engine`` contract (heartbeats, memory, trim, abort, cancel) and refuses
``Generate``: an embedding model writes no text.
"""

from __future__ import annotations

import gc
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import Encoding, Tokenizer

from opta_lmx.config import EngineOptions
from opta_lmx.proto import MemoryReading
from opta_lmx.worker.engines import mlx_cpu_attention
from opta_lmx.worker.engines.bert import load_bert
from opta_lmx.worker.engines.embedding_batches import BatchedEmbedder, EmbedderShape, EmbedInput, Encoded
from opta_lmx.worker.engines.pooling import SentenceConfig, normalized, pool


class EmbeddingEngine(BatchedEmbedder):
    """A BERT-family encoder behind the ``Engine`` contract, answering ``Embed`` in batches."""

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        location = Path(path)
        mlx_cpu_attention.install(options.cpu_attention)
        self._model = load_bert(location)
        self._config = self._model.config
        self._sentence = SentenceConfig.read(location)
        self._tokenizer = _load_tokenizer(location)
        positions = self._config.max_position_embeddings
        cross_encoder = self._config.cross_encoder
        super().__init__(model_name, EmbedderShape(
            ctx_len=min(positions, self._sentence.max_length or positions),
            dimensions=1 if cross_encoder else self._config.hidden_size * len(self._sentence.modes),
            vocab_size=self._config.vocab_size,
            batch_inputs=options.batch_size,
            batch_tokens=options.prefill_step_size,
            padded=True,
            cross_encoder=cross_encoder,
            matryoshka=self._sentence.matryoshka,
            matryoshka_dimensions=self._sentence.matryoshka_dimensions,
        ))
        self._pad = self._tokenizer.token_to_id("[PAD]") or 0

    # -- text to tokens ----------------------------------------------------------------------

    def _encode_text(self, text: str, what: str, truncate: bool) -> Encoded:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        room = self.ctx_len - self._specials(pair=False)
        if len(encoding.ids) > room:
            if not truncate:
                raise self._too_long(what, len(encoding.ids) + self._specials(pair=False))
            encoding.truncate(room)
        return _ids(self._tokenizer.post_process(encoding, None, True))

    def _encode_pairs(self, query: str, texts: list[str], truncate: bool) -> list[Encoded]:
        encoded = self._tokenizer.encode(query, add_special_tokens=False)
        return [self._pair(encoded, text, i, truncate) for i, text in enumerate(texts)]

    def _pair(self, query: Encoding, text: str, index: int, truncate: bool) -> Encoded:
        document = self._tokenizer.encode(text, add_special_tokens=False)
        room = self.ctx_len - self._specials(pair=True) - len(query.ids)
        if len(document.ids) > room:
            if not truncate or room < 1:
                what = "the query" if room < 1 else f"the query with document {index}"
                raise self._too_long(what, len(query.ids) + len(document.ids) + self._specials(pair=True))
            document.truncate(room)
        return _ids(self._tokenizer.post_process(query, document, True))

    def _specials(self, pair: bool) -> int:
        processor = self._tokenizer.post_processor
        return processor.num_special_tokens_to_add(pair) if processor is not None else 0

    # -- the forward pass ----------------------------------------------------------------------

    def _forward(self, batch: list[EmbedInput]) -> np.ndarray:
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

    # -- memory ----------------------------------------------------------------------------------

    def memory(self) -> MemoryReading:
        return MemoryReading(
            mlx_active=mx.get_active_memory(), mlx_cache=mx.get_cache_memory(), mlx_peak=mx.get_peak_memory()
        )

    def trim(self) -> None:
        gc.collect()
        mx.clear_cache()

    def close(self) -> None:
        """Nothing outlives an embedding worker: no cache is kept between requests."""


def _ids(encoding: Encoding) -> Encoded:
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
