"""The MLX engine's prompt cache: KV caches of finished requests, reused by later prompts.

A request leaves with its KV cache and the tokens it holds (prompt and generated tokens); stored
under those tokens, it lets the next turn of the conversation (the same tokens, then the answer's
and the new message's) prefill only what is new. mlx-lm's ``LRUPromptCache`` does the work: a
token trie bounded in entries and bytes, least recently used dropped first, and a private deep
copy on every fetch, so generation never writes into a stored cache. This wrapper adds what the
batch generator needs around it, as mlx-lm's own server does: at least one prompt token left to
prefill, and no entry for a cache that holds nothing.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

# The trie is keyed by model too; an engine serves one model, so one constant key will do.
_MODEL_KEY = "model"

LayerCaches = list[Any]  # one cache object per layer, as ``make_prompt_cache`` builds them


class PromptCache:
    """Finished requests' KV caches, found by the longest prefix they share with a new prompt.

    ``max_entries`` 0 disables it: nothing is stored, every lookup misses.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._lru = LRUPromptCache(max_size=max_entries, max_bytes=max_bytes) if max_entries > 0 else None

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)

    @property
    def nbytes(self) -> int:
        return 0 if self._lru is None else self._lru.nbytes

    def fetch(self, prompt: list[int]) -> tuple[LayerCaches | None, int]:
        """A private copy of the cache holding the longest usable prefix of ``prompt``, and that
        prefix's length; ``(None, 0)`` on a miss. The prefix is always shorter than the prompt:
        the generator starts generating from a last prompt token that it feeds itself."""
        if self._lru is None:
            return None, 0
        cache, rest = self._lru.fetch_nearest_cache(_MODEL_KEY, prompt)
        if cache is None:
            return None, 0
        if not rest:  # the whole prompt is cached: give its last token back to be fed again
            if not can_trim_prompt_cache(cache):  # a rotating cache past its size cannot step back
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        cached = len(prompt) - len(rest)
        return (cache, cached) if cached > 0 else (None, 0)

    def store(self, tokens: list[int], cache: LayerCaches | None) -> None:
        """Keep ``cache``, which holds exactly ``tokens`` (it must no longer be in use)."""
        if self._lru is None or not tokens or not cache:
            return
        self._lru.insert_cache(_MODEL_KEY, list(tokens), cache)

    def clear(self) -> None:
        if self._lru is not None:
            self._lru.trim_to(n_sequences=0)
