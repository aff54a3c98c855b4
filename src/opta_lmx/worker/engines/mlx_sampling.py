"""Per-request sampling for the MLX engine: samplers, logits processors, logprobs.

Samplers without a seed are shared between requests with equal parameters (BatchGenerator
samples all rows in one call only when they share one sampler object). A seeded request gets a
sampler with its own random key, split at every step, so its draws do not depend on what else
is in the batch: same seed, same output, alone or batched.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    Sampler,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

from opta_lmx.proto import SamplingParams, TokenLogprob, TokenLogprobs

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@lru_cache(maxsize=64)
def _shared_sampler(temperature: float, top_p: float, top_k: int, min_p: float) -> Sampler:
    return make_sampler(temp=temperature, top_p=top_p, top_k=top_k, min_p=min_p)


def sampler_for(params: SamplingParams) -> Sampler:
    if params.seed is None or params.temperature == 0:
        return _shared_sampler(params.temperature, params.top_p, params.top_k, params.min_p)
    return _seeded_sampler(params)


def _seeded_sampler(params: SamplingParams) -> Sampler:
    key = mx.random.key(params.seed % 2**64)  # the API takes signed 64-bit seeds
    inverse_temperature = 1.0 / params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, draw = mx.random.split(key)
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p > 0:
            logprobs = apply_min_p(logprobs, params.min_p)
        if params.top_k > 0:
            logprobs = apply_top_k(logprobs, params.top_k)
        return mx.random.categorical(logprobs * inverse_temperature, key=draw)

    return sample


def logits_processors_for(params: SamplingParams, context: int) -> list[LogitsProcessor]:
    """Penalties look at the whole generation (``context`` tokens), as the OpenAI API does."""
    return make_logits_processors(
        logit_bias=dict(params.logit_bias) or None,
        repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
        repetition_context_size=context,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=context,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=context,
    )


class LogprobReader:
    """Turns a token and its log-probability vector into the OpenAI per-token entry."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_decoder = _byte_decoder(tokenizer)

    def entry(self, token: int, logprobs: mx.array, top: int) -> TokenLogprobs:
        chosen = float(logprobs[token].item())
        alternatives: list[TokenLogprob] = []
        if top > 0:
            ids = mx.argpartition(-logprobs, top - 1)[:top]
            values = logprobs[ids]
            for tid, value in sorted(zip(ids.tolist(), values.tolist()), key=lambda p: -p[1]):
                if value == float("-inf"):  # banned (a grammar's mask): not an alternative
                    continue
                text, raw = self._text_and_bytes(tid)
                alternatives.append(TokenLogprob(text, value, raw))
        text, raw = self._text_and_bytes(token)
        return TokenLogprobs(text, chosen, raw, alternatives)

    def _text_and_bytes(self, token: int) -> tuple[str, list[int]]:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if self._byte_decoder and all(c in self._byte_decoder for c in piece):
            raw = bytes(self._byte_decoder[c] for c in piece)
            return raw.decode("utf-8", errors="replace"), list(raw)
        text = self._tokenizer.decode([token])
        return text, list(text.encode("utf-8"))


def _byte_decoder(tokenizer: Any) -> dict[str, int] | None:
    """Byte-level BPE vocabularies spell bytes with printable stand-ins (GPT-2's table)."""
    try:
        from mlx_lm.tokenizer_utils import _byte_decoder as table  # the mapping mlx-lm decodes with

        return dict(table())
    except (ImportError, TypeError):
        return None
