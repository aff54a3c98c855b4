"""The GGUF embedding engine: llama.cpp's pooled embeddings (``gguf_embedding_context``) answering
``Embed`` requests, batched by the code every embedding engine shares (``embedding_batches``).

It serves encoders (BERT and its kin: all-MiniLM, nomic-embed, bge, jina-embeddings...) and decoders
trained for embeddings (Qwen3-Embedding), which ``engine = "auto"`` finds from the file's header, and
any other GGUF named with ``engine = "gguf-embedding"``. Pooling is the file's
(``<arch>.pooling_type``) unless ``options.pooling`` says otherwise; a file that names none is
mean-pooled if it is an encoder and last-token-pooled if it is a decoder (how decoder embedding
models are trained). Vectors are scaled to unit length, as sentence-transformers models expect,
unless ``options.normalize`` is false. A query's scores are the cosine similarities of the vectors.

Batching: each ``step`` is one pass over the queue's first inputs, each its own sequence (no
padding), at most ``options.batch_size`` of them and ``options.n_ubatch`` tokens in all; an input
may be at most that long too (llama.cpp computes a text in one pass), and no longer than the
model's training context.
"""

from __future__ import annotations

import gc

import numpy as np

from opta_lmx.config import EngineOptions
from opta_lmx.engine_choice import gguf_file
from opta_lmx.gguf_metadata import POOLING_CLS, POOLING_LAST, POOLING_MEAN, POOLING_RANK, GgufTraits, gguf_traits
from opta_lmx.proto import MemoryReading
from opta_lmx.worker.engines.embedding_batches import BatchedEmbedder, EmbedderShape, EmbedInput, Encoded
from opta_lmx.worker.engines.gguf_context import release_heap, tokenize
from opta_lmx.worker.engines.gguf_embedding_context import EmbeddingContext, EmbeddingSettings

POOLINGS = {"mean": POOLING_MEAN, "cls": POOLING_CLS, "last": POOLING_LAST}
_PROBE = "a"


class GgufEmbeddingEngine(BatchedEmbedder):
    """A GGUF model's pooled embeddings behind the ``Engine`` contract, answering ``Embed`` in
    batches."""

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        file = gguf_file(path)
        pooling = pooling_type(gguf_traits(file), options.pooling)
        self.pooling = next(name for name, kind in POOLINGS.items() if kind == pooling)
        self._normalize = options.normalize
        context = self._context = EmbeddingContext(str(file), EmbeddingSettings(
            pooling=pooling,
            sequences=options.batch_size,
            tokens=options.n_ubatch,
            threads=options.threads,
            flash_attn=options.flash_attn,
        ))
        try:
            self._prefix, self._suffix = self._special_ends()
            super().__init__(model_name, EmbedderShape(
                ctx_len=min(context.train_context or context.tokens, context.tokens),
                dimensions=context.dimensions,
                vocab_size=context.n_vocab,
                batch_inputs=options.batch_size,
                batch_tokens=context.tokens,
                padded=False,
            ))
            context.embed([self._prefix + tokenize(context.vocab, _PROBE, False) + self._suffix])
        except Exception:  # a model llama.cpp cannot pool fails its load, not its first request
            context.close()
            raise

    def _special_ends(self) -> tuple[list[int], list[int]]:
        """The tokens llama.cpp puts before and after a text (BOS; an encoder's [CLS] and [SEP]),
        found by tokenizing a probe with and without them, so a text cut to fit keeps them."""
        vocab = self._context.vocab
        bare, full = tokenize(vocab, _PROBE, False), tokenize(vocab, _PROBE, True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        raise ValueError("llama.cpp's special tokens change how this model tokenizes a text's own tokens")

    # -- text to tokens ----------------------------------------------------------------------

    def _encode_text(self, text: str, what: str, truncate: bool) -> Encoded:
        ids = tokenize(self._context.vocab, text, False)
        specials = len(self._prefix) + len(self._suffix)
        room = self.ctx_len - specials
        if len(ids) > room:
            if not truncate:
                raise self._too_long(what, len(ids) + specials)
            ids = ids[:room]
        return self._prefix + ids + self._suffix, []

    # -- the pass -------------------------------------------------------------------------------

    def _forward(self, batch: list[EmbedInput]) -> np.ndarray:
        rows = self._context.embed([item.ids for item in batch])
        if self._normalize:
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return rows

    # -- memory ----------------------------------------------------------------------------------

    def memory(self) -> MemoryReading:
        """No allocator figures of its own: the worker adds the process's, which include
        llama.cpp's buffers."""
        return MemoryReading()

    def trim(self) -> None:
        """Return freed heap memory to the system (llama.cpp's buffers are allocated once)."""
        gc.collect()
        release_heap()

    def close(self) -> None:
        self._context.close()


def pooling_type(traits: GgufTraits, option: str) -> int:
    """llama.cpp's pooling type for a model: ``option`` ("mean", "cls", "last") when set, else the
    file's, else mean for an encoder and last token for a decoder. A reranker's (rank) is refused:
    it scores pairs through a classification head this engine does not drive."""
    if option:
        return POOLINGS[option]
    if traits.pooling in POOLINGS.values():
        return traits.pooling  # type: ignore[return-value]
    if traits.pooling == POOLING_RANK:
        raise ValueError(
            f"this GGUF ({traits.architecture}) is a reranker (pooling type rank), which is not supported; "
            'set [models.options] pooling = "mean", "cls" or "last" to serve its embeddings instead'
        )
    return POOLING_MEAN if traits.encoder else POOLING_LAST
