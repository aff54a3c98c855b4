"""The MLX engine's prompt cache: KV caches kept for reuse by later prompts that start the same way.

A request leaves with its KV cache and the tokens it holds (prompt and generated tokens); stored
under those tokens, it lets the next turn of the conversation (the same tokens, then the answer's
and the new message's) prefill only what is new. A prompt that shares only a beginning with an
entry (another conversation with the same system prompt and tools) starts from that beginning:
the entry's copy is trimmed back to the shared tokens. Whichever conversation made the entry, and
whether it has finished or is still generating (the engine stores a copy of a request's cache as
soon as its prompt is prefilled: ``snapshot``).

Entries live in mlx-lm's token trie (``PromptTrie``), bounded in entries and bytes, least recently
used (stored or fetched) dropped first; every fetch is a private copy, so generation never writes
into a stored cache. An entry that leaves by the bounds or by ``clear(spill=True)`` is handed to
``spill`` (the disk tier) instead of being forgotten. At least one prompt token is always left to
prefill: the generator starts generating from a last prompt token that it feeds itself.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Callable

import mlx.core as mx
from mlx_lm.models.cache import KVCache, PromptTrie, can_trim_prompt_cache, trim_prompt_cache

# The trie is keyed by model too; an engine serves one model, so one constant key will do.
_MODEL_KEY = "model"

LayerCaches = list[Any]  # one cache object per layer, as ``make_prompt_cache`` builds them
Spill = Callable[[list[int], LayerCaches], None]


class _Entry:
    __slots__ = ("tokens", "cache", "nbytes", "trimmable")

    def __init__(self, tokens: list[int], cache: LayerCaches) -> None:
        self.tokens = tokens
        self.cache = cache
        self.nbytes = sum(c.nbytes for c in cache)
        self.trimmable = can_trim_prompt_cache(cache)


class PromptCache:
    """KV caches found by the longest prefix they share with a new prompt.

    ``max_entries`` 0 disables it: nothing is stored, every lookup misses. ``spill`` receives
    (tokens, cache) of every entry that leaves by the bounds or by ``clear(spill=True)``; the
    cache is no longer used here afterwards.
    """

    def __init__(self, max_entries: int, max_bytes: int, spill: Spill | None = None) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._spill = spill
        self._trie = PromptTrie()
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # least recent first
        self._nbytes = 0

    def set_spill(self, spill: Spill | None) -> None:
        self._spill = spill

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def usable(self, prompt: list[int]) -> int:
        """How many of ``prompt``'s tokens ``fetch`` would give, without copying anything."""
        return self._nearest(prompt)[1]

    def fetch(self, prompt: list[int]) -> tuple[LayerCaches | None, int]:
        """A private copy of the cache holding the longest usable prefix of ``prompt``, and that
        prefix's length (always shorter than the prompt); ``(None, 0)`` on a miss."""
        entry, usable = self._nearest(prompt)
        if entry is None:
            return None, 0
        self._entries.move_to_end(tuple(entry.tokens))
        cache = copy.deepcopy(entry.cache)
        if usable < len(entry.tokens):
            trim_prompt_cache(cache, len(entry.tokens) - usable)
        return cache, usable

    def _nearest(self, prompt: list[int]) -> tuple[_Entry | None, int]:
        if not self._entries or not prompt:
            return None, 0
        found = self._trie.search(_MODEL_KEY, prompt)
        candidates: list[tuple[list[int], int]] = []
        if found.exact is not None:
            candidates.append((found.exact, len(prompt)))
        if found.longer is not None:
            candidates.append((found.longer, found.common_prefix))
        if found.shorter is not None:
            candidates.append((found.shorter, len(found.shorter)))
        best: tuple[_Entry | None, int] = (None, 0)
        for tokens, shared in candidates:
            entry = self._entries[tuple(tokens)]
            # The generator needs one prompt token to feed; an entry used shorter than it is
            # must be trimmed, which a rotating cache that has wrapped around cannot do.
            usable = min(shared, len(prompt) - 1)
            if usable < len(entry.tokens) and not entry.trimmable:
                continue
            if usable > best[1]:
                best = (entry, usable)
        return best

    def store(self, tokens: list[int], cache: LayerCaches | None) -> None:
        """Keep ``cache``, which holds exactly ``tokens`` (it must no longer be in use)."""
        if not self.enabled or not tokens or not cache:
            return
        tokens = list(tokens)
        entry = _Entry(tokens, cache)
        if entry.trimmable and self._covered(tokens):
            return  # a longer entry starts with these tokens and can be trimmed back to them
        key = tuple(tokens)
        if key in self._entries:
            self._forget(key)
        self._trie.add(_MODEL_KEY, tokens, entry)
        self._entries[key] = entry
        self._nbytes += entry.nbytes
        if entry.trimmable:  # entries this one starts with only take space now
            for length, _ in self._trie.pop_prefixes(_MODEL_KEY, tokens):
                self._nbytes -= self._entries.pop(key[:length]).nbytes
        while self._entries and (len(self._entries) > self._max_entries or self._nbytes > self._max_bytes):
            self._evict(next(iter(self._entries)))

    def _covered(self, tokens: list[int]) -> bool:
        found = self._trie.search(_MODEL_KEY, tokens)
        if found.longer is None or found.common_prefix < len(tokens):
            return False
        longer = self._entries[tuple(found.longer)]
        if longer.trimmable:
            self._entries.move_to_end(tuple(longer.tokens))
        return longer.trimmable

    def _forget(self, key: tuple[int, ...]) -> _Entry:
        entry = self._entries.pop(key)
        self._trie.pop(_MODEL_KEY, list(key))
        self._nbytes -= entry.nbytes
        return entry

    def _evict(self, key: tuple[int, ...]) -> None:
        entry = self._forget(key)
        if self._spill is not None:
            self._spill(entry.tokens, entry.cache)

    def clear(self, spill: bool = False) -> None:
        """Drop every entry, most recently used first; to ``spill`` too when asked."""
        for key in reversed(list(self._entries)):
            if spill:
                self._evict(key)
            else:
                self._forget(key)


def snapshot(cache: LayerCaches) -> LayerCaches | None:
    """A copy of a cache still in use, sharing no array with it (None when it cannot be trimmed,
    so no other prompt could start from part of it). Evaluated now: the copy keeps nothing of the
    generator's (larger) buffers alive."""
    if not cache or not can_trim_prompt_cache(cache):
        return None
    copied: LayerCaches = []
    for layer in cache:
        if type(layer) is KVCache and layer.keys is not None:
            tight = KVCache()
            end = layer.offset
            tight.keys = mx.contiguous(layer.keys[..., :end, :])
            tight.values = mx.contiguous(layer.values[..., :end, :])
            tight.offset = end
            copied.append(tight)
        else:
            copied.append(copy.deepcopy(layer))
    mx.eval([c.state for c in copied])
    return copied
