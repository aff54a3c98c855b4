"""Per-request sampling for the GGUF engine, in numpy over llama.cpp's logits.

The same steps, in the same order, as the MLX engine's (``mlx_sampling``): logit bias, then the
penalties over the request's tokens (prompt and generated, as mlx-lm's processors see them), then
the grammar's mask, then log-softmax (what ``logprobs`` report), then top-p, min-p and top-k, and
a draw at the temperature (greedy at 0). A request owns its random generator, seeded when it has
a seed, so its draws do not depend on what else is in the batch: same seed, same output, alone or
batched.
"""

from __future__ import annotations

import numpy as np

from opta_lmx.proto import SamplingParams
from opta_lmx.worker.grammar import TokenMask


class RowSampler:
    """Turns one request's logits row into its next token, step after step."""

    def __init__(self, params: SamplingParams, width: int, prompt: list[int], mask: TokenMask | None) -> None:
        self._params = params
        self._mask = mask
        self.greedy = params.temperature == 0
        # The API's seeds are signed 64-bit; numpy's generator takes them as unsigned.
        self._rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64) if params.logit_bias else None
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float32) if params.logit_bias else None
        penalized = params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0
        self._counts = np.bincount(np.asarray(prompt, dtype=np.int64), minlength=width) if penalized else None

    @property
    def plain(self) -> bool:
        """Greedy with nothing to apply: the engine may take the argmax of the raw logits."""
        return self.greedy and self._bias_ids is None and self._counts is None and self._mask is None

    def logits(self, row: np.ndarray) -> np.ndarray:
        """The row with bias, penalties and the grammar's mask applied (a copy)."""
        logits = np.array(row, dtype=np.float32)
        if self._bias_ids is not None:
            np.add.at(logits, self._bias_ids, self._bias_values)
        if self._counts is not None:
            self._penalize(logits)
        if self._mask is not None:
            logits[~self._mask.allowed(logits.shape[0])] = -np.inf
        return logits

    def _penalize(self, logits: np.ndarray) -> None:
        params = self._params
        assert self._counts is not None
        seen = np.flatnonzero(self._counts)
        if params.repetition_penalty != 1.0:
            values = logits[seen]
            logits[seen] = np.where(values < 0, values * params.repetition_penalty, values / params.repetition_penalty)
        if params.presence_penalty:
            logits[seen] -= params.presence_penalty
        if params.frequency_penalty:
            logits[seen] -= params.frequency_penalty * self._counts[seen]

    def pick(self, logits: np.ndarray, logprobs: np.ndarray | None = None) -> int:
        """The next token from processed logits (``logprobs``: their log-softmax, if the caller
        has it already)."""
        if self.greedy:
            return int(np.argmax(logits))
        params = self._params
        if logprobs is None:
            logprobs = log_softmax(logits)
        if 0 < params.top_p < 1.0:
            logprobs = _top_p(logprobs, params.top_p)
        if params.min_p > 0:
            logprobs = np.where(logprobs < logprobs.max() + np.log(params.min_p), -np.inf, logprobs)
        if 0 < params.top_k < logprobs.shape[0]:
            threshold = np.partition(logprobs, -params.top_k)[-params.top_k]
            logprobs = np.where(logprobs < threshold, -np.inf, logprobs)
        scaled = logprobs / params.temperature
        weights = np.exp(scaled - scaled.max())
        cumulative = np.cumsum(weights)
        token = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return min(token, logits.shape[0] - 1)

    def accept(self, token: int) -> None:
        """The token chosen for this request (the grammar and the penalties move on)."""
        if self._mask is not None:
            self._mask.consume(token)
        if self._counts is not None:
            self._counts[token] += 1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max()
    return logits - (top + np.log(np.exp(logits - top).sum()))


def _top_p(logprobs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the most likely tokens whose probabilities add up to ``top_p`` (mlx-lm's rule: a token
    is dropped when the tokens more likely than it already hold ``top_p`` of the mass)."""
    ascending = np.sort(logprobs)
    probs = np.exp(ascending)
    cumulative = np.cumsum(probs)
    mass_above = cumulative[-1] - cumulative
    dropped = int(np.count_nonzero(mass_above >= top_p * cumulative[-1]))
    return np.where(logprobs < ascending[min(dropped, ascending.shape[0] - 1)], -np.inf, logprobs)
