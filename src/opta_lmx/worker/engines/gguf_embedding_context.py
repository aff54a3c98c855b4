"""A llama.cpp context that makes pooled embeddings: one pass embeds several inputs, each a sequence
of its own, and llama.cpp pools each sequence's token states into one vector (mean, CLS or last
token) as it computes them.

The context is made for it (``embeddings`` on, the pooling type fixed at creation), separate from
any generating one. One pass holds at most ``tokens`` tokens (``n_batch`` = ``n_ubatch``: an encoder
sees a whole text at once, so a text never spans two compute passes) and ``sequences`` inputs
(``n_seq_max``). An encoder has no KV cache and runs with ``llama_encode``; a decoder's cache is one
buffer of ``tokens`` cells shared by the pass's sequences (``kv_unified``: split per sequence it
would give each a sliver), emptied before every pass, and runs with ``llama_decode``.
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp
import numpy as np

from opta_lmx.worker.engines.gguf_context import DecodeError, TokenBatch, free, load_model, new_context


@dataclass(frozen=True)
class EmbeddingSettings:
    pooling: int  # llama_pooling_type: MEAN, CLS or LAST
    sequences: int  # inputs in one pass (at most 256, llama.cpp's limit)
    tokens: int  # tokens in one pass, the longest input too
    threads: int  # 0: every core but one (the gateway's)
    flash_attn: str  # "auto", "on", "off"


class EmbeddingContext:
    """The model and its embedding context."""

    def __init__(self, path: str, settings: EmbeddingSettings) -> None:
        model = self.model = load_model(path)
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = settings.pooling
        params.n_seq_max = settings.sequences
        params.n_ctx = params.n_batch = params.n_ubatch = settings.tokens
        params.kv_unified = True
        refusal = (
            f"llama.cpp could not create an embedding context of {settings.tokens} tokens and "
            f"{settings.sequences} sequences for {path!r}"
        )
        self.ctx = ctx = new_context(model, params, settings.threads, settings.flash_attn, refusal)
        self.memory = llama_cpp.llama_get_memory(ctx)  # None for an encoder: no KV cache
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.dimensions = llama_cpp.llama_model_n_embd_out(model)
        self.train_context = llama_cpp.llama_model_n_ctx_train(model)
        self.tokens = llama_cpp.llama_n_ubatch(ctx)
        self.sequences = settings.sequences
        self._batch = TokenBatch(self.tokens)

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """One pooled vector per input, as float32 rows (not normalised). The inputs must fit one
        pass: at most ``sequences`` of them, ``tokens`` tokens in all. Raises ``DecodeError``."""
        for sequence, ids in enumerate(inputs):
            self._batch.add(sequence, ids, 0, "all")  # a pooled embedding reads every token's state
        self._batch.take()
        if self.memory:
            llama_cpp.llama_memory_clear(self.memory, True)
            status = llama_cpp.llama_decode(self.ctx, self._batch.struct)
        else:
            status = llama_cpp.llama_encode(self.ctx, self._batch.struct)
        if status != 0:
            raise DecodeError(f"llama.cpp's embedding pass returned {status}")
        rows = np.empty((len(inputs), self.dimensions), dtype=np.float32)
        for sequence in range(len(inputs)):
            pointer = llama_cpp.llama_get_embeddings_seq(self.ctx, sequence)
            if not pointer:
                raise DecodeError("llama.cpp made no pooled embedding (a model it cannot pool?)")
            rows[sequence] = np.ctypeslib.as_array(pointer, shape=(self.dimensions,))
        return rows

    def close(self) -> None:
        free(self.ctx, self.model)
        self.ctx = self.model = None
